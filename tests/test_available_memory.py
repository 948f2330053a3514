"""``available_memory()`` read from hand-made /proc and cgroup files: the least of MemAvailable, the cgroup's
headroom and the address-space headroom, each source alone, and None when none can be read."""

import io
import resource

import pytest

from refimpl.oracle import memory as model_module

INFINITY = resource.RLIM_INFINITY


class FakeFiles:
    """``open`` and ``Path`` for refimpl.oracle.memory that read from a dict of path -> text."""

    def __init__(self, monkeypatch, files, rlimit=INFINITY):
        self.files = files
        owner = self

        class FakePath:
            def __init__(self, path):
                self.path = str(path)

            def __truediv__(self, name):
                return FakePath(f"{self.path}/{name}")

            def read_text(self):
                return owner.read(self.path)

        monkeypatch.setattr(model_module, "open", lambda path, *a, **k: io.StringIO(self.read(path)), raising=False)
        monkeypatch.setattr(model_module, "Path", FakePath)
        monkeypatch.setattr(resource, "getrlimit", lambda which: (rlimit, INFINITY))

    def read(self, path):
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]


MEMINFO = "MemTotal:       9000 kB\nMemFree:        1000 kB\nMemAvailable:   2000 kB\nMemAvailable:      5 kB\n"


def test_meminfo_alone(monkeypatch):
    FakeFiles(monkeypatch, {"/proc/meminfo": MEMINFO})
    assert model_module.available_memory() == 2000 * 1024  # the first MemAvailable line, in kB


def test_cgroup_headroom_when_smaller(monkeypatch):
    FakeFiles(monkeypatch, {"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "3000000\n",
                            "/sys/fs/cgroup/memory.current": "1000000\n"})
    assert model_module.available_memory() == 2_000_000
    FakeFiles(monkeypatch, {"/proc/meminfo": MEMINFO, "/sys/fs/cgroup/memory.max": "max\n",
                            "/sys/fs/cgroup/memory.current": "1000000\n"})
    assert model_module.available_memory() == 2000 * 1024  # no cgroup limit


def test_address_space_headroom_when_smaller(monkeypatch):
    FakeFiles(monkeypatch, {"/proc/meminfo": MEMINFO, "/proc/self/status": "Name: python\nVmSize:  4000 kB\n"},
              rlimit=5_000_000)
    assert model_module.available_memory() == 5_000_000 - 4000 * 1024


def test_headroom_is_never_negative_and_none_without_sources(monkeypatch):
    FakeFiles(monkeypatch, {"/sys/fs/cgroup/memory.max": "100", "/sys/fs/cgroup/memory.current": "300"})
    assert model_module.available_memory() == 0
    FakeFiles(monkeypatch, {})
    assert model_module.available_memory() is None
    FakeFiles(monkeypatch, {"/proc/meminfo": "MemAvailable: lots kB\n"})  # unreadable: skipped, not a crash
    assert model_module.available_memory() is None


@pytest.mark.skipif(not __import__("os").path.exists("/proc/meminfo"), reason="Linux only")
def test_the_real_machine_has_some_memory():
    assert 0 < model_module.available_memory() < 1 << 50
