"""The hub path through a hand-made local Hugging Face cache with HF_HUB_OFFLINE=1 (no network)."""

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAIN, V1 = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """models--acme--tiny-neo with refs main and v1 pointing at two snapshots with different weights."""
    root = tmp_path_factory.mktemp("hf_cache")
    repo = root / "models--acme--tiny-neo"
    config = gpt_neo_config(vocab=31, d_model=8, n_layers=2, n_heads=2, window=3, n_ctx=16)
    for ref, commit, seed in (("main", MAIN, 0), ("v1", V1, 1)):
        write_checkpoint(repo / "snapshots" / commit, config, random_tensors(config, seed=seed))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    pickled = root / "models--acme--pickled" / "snapshots" / MAIN
    pickled.mkdir(parents=True)
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    (root / "models--acme--pickled" / "refs").mkdir()
    (root / "models--acme--pickled" / "refs" / "main").write_text(MAIN)
    return root


def run_offline(cache: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HOME", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_hub_id_loads_from_cache_offline(cache, tmp_path):
    out = tmp_path / "logits.npy"
    result = run_offline(cache, f"""
import numpy as np, refimpl
m = refimpl.load("acme/tiny-neo", dtype="float64")
m1 = refimpl.load("acme/tiny-neo", dtype="float64", revision="v1")
assert "{MAIN}" in str(m.path) and "{V1}" in str(m1.path), (m.path, m1.path)
np.save("{out}", np.stack([m.forward([1, 2, 3]), m1.forward([1, 2, 3])]))
""")
    assert result.returncode == 0, result.stderr
    expected = [refimpl_local(cache, commit) for commit in (MAIN, V1)]
    np.testing.assert_array_equal(np.load(out), np.stack(expected))


def refimpl_local(cache, commit):
    import refimpl

    return refimpl.load(cache / "models--acme--tiny-neo" / "snapshots" / commit, dtype="float64").forward([1, 2, 3])


def test_missing_from_cache_offline_is_a_clear_error(cache):
    result = run_offline(cache, """
import refimpl
try:
    refimpl.load("acme/not-cached")
except refimpl.CheckpointError as exc:
    print("ERR", exc)
""")
    assert result.returncode == 0, result.stderr
    assert "ERR 'acme/not-cached' (revision main) is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in result.stdout


def test_unknown_revision_offline(cache):
    result = run_offline(cache, """
import refimpl
try:
    refimpl.load("acme/tiny-neo", revision="v9")
except refimpl.CheckpointError as exc:
    print("ERR", exc)
""")
    assert "ERR 'acme/tiny-neo' (revision v9) is not in the Hugging Face cache" in result.stdout, result.stderr


def test_pickle_only_repo_is_refused(cache):
    result = run_offline(cache, """
import refimpl
try:
    refimpl.load("acme/pickled")
except refimpl.CheckpointError as exc:
    print("ERR", exc)
""")
    assert "never unpickles" in result.stdout, result.stderr


def test_cli_runs_on_a_hub_id(cache):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "refimpl", "--model", "acme/tiny-neo", "--top", "2", "#"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "top 2 next tokens" in result.stdout and "logit lens" in result.stdout


@pytest.fixture()
def offline_in_process(cache, monkeypatch):
    """The same offline cache for code running in THIS process (the subprocess tests above run the installed
    source; these run whatever refimpl this process imported, e.g. a mutant)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_in_process_revisions_and_files(offline_in_process):
    import refimpl

    m, m1 = refimpl.load("acme/tiny-neo", dtype="float64"), refimpl.load("acme/tiny-neo", dtype="float64", revision="v1")
    assert MAIN in str(m.path) and V1 in str(m1.path)
    np.testing.assert_array_equal(m.forward([1, 2, 3]), refimpl_local(offline_in_process, MAIN))
    np.testing.assert_array_equal(m1.forward([1, 2, 3]), refimpl_local(offline_in_process, V1))


@pytest.mark.parametrize("source, revision, message", [
    ("acme/not-cached", None, "'acme/not-cached' (revision main) is not in the Hugging Face cache and "
                              "HF_HUB_OFFLINE is set; download it once with network access, or pass a local directory"),
    ("acme/tiny-neo", "v9", "'acme/tiny-neo' (revision v9) is not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
])
def test_hub_in_process_errors(offline_in_process, source, revision, message):
    import refimpl

    with pytest.raises(refimpl.CheckpointError) as info:
        refimpl.load(source, revision=revision)
    assert str(info.value).startswith(message)


def test_hub_fetches_only_config_safetensors_and_tokenizer_files(monkeypatch, tmp_path):
    """What is asked of the hub (a spy in place of snapshot_download): never a pickle, always the safetensors."""
    import fnmatch

    import huggingface_hub

    import refimpl

    calls = []

    def spy(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns, kwargs))
        from huggingface_hub.errors import RepositoryNotFoundError

        exc = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its __init__ wants an HTTP response
        Exception.__init__(exc, "no such repo")
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    with pytest.raises(refimpl.CheckpointError, match="no hub repository 'acme/x' \\(or it is private\\)"):
        refimpl.load("acme/x", revision="r1")
    (repo_id, revision, patterns, kwargs), = calls
    assert (repo_id, revision, kwargs) == ("acme/x", "r1", {})
    wanted = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
              "vocab.json", "merges.txt", "tokenizer.json", "refimpl_tokenizer.json"]
    refused = ["pytorch_model.bin", "model.pt", "flax_model.msgpack", "tf_model.h5", "model.ckpt"]
    assert all(any(fnmatch.fnmatch(f, p) for p in patterns) for f in wanted), patterns
    assert not any(fnmatch.fnmatch(f, p) for f in refused for p in patterns), patterns


def _hub_raising(monkeypatch, exc):
    import huggingface_hub

    def failing(repo_id, revision=None, allow_patterns=None, **kwargs):
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)


def _http_error(cls, message):
    exc = cls.__new__(cls)  # huggingface_hub's HTTP errors want a response in __init__
    Exception.__init__(exc, message)
    return exc


@pytest.mark.parametrize("value, why", [("1", "HF_HUB_OFFLINE is set"), ("true", "HF_HUB_OFFLINE is set"),
                                        ("YES", "HF_HUB_OFFLINE is set"), ("On", "HF_HUB_OFFLINE is set"),
                                        ("0", "the hub could not be reached"), ("", "the hub could not be reached"),
                                        (None, "the hub could not be reached")])
def test_not_in_cache_says_why_from_the_offline_variable(monkeypatch, value, why):
    """huggingface_hub reads HF_HUB_OFFLINE as 1/true/yes/on in any case; the message says which case applies."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    import refimpl

    _hub_raising(monkeypatch, LocalEntryNotFoundError("not cached"))
    if value is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with pytest.raises(refimpl.CheckpointError) as info:
        refimpl.load("acme/x", revision="r2" if value else None)
    revision = "r2" if value else "main"
    assert str(info.value) == (f"'acme/x' (revision {revision}) is not in the Hugging Face cache and {why}; "
                               "download it once with network access, or pass a local directory")


def test_hub_revision_and_network_errors_are_named(monkeypatch):
    from huggingface_hub.errors import RevisionNotFoundError

    import refimpl

    _hub_raising(monkeypatch, _http_error(RevisionNotFoundError, "404"))
    with pytest.raises(refimpl.CheckpointError) as info:
        refimpl.load("acme/x", revision="v7")
    assert str(info.value) == "'acme/x' has no revision 'v7'"
    _hub_raising(monkeypatch, ConnectionError("connection reset"))
    with pytest.raises(refimpl.CheckpointError) as info:
        refimpl.load("acme/x")
    assert str(info.value) == "could not fetch 'acme/x' from the hub: connection reset"


PICKLE_REFUSAL = ("{} holds only pickled weights. refimpl never unpickles a checkpoint, because loading a pickle can "
                  "execute arbitrary code. Convert it once, in an environment you trust, to safetensors, e.g. "
                  "python -c \"from transformers import GPTNeoForCausalLM as M; "
                  "M.from_pretrained('IN_DIR').save_pretrained('OUT_DIR', safe_serialization=True)\" and load OUT_DIR.")


def test_pickled_folder_and_file_are_refused_with_the_conversion_command(tmp_path):
    import refimpl

    folder = tmp_path / "pickled"
    folder.mkdir()
    from refimpl.sources.checkpoint import BUNDLED, DEFAULT_MODEL

    shutil.copy(BUNDLED[DEFAULT_MODEL] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    for source in (folder, folder / "pytorch_model.bin"):
        with pytest.raises(refimpl.CheckpointError) as info:
            refimpl.load(source)
        assert str(info.value) == PICKLE_REFUSAL.format(source)
