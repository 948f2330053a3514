"""The hub path through a hand-made local Hugging Face cache with HF_HUB_OFFLINE=1 (no network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from verification.fixtures import gpt_neo_config, random_tensors, write_checkpoint

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
