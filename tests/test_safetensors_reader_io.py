"""The safetensors reader's file handling and JSON strictness, in process (issue 21: survivors of the
mechanical run over refimpl/sources/safetensors_reader.py that the subprocess tests of tests/test_hostile_files.py
reach but mutmut's per-test coverage cannot see): opening without blocking or following a swapped symlink,
folders at the filesystem root or with a trailing space, files that shrink or grow between the size check
and the read, read errors, message cuts at, below and above their limits, and the header's metadata."""

from __future__ import annotations

import json
import os
import signal
import stat
import types

import numpy as np
import pytest

from refimpl import CheckpointError
from refimpl.sources import safetensors_reader as R
from verification.references.fixtures import exactly, write_raw_safetensors


def os_with(**replaced):
    """A stand-in for the reader's ``os`` module: the real one with some functions (or ``path``) replaced."""
    fake = types.SimpleNamespace(**vars(os))
    for name, value in replaced.items():
        setattr(fake, name, value)
    return fake


def fstat_off_by(delta: int):
    """os.fstat reporting a size ``delta`` bytes off the file's real size (as if it changed meanwhile)."""
    def fstat(fd):
        s = os.fstat(fd)
        return os.stat_result((s.st_mode, s.st_ino, s.st_dev, s.st_nlink, s.st_uid, s.st_gid, s.st_size + delta,
                               int(s.st_atime), int(s.st_mtime), int(s.st_ctime)))
    return fstat


# ------------------------------------------------------------------ opening
def test_a_fifo_is_refused_in_process_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def blocked(*_):
        raise TimeoutError("open_regular blocked on a FIFO with no writer")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(10)
    try:
        with pytest.raises(CheckpointError, match=exactly(f"{fifo} is a FIFO, not a regular file")):
            R.open_regular(fifo, tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("path, kind", [("/dev/null", "a device"), ("/", "a directory")])
def test_a_device_or_a_directory_is_refused_by_its_kind(path, kind):
    with pytest.raises(CheckpointError, match=exactly(f"{path} is {kind}, not a regular file")):
        R.open_regular(path)


@pytest.mark.parametrize("kind_bits, kind", [(stat.S_IFBLK, "a device"), (stat.S_IFCHR, "a device"),
                                             (stat.S_IFSOCK, "not a regular file")])
def test_each_kind_of_file_the_descriptor_may_be_is_named(tmp_path, monkeypatch, kind_bits, kind):
    path = tmp_path / "f"
    path.write_bytes(b"x")

    def fstat(fd):  # the descriptor reports the kind asked for (a block device needs a real disk to open)
        s = os.fstat(fd)
        return os.stat_result((kind_bits | 0o600,) + tuple(s)[1:7] + (int(s.st_atime), int(s.st_mtime), int(s.st_ctime)))

    monkeypatch.setattr(R, "os", os_with(fstat=fstat))
    with pytest.raises(CheckpointError, match=exactly(f"{path} is {kind}, not a regular file")):
        R.open_regular(path)


def test_a_symlink_swapped_in_after_resolution_is_not_followed(tmp_path, monkeypatch):
    (tmp_path / "target").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    # realpath answering with the link itself: the state of a link swapped in after the path was resolved
    monkeypatch.setattr(R, "os", os_with(path=types.SimpleNamespace(**{**vars(os.path), "realpath": str})))
    with pytest.raises(CheckpointError, match=exactly(f"cannot open {link}: Too many levels of symbolic links")):
        R.open_regular(link)


def test_the_descriptor_opened_is_not_inherited_by_child_processes(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with R.open_regular(tmp_path / "f", tmp_path) as fh:  # os.open's own guarantee (PEP 446), relied upon
        assert os.get_inheritable(fh.fileno()) is False


def test_a_path_that_cannot_be_resolved_is_named_with_the_reason():
    with pytest.raises(CheckpointError, match=exactly("cannot resolve a\x00b: embedded null byte")):
        R.open_regular("a\x00b")


def test_a_folder_at_the_root_holds_every_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    with R.open_regular(tmp_path / "f", "/") as fh:
        assert fh.read() == b"abc"


def test_a_folder_whose_name_ends_in_a_space_is_not_its_namesake_without_it(tmp_path):
    spaced, plain = tmp_path / "model ", tmp_path / "model"
    spaced.mkdir()
    plain.mkdir()
    (spaced / "f").write_bytes(b"in")
    (plain / "secret").write_bytes(b"out")
    with R.open_regular(spaced / "f", spaced) as fh:
        assert fh.read() == b"in"
    with pytest.raises(CheckpointError, match="resolves outside the model folder"):
        R.open_regular(plain / "secret", spaced)


# ------------------------------------------------------------------ reading
def test_a_header_shorter_than_its_length_when_read_is_a_truncation(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    path.write_bytes((64).to_bytes(8, "little") + b'{"a": 1}  ')
    monkeypatch.setattr(R, "os", os_with(fstat=fstat_off_by(100)))  # as if 100 bytes went missing meanwhile
    with pytest.raises(CheckpointError, match=exactly(f"{path}: file shrank while being read: truncated")):
        R.SafetensorsFile(path)


def test_a_data_section_shorter_when_read_is_a_truncation(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    write_raw_safetensors(path, {"w": ("F32", np.arange(4, dtype=np.float32))})
    monkeypatch.setattr(R, "os", os_with(fstat=fstat_off_by(16)))
    with pytest.raises(CheckpointError, match=exactly(f"{path}: file shrank while being read: truncated")):
        R.SafetensorsFile(path, mmap=False)


def test_bytes_appended_after_the_size_check_are_not_read(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    write_raw_safetensors(path, {"w": ("F32", np.arange(4, dtype=np.float32))})
    with open(path, "ab") as fh:
        fh.write(bytes(8))
    monkeypatch.setattr(R, "os", os_with(fstat=fstat_off_by(-8)))  # the size before the 8 bytes came
    f = R.SafetensorsFile(path, mmap=False)
    assert f.tensor("w", np.dtype(np.float32)).tolist() == [0.0, 1.0, 2.0, 3.0]


class FailingRead:
    """A file object over a real file whose reads raise ``error``."""

    def __init__(self, path, error):
        self.fh, self.error = open(path, "rb"), error

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.fh.close()

    def fileno(self):
        return self.fh.fileno()

    def read(self, n=-1):
        raise self.error


@pytest.mark.parametrize("error, reason", [(OSError(5, "Input/output error"), "Input/output error"),
                                           (OSError("no errno"), "no errno")])
def test_a_read_error_is_named_by_its_reason(tmp_path, monkeypatch, error, reason):
    path = tmp_path / "t.safetensors"
    write_raw_safetensors(path, {"w": ("F32", np.zeros(2, np.float32))})
    monkeypatch.setattr(R, "open_regular", lambda p, folder=None: FailingRead(p, error))
    with pytest.raises(CheckpointError, match=exactly(f"cannot read {path}: {reason}")):
        R.SafetensorsFile(path)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_the_header_metadata_is_kept_or_empty(tmp_path, metadata):
    data = np.zeros(2, np.float32).tobytes()
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    f = R.SafetensorsFile(path)
    assert f.metadata == (metadata or {}) and isinstance(f.metadata, dict) and f.keys() == ["w"]


# ------------------------------------------------------------------ messages and JSON
@pytest.mark.parametrize("length, cut", [(119, False), (120, False), (121, True)])
def test_short_cuts_a_repr_longer_than_120_characters(length, cut):
    value = "a" * (length - 2)  # its repr adds two quotes
    text = "'" + value + "'"
    assert R.short(value) == (text[:120] + "..." if cut else text)


def test_a_duplicate_key_is_shown_cut_to_80_characters():
    key = "k" * 100
    with pytest.raises(CheckpointError, match=exactly(f"the file holds the key '{'k' * 79}... twice")):
        R.strict_json(f'{{"{key}": 1, "{key}": 2}}', "the file")
    with pytest.raises(CheckpointError, match=exactly(f"the file holds the key '{'k' * 78}' twice")):
        R.strict_json(f'{{"{"k" * 78}": 1, "{"k" * 78}": 2}}', "the file")


def test_nesting_too_deep_is_named():
    with pytest.raises(CheckpointError, match=exactly("the file is nested too deeply to be a valid file")):
        R.strict_json("[" * 200_000 + "]" * 200_000, "the file")


def test_bytes_are_read_as_utf8_only():
    assert R.strict_json('{"a": "\u00e9"}'.encode(), "the file") == {"a": "\u00e9"}
    # json.loads would detect UTF-16 by itself; a safetensors header is UTF-8
    with pytest.raises(CheckpointError, match=exactly("the file is not valid UTF-8 (byte 0)")):
        R.strict_json('{"a": 1}'.encode("utf-16"), "the file")


def test_a_value_error_from_the_parser_is_shown_cut_to_100_characters():
    try:
        int("1" * 5000)
    except ValueError as exc:
        reason = str(exc)
    assert len(repr(reason)) > 100
    with pytest.raises(CheckpointError, match=exactly(f"the file is not valid JSON: {repr(reason)[:100]}...")):
        R.strict_json("1" * 5000, "the file")
    with pytest.raises(CheckpointError, match=exactly("the file is not valid JSON: 'non-standard JSON constant NaN'")):
        R.strict_json("NaN", "the file")
