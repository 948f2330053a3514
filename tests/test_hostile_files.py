"""Hostile files, configs, ids and options: each gets the project's named error; nothing hangs or blows up.

Cases that could hang (FIFOs) or allocate without bound run in a child interpreter under RLIMIT_AS
(2 GB) and a timeout (``isolated``), so a regression fails instead of stalling CI. The fuzzers mutate
valid files (hypothesis profiles of verification/policy/strategies.py: 40 examples each by default, 1000
with REFIMPL_HYPOTHESIS_PROFILE=long): each mutant loads or raises a RefimplError, nothing else.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refimpl
import refimpl.errors
from refimpl import CheckpointError, ConfigError, InputError, RefimplError
from refimpl.errors import ConformanceError
from verification import conformance
from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint, write_raw_safetensors
from verification.policy.strategies import mutated_bytes, mutated_json

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 2 * 1024**3
SECRET = "TOP-SECRET-CONTENT-42"


def isolated(code: str, timeout: float = 60) -> None:
    """Run ``code`` in a fresh interpreter under a 2 GB address-space limit and a timeout, and re-raise the
    refimpl error it raised here (same class and message). Anything else fails the test."""
    body = textwrap.indent(textwrap.dedent(code), "    ")
    wrapper = (f"import json\ntry:\n{body}\nexcept BaseException as exc:\n"
               "    print(json.dumps({'type': type(exc).__name__, 'message': str(exc)}))\n"
               "else:\n    print(json.dumps({'type': None}))\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout,
                            preexec_fn=limit, env=env)
    assert result.returncode == 0 and result.stdout.strip(), f"child crashed: {result.stderr[-3000:]}"
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    if outcome["type"] is None:
        return
    cls = getattr(refimpl.errors, outcome["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, RefimplError)):
        raise AssertionError(f"child raised a non-project exception: {outcome}")
    raise cls(outcome["message"])


CONFIG = gpt_neo_config(vocab=23, d_model=8, n_layers=2, n_heads=2, window=3, n_ctx=16)


@pytest.fixture(scope="module")
def tensors():
    return random_tensors(CONFIG, seed=3)


@pytest.fixture
def folder(tmp_path, tensors):
    """A valid single-file checkpoint in its own directory."""
    return write_checkpoint(tmp_path / "model", CONFIG, tensors)


@pytest.fixture
def sharded(tmp_path, tensors):
    return write_checkpoint(tmp_path / "sharded", CONFIG, tensors, shards=2)


def edit_index(folder: Path, edit) -> None:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    result = edit(index)
    path.write_text(json.dumps(index if result is None else result))


def safetensors_bytes(header, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict or raw bytes) and data, with an optional forged length."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def with_weights(tmp_path: Path, raw: bytes, config: dict = CONFIG) -> Path:
    folder = tmp_path / "hostile"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(raw)
    return folder


def with_config(tmp_path: Path, tensors, **change) -> Path:
    config = {**CONFIG, **change}
    return write_checkpoint(tmp_path / "cfg", config, tensors)


# ----------------------------------------------------------------------------------------------------------
# 1. sharded index, file kinds and paths


@pytest.mark.parametrize("name, reason", [
    ("/etc/passwd", "is an absolute path"),
    ("/dev/stdin", "is an absolute path"),
    ("../model-00001-of-00002.safetensors", "contains a path separator"),
    ("sub/model.safetensors", "contains a path separator"),
    ("sub\\model.safetensors", "contains a path separator"),
    ("..", "is not a file name"),
    ("model..safetensors", r"contains '\.\.'"),
    ("", "is not a file name"),
])
def test_shard_names_outside_the_folder_are_refused(sharded, name, reason):
    edit_index(sharded, lambda index: index["weight_map"].update({"transformer.wte.weight": name}))
    with pytest.raises(CheckpointError, match=rf"shard .* {reason}"):
        refimpl.load(sharded)


def test_shard_symlink_resolving_outside_the_folder(sharded, tmp_path):
    shard = sharded / "model-00002-of-00002.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors resolves outside the model folder"):
        refimpl.load(sharded)


def test_config_symlink_outside_is_refused_without_echoing_it(folder, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(secret)
    with pytest.raises(ConfigError, match="config.json resolves outside the model folder") as info:
        refimpl.load(folder)
    assert SECRET not in str(info.value)


def test_index_errors_never_echo_outside_content(sharded, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(SECRET)
    index = sharded / "model.safetensors.index.json"
    index.unlink()
    index.symlink_to(secret)
    with pytest.raises(CheckpointError, match="index.json resolves outside") as info:
        refimpl.load(sharded)
    assert SECRET not in str(info.value)


def test_config_symlink_to_dev_stdin_is_refused(folder):
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to("/dev/stdin")
    with pytest.raises(ConfigError, match="config.json (resolves outside the model folder|does not exist)"):
        refimpl.load(folder)


def test_weights_symlink_outside_is_refused(folder, tmp_path):
    weights = folder / "model.safetensors"
    weights.rename(tmp_path / "moved.safetensors")
    weights.symlink_to(tmp_path / "moved.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors resolves outside the model folder"):
        refimpl.load(folder)


def test_symlink_inside_the_folder_is_fine(folder, tensors):
    (folder / "model.safetensors").rename(folder / "blob")
    (folder / "model.safetensors").symlink_to(folder / "blob")
    model = refimpl.load(folder, dtype="float64")
    np.testing.assert_array_equal(model.weights["embed.W_E"], tensors["transformer.wte.weight"].astype(np.float32))


def test_hugging_face_cache_links_into_blobs(tmp_path, tensors):
    """A hub snapshot's files are links into ``models--X/blobs``: allowed; a link elsewhere is not."""
    source = write_checkpoint(tmp_path / "src", CONFIG, tensors)
    repo = tmp_path / "models--acme--neo"
    snapshot = repo / "snapshots" / ("c" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(source.iterdir())):
        f.rename(repo / "blobs" / f"sha{i}")
        (snapshot / f.name).symlink_to(Path("../..") / "blobs" / f"sha{i}")
    assert refimpl.load(snapshot).config.n_layers == 2
    (tmp_path / "stray.json").write_text(json.dumps(CONFIG))
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(tmp_path / "stray.json")
    with pytest.raises(ConfigError, match="config.json resolves outside the model folder"):
        refimpl.load(snapshot)


@pytest.mark.parametrize("target, error, pattern", [
    ("model.safetensors", "CheckpointError", "model.safetensors is a FIFO, not a regular file"),
    ("config.json", "ConfigError", "config.json is a FIFO, not a regular file"),
    ("model-00001-of-00002.safetensors", "CheckpointError", "model-00001-of-00002.safetensors is a FIFO"),
    ("model.safetensors.index.json", "CheckpointError", "index.json is a FIFO"),
    ("vocab.json", "CheckpointError", "vocab.json is a FIFO"),
])
def test_fifos_are_refused_without_hanging(sharded, folder, target, error, pattern):
    where = sharded if target.startswith("model-") or target.endswith("index.json") else folder
    if target == "vocab.json":
        (where / "merges.txt").write_text("#version: 0.2\n")
    else:
        (where / target).unlink()
    os.mkfifo(where / target)
    with pytest.raises(getattr(refimpl.errors, error), match=pattern):
        isolated(f"import refimpl; refimpl.load({str(where)!r})", timeout=30)


def test_directories_in_place_of_files(folder, tmp_path):
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    with pytest.raises(ConfigError, match="config.json is a directory"):
        refimpl.load(folder)
    other = write_checkpoint(tmp_path / "other", CONFIG, {})
    (other / "model.safetensors").unlink()
    (other / "model.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors is a directory"):
        refimpl.load(other)


def test_source_that_is_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match="not a directory"):
        refimpl.load(tmp_path / "pipe")


@pytest.mark.parametrize("edit, pattern", [
    (lambda index: [1, 2], "not a valid safetensors index: not a JSON object"),
    (lambda index: {"metadata": {}}, "has no 'weight_map'"),
    (lambda index: {"weight_map": list(index["weight_map"])}, "'weight_map' must be an object.*got list"),
    (lambda index: index["weight_map"].update({"transformer.wte.weight": 3}), "to a int, not a shard file name"),
    (lambda index: index["weight_map"].update({"transformer.wte.weight": None}), "NoneType, not a shard"),
])
def test_malformed_index(sharded, edit, pattern):
    edit_index(sharded, edit)
    with pytest.raises(CheckpointError, match=pattern):
        refimpl.load(sharded)


def test_index_with_duplicate_key_or_bad_json(sharded):
    index = sharded / "model.safetensors.index.json"
    index.write_text('{"weight_map": {}, "weight_map": {}}')
    with pytest.raises(CheckpointError, match="holds the key 'weight_map' twice"):
        refimpl.load(sharded)
    index.write_text('{"weight_map": ')
    with pytest.raises(CheckpointError, match="index.json .*is not valid JSON"):
        refimpl.load(sharded)


# ----------------------------------------------------------------------------------------------------------
# 3. load() arguments


@pytest.mark.parametrize("source, error, pattern", [
    ("", InputError, "empty string"),
    ("   ", InputError, "empty string"),
    (123, InputError, "source must be .* got int"),
    (b"organism", InputError, "source must be .* got bytes"),
    (["organism"], InputError, "got list"),
    ("org\0anism", InputError, "NUL"),
])
def test_bad_sources(source, error, pattern):
    with pytest.raises(error, match=pattern):
        refimpl.load(source)


@pytest.mark.parametrize("dtype", ["float8", "bfloat16", "nonsense", None, [1, 2], "float16", float, "f4",
                                   np.float16, np.dtype("int32")])
def test_bad_dtypes(folder, dtype):
    with pytest.raises(InputError, match="dtype must be 'float32' or 'float64'"):
        refimpl.load(folder, dtype=dtype)


def test_good_dtypes_and_path_sources(folder):
    for dtype in ("float32", "float64", np.float32, np.float64, np.dtype("float64")):
        assert refimpl.load(folder, dtype=dtype).dtype == np.dtype(dtype)
    assert refimpl.load(str(folder)).path == folder


@pytest.mark.parametrize("revision", [5, b"main", ["main"]])
def test_bad_revision(folder, revision):
    with pytest.raises(InputError, match="revision must be a string or None"):
        refimpl.load(folder, revision=revision)


def test_bad_mmap_option(folder):
    with pytest.raises(InputError, match="mmap must be True or False"):
        refimpl.load(folder, mmap="no")


# ----------------------------------------------------------------------------------------------------------
# 2 + 3. config.json: sizes bounded before allocation, types, epsilon


@pytest.mark.parametrize("change, pattern", [
    ({"num_layers": 20_000_000}, "'num_layers' is 20000000, above the sane limit"),
    ({"attention_types": [[["global"], 10**18]]}, "attention_types expand to 1000000000000000000 layers but "
                                                  "num_layers is 2"),
    ({"attention_types": [[["global", "local"], 2**62], [["local"], 2**62]]}, "expand to .* layers but num_layers"),
    ({"vocab_size": 10**30}, "'vocab_size' is .*above the sane limit"),
    ({"hidden_size": 2**40, "num_heads": 1}, "'hidden_size' is .*above the sane limit"),
    ({"max_position_embeddings": 2**40}, "'max_position_embeddings' .*above the sane limit"),
    ({"intermediate_size": 2**40}, "'intermediate_size' .*above the sane limit"),
    ({"window_size": 2**40}, "'window_size' .*above the sane limit"),
])
def test_huge_sizes_are_refused_before_allocation(tmp_path, tensors, change, pattern):
    folder = with_config(tmp_path, tensors, **change)
    with pytest.raises(ConfigError, match=pattern):
        isolated(f"import refimpl; refimpl.load({str(folder)!r})")


@pytest.mark.parametrize("change, pattern", [
    ({"num_layers": 4096, "attention_types": [[["global"], 4096]]},
     r"config num_layers is 4096 but the checkpoint holds 2 blocks \(layers 0..1\)"),
    ({"vocab_size": 1 << 24}, r"wte.weight' has shape \[23, 8\], expected \[16777216, 8\]"),
    ({"max_position_embeddings": 1 << 24}, r"wpe.weight' has shape \[16, 8\], expected \[16777216, 8\]"),
])
def test_large_configs_are_checked_against_the_tensors_present(tmp_path, tensors, change, pattern):
    folder = with_config(tmp_path, tensors, **change)
    with pytest.raises(CheckpointError, match=pattern):
        isolated(f"import refimpl; refimpl.load({str(folder)!r})")


@pytest.mark.parametrize("value", [0, 0.0, -1e-5, float("nan"), float("inf"), "1e-5", True, [1e-5]])
def test_layer_norm_epsilon_must_be_finite_and_positive(tmp_path, tensors, value):
    folder = with_config(tmp_path, tensors, layer_norm_epsilon=value)
    with pytest.raises(ConfigError, match="'layer_norm_epsilon' must be a finite number > 0"):
        refimpl.load(folder)


def test_layer_norm_epsilon_overflowing_json(tmp_path, tensors):
    folder = with_config(tmp_path, tensors)
    (folder / "config.json").write_text(json.dumps(CONFIG).replace('"layer_norm_epsilon": 1e-05',
                                                                   '"layer_norm_epsilon": 1e999'))
    with pytest.raises(ConfigError, match="'layer_norm_epsilon' must be a finite number > 0, got inf"):
        refimpl.load(folder)


@pytest.mark.parametrize("key, value", [
    ("num_heads", True), ("hidden_size", 8.0), ("num_layers", "2"), ("window_size", 0), ("window_size", -3),
    ("window_size", 1.5), ("vocab_size", False), ("intermediate_size", 32.0), ("max_position_embeddings", [16]),
])
def test_int_fields_reject_bools_floats_and_strings(tmp_path, tensors, key, value):
    folder = with_config(tmp_path, tensors, **{key: value})
    with pytest.raises(ConfigError, match=f"'{key}' must be a positive integer"):
        refimpl.load(folder)


@pytest.mark.parametrize("attention_types, pattern", [
    ([[["global"], True], [["local"], 1]], "repeat count True is not a non-negative integer"),
    ([[["global", "local"], 1.0]], "repeat count 1.0"),
    ([[["global", "local"], -1]], "repeat count -1"),
    ([["global", 2]], "the pattern 'global' is not a list of layer kinds"),
    ([[["global", "local"]]], "is not a \\[pattern, count\\] pair"),
    ({"global": 2}, "attention_types must look like"),
])
def test_malformed_attention_types(attention_types, pattern):
    raw = {**CONFIG, "attention_types": attention_types}
    with pytest.raises(ConfigError, match=pattern):
        refimpl.config_from_dict(raw)


@pytest.mark.parametrize("content, pattern", [
    (b"[]", "config must be a JSON object, got list"),
    (b'"gpt_neo"', "config must be a JSON object, got str"),
    (b'{"model_type": "gpt_neo", "model_type": "gpt_neo"}', "holds the key 'model_type' twice"),
    (b'{"model_type": "\xff\xfe"}', "not valid UTF-8"),
    (b"", "is not valid JSON"),
])
def test_config_json_that_is_not_a_config(folder, content, pattern):
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=pattern):
        refimpl.load(folder)


def test_deeply_nested_config_and_header(folder, tmp_path):
    (folder / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        isolated(f"import refimpl; refimpl.load({str(folder)!r})")
    deep = with_weights(tmp_path, safetensors_bytes(b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"))
    with pytest.raises(CheckpointError, match="nested too deeply"):
        isolated(f"import refimpl; refimpl.load({str(deep)!r})")


def test_oversized_config(folder):
    (folder / "config.json").write_bytes(b" " * (17 * 1024 * 1024))
    with pytest.raises(ConfigError, match="more than the 16777216 this file type may hold"):
        refimpl.load(folder)


# ----------------------------------------------------------------------------------------------------------
# 4. the safetensors reader: what the reference (Rust) reader enforces, and finite weights

F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header, data, pattern", [
    ({"a": F32_2, "b": {**F32_2, "data_offsets": [12, 20]}}, bytes(20), "tensor 'b' starts at byte 12.*leaves a gap"),
    ({"a": F32_2, "b": {**F32_2, "data_offsets": [4, 12]}}, bytes(12), "tensor 'b' starts at byte 4.*overlaps"),
    ({"a": F32_2, "b": {**F32_2, "data_offsets": [0, 8]}}, bytes(8), "'b' starts at byte 0.*overlaps"),
    ({"a": F32_2}, bytes(12), "cover 8 bytes but the data section holds 12: trailing bytes"),
    ({"a": {**F32_2, "data_offsets": [4, 12]}}, bytes(12), "tensor 'a' starts at byte 4, at byte 0: it leaves a gap"),
    ({"a": {**F32_2, "dtype": ["F32"]}}, bytes(8), r"unsupported dtype \['F32'\]"),
    ({"a": {**F32_2, "dtype": "F8_E4M3"}}, bytes(8), "unsupported dtype 'F8_E4M3'"),
    ({"a": {**F32_2, "shape": "2"}}, bytes(8), "invalid shape '2'"),
    ({"a": {**F32_2, "shape": [True, 2]}}, bytes(8), r"invalid shape \[True, 2\]"),
    ({"a": {**F32_2, "shape": [2**40, 2**40]}}, bytes(8), "overflows"),
    ({"a": {**F32_2, "shape": [0, 2**62], "data_offsets": [0, 0]}}, b"", "implausibly large dimension"),
    ({"a": {**F32_2, "data_offsets": ["0", 8]}}, bytes(8), "invalid data_offsets"),
    ({"a": {**F32_2, "data_offsets": [8, 0]}}, bytes(8), r"invalid data_offsets \[8, 0\]"),
    ({"a": [1, 2]}, bytes(8), "malformed header entry"),
    ({"a": F32_2, "__metadata__": {"format": 1}}, bytes(8), "__metadata__ must be a JSON object of strings"),
    ([F32_2], bytes(8), "does not start with"),
])
def test_safetensors_layout_rules(tmp_path, header, data, pattern):
    with pytest.raises(CheckpointError, match=pattern):
        refimpl.load(with_weights(tmp_path, safetensors_bytes(header, data)))


@pytest.mark.parametrize("raw, pattern", [
    (safetensors_bytes(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],'
                       b'"data_offsets":[0,8]}}', bytes(8)), "holds the key 'a' twice"),
    (safetensors_bytes({"a": F32_2}, bytes(8), length=2**63), "exceeds the 104857600-byte limit"),
    (safetensors_bytes({"a": F32_2}, bytes(8), length=0), "header length is 0"),
    (safetensors_bytes({"a": F32_2}, bytes(8), length=10_000), "header length 10000 exceeds the file size"),
    (safetensors_bytes(b' {"a":1}'), "does not start with"),
    (safetensors_bytes(b'{"a":NaN}'), "non-standard JSON constant NaN"),
])
def test_safetensors_header_rules(tmp_path, raw, pattern):
    with pytest.raises(CheckpointError, match=pattern):
        refimpl.load(with_weights(tmp_path, raw))


@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_named(tmp_path, tensors, stored, bad):
    t = dict(tensors)
    w = t["transformer.h.1.mlp.c_proj.weight"].copy()
    w[3, 5] = bad
    t["transformer.h.1.mlp.c_proj.weight"] = w
    folder = write_checkpoint(tmp_path / "nan", CONFIG, t, dtype=stored)
    with pytest.raises(CheckpointError, match=r"'transformer.h.1.mlp.c_proj.weight' holds a non-finite value .*"
                                              r"flat index 101"):
        refimpl.load(folder, dtype="float64")


def test_finite_check_is_chunked_and_cheap(tmp_path):
    """64 MB of float32 weights: the scan creates no full-size temporary and takes a fraction of a second."""
    import time
    import tracemalloc

    from refimpl.sources.safetensors_reader import SafetensorsFile

    big = np.ones(16 * 1024 * 1024, np.float32)
    write_raw_safetensors(tmp_path / "big.safetensors", {"w": ("F32", big)})
    f = SafetensorsFile(tmp_path / "big.safetensors")
    tracemalloc.start()
    start = time.perf_counter()
    f.check_finite("w")
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak  # a full-size boolean temporary would be 16 MB
    assert elapsed < 2.0, elapsed


# ----------------------------------------------------------------------------------------------------------
# 8. mmap=False: weights in memory, immune to the file being truncated later


def test_mmap_false_reads_weights_into_memory(folder, tensors):
    copied = refimpl.load(folder, mmap=False)
    mapped = refimpl.load(folder)
    for name, value in copied.weights.items():
        np.testing.assert_array_equal(value, mapped.weights[name])
        base = value
        while isinstance(base.base, np.ndarray) and not isinstance(base, np.memmap):
            base = base.base
        assert not isinstance(base, np.memmap), name
        assert not value.flags.writeable
    (folder / "model.safetensors").write_bytes(b"")  # another process truncates the file
    logits = copied.forward([1, 2, 3])
    np.testing.assert_array_equal(logits, refimpl.load(write_checkpoint(folder.parent / "again", CONFIG, tensors),
                                                       mmap=False).forward([1, 2, 3]))


# ----------------------------------------------------------------------------------------------------------
# 5. conformance files


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    config = gpt_neo_config(vocab=61, d_model=16, n_layers=2, n_heads=2, window=4, n_ctx=32)
    folder = write_checkpoint(tmp_path_factory.mktemp("conf"), config, random_tensors(config, seed=1))
    return refimpl.load(folder, dtype="float64")


OBSERVABLES = {"a": {3: 1.0, 4: -1.0}, "b": {5: 1.0}}


@pytest.fixture(scope="module")
def reference_npz(tiny_model, tmp_path_factory):
    return conformance.write_reference(tmp_path_factory.mktemp("ref") / "ref.npz", tiny_model, OBSERVABLES,
                                       dtype="float64")


def reference_arrays(path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def meta(**change) -> np.ndarray:
    base = {"observables": {"a": {"3": 1.0, "4": -1.0}}, "layernorm": "ignore", "dtype": "float64"}
    return np.array(json.dumps({**base, **change}))


def test_zip_bomb_member_is_refused_before_loading(tmp_path, tiny_model):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__meta__.npy", _npy(meta()))
        with zf.open("feature/a/0.0.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((400_000_000,)))
            member.write(bytes(1 << 24))  # the header alone made np.load allocate 3.2 GB
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(ConformanceError, match=r"feature/a/0.0' has shape \(400000000,\).*allows at most 16"):
        isolated(f"""
import refimpl
from verification import conformance
conformance.check_file({str(path)!r}, refimpl.load({str(tiny_model.path)!r}, dtype="float64"))
""")


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_header(shape: tuple) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, pattern", [
    ({"feature/a/0.0": np.array([object()], dtype=object)}, "holds Python objects .*never unpickled"),
    ({"norm/a/0.0": np.zeros((4, 4))}, r"norm/a/0.0' has shape \(4, 4\).*allows at most 1 element"),
    ({}, "has no __meta__ entry"),
])
def test_malformed_members_are_refused(tmp_path, tiny_model, arrays, pattern):
    arrays = {"__meta__": meta(), **arrays} if arrays else {"norm/a/0.0": np.float64(1.0)}
    with pytest.raises(ConformanceError, match=pattern):
        conformance.check_file(write_npz(tmp_path / "x.npz", arrays), tiny_model)


@pytest.mark.parametrize("meta_value, pattern", [
    (np.array("{not json"), "__meta__ is not valid JSON"),
    (np.array(json.dumps([1, 2])), "__meta__ must be a JSON object, got list"),
    (meta(observables=[1, 2]), "'observables' must be a non-empty mapping"),
    (meta(observables={"a": "she"}), "observable 'a' must map tokens to finite numbers"),
    (meta(observables={"a/b": {"3": 1}}), "observable name 'a/b' is empty or holds"),
    (meta(extra=1), r"unknown keys \['extra'\]"),
    (meta(dtype="float16"), "dtype must be 'float32' or 'float64', got 'float16'"),
    (meta(layernorm="exact"), "only layernorm 'ignore' files can be checked"),
    (np.float64(1.0), "__meta__ must be a JSON string"),
    (np.array(["{}", "{}"]), r"member '__meta__' has shape \(2,\).*at most 1 element"),
    (meta(observables={"a": {"99999": 1.0}}), "observable 'a' of __meta__: .*token id"),
])
def test_malformed_meta(tmp_path, tiny_model, meta_value, pattern):
    path = write_npz(tmp_path / "m.npz", {"__meta__": meta_value, "norm/a/0.0": np.float64(1.0)})
    with pytest.raises(ConformanceError, match=pattern):
        conformance.check_file(path, tiny_model)


@pytest.mark.parametrize("content, pattern", [
    (b"feature/a/0.0 = 1.0\n", "not a readable conformance .npz"),
    (None, "not a readable conformance .npz"),  # truncated zip
])
def test_text_and_truncated_files(tmp_path, tiny_model, reference_npz, content, pattern):
    path = tmp_path / "f.npz"
    path.write_bytes(content if content is not None else reference_npz.read_bytes()[:5000])
    with pytest.raises(ConformanceError, match=pattern):
        conformance.check_file(path, tiny_model)


@pytest.mark.parametrize("key, value, detail", [
    ("whatever/a/0.0", np.float64(1.0), "unknown key"),
    ("norm/a/0.0", np.array("1.0"), "values of dtype <U3, not numbers"),
    ("feature/a/0.0", np.zeros(3), r"shape \(3,\), expected shape \(16,\)"),
    ("norm/a/0.0", np.zeros(1), r"shape \(1,\), expected shape \(\)"),
    ("norm/a/5.0", np.float64(1.0), "no head 5.0: the model has 2 layers of 2 heads"),
    ("norm/zzz/0.0", np.float64(1.0), "not all in __meta__ observables"),
    ("cosine/a/0.0", np.float64(1.0), "not all in __meta__ observables"),
    ("norm/a/0.0", np.float64(np.nan), "relative error inf"),
])
def test_bad_entries_are_failed_checks_that_print(tmp_path, tiny_model, key, value, detail):
    path = write_npz(tmp_path / "e.npz", {"__meta__": meta(), key: value})
    (check,) = conformance.check_file(path, tiny_model)
    assert not check.passed and isinstance(check.measured, float)
    line = f"MISMATCH {check.name}: relative error {check.measured:.3e} > {check.tolerance:g}\n{check.detail}"
    assert key in line
    with pytest.raises(AssertionError, match=detail):
        raise AssertionError(check.detail)


def test_reference_file_still_passes(tiny_model, reference_npz):
    checks = conformance.check_file(reference_npz, tiny_model)
    assert len(checks) == 2 * 2 * (2 * 2 + 2 * 2) and all(c.passed for c in checks)


# ----------------------------------------------------------------------------------------------------------
# 7. tokenizer files and ids


def tokenizer_folder(folder: Path, vocab: bytes, merges: bytes) -> Path:
    (folder / "vocab.json").write_bytes(vocab)
    (folder / "merges.txt").write_bytes(merges)
    return folder


VOCAB = json.dumps({"a": 0, "b": 1, "ab": 2, "Ġ": 3}).encode()


@pytest.mark.parametrize("vocab, merges, pattern", [
    (VOCAB, b"#version: 0.2\nab\n", r"merges.txt line 2: a merge is two tokens separated by one space, got 'ab'"),
    (VOCAB, b"#version: 0.2\na  b\n", "merges.txt line 2: a merge is two tokens"),
    (VOCAB, b"#version: 0.2\na b c\n", "merges.txt line 2: a merge is two tokens"),
    (VOCAB, b"#version: 0.2\nb a\n", "merges.txt line 2: the merge 'b a' makes 'ba', which vocab.json does not hold"),
    (VOCAB, b"\xff\xfe a b\n", r"merges.txt is not valid UTF-8 \(byte 0\)"),
    (b"[1, 2]", b"a b\n", "vocab.json must be a JSON object of token -> id, got list"),
    (json.dumps({"a": "0"}).encode(), b"", "vocab.json: token 'a' has id 0, not a non-negative integer"),
    (json.dumps({"a": -1}).encode(), b"", "has id -1, not a non-negative integer"),
    (json.dumps({"a": True}).encode(), b"", "has id True"),
    (json.dumps({"a b": 0}).encode(), b"", "token 'a b' is not a byte-level BPE token"),
    (b'{"a": 0, "\xff": 1}', b"", r"vocab.json is not valid UTF-8"),
    (b'{"a": 0, "a": 1}', b"", "vocab.json holds the key 'a' twice"),
])
def test_malformed_tokenizer_files(folder, vocab, merges, pattern):
    with pytest.raises(CheckpointError, match=pattern):
        refimpl.load(tokenizer_folder(folder, vocab, merges))


def test_tokenizer_piece_missing_from_vocabulary(folder):
    model = refimpl.load(tokenizer_folder(folder, VOCAB, b"#version: 0.2\na b\n"))
    assert model.tokenizer.encode("ab a") == [2, 3, 0]
    with pytest.raises(InputError, match="the vocabulary has no token for the piece 'c'"):
        model.tokenizer.encode("c")


@pytest.fixture(scope="module")
def tok():
    return refimpl.Tokenizer.from_folder()


@pytest.mark.parametrize("ids, pattern", [
    ([464.9], r"token ids must be integers, got 464.9 \(float\)"),
    ([np.float64(464.0)], "token ids must be integers"),
    ([True], r"token ids must be integers, got True \(bool\)"),
    (["464"], "token ids must be integers, got '464'"),
    ("abc", "decode takes a sequence of integer token ids, got str"),
    (464, "decode takes a sequence of integer token ids, got int"),
    (np.array(464), "decode takes a sequence of integer token ids, got ndarray"),
    ([-1], "token id -1 is not in the vocabulary"),
])
def test_decode_bad_ids(tok, ids, pattern):
    with pytest.raises(InputError, match=pattern):
        tok.decode(ids)


@pytest.mark.parametrize("text", ["\ud800", "she\udfff", "<|endoftext|>\ud83d"])
def test_encode_lone_surrogates(tok, text):
    with pytest.raises(InputError, match="lone surrogate .* at index"):
        tok.encode(text)


def test_long_chunk_without_whitespace_is_fast():
    """256k letters in one pre-split chunk: ~0.5 s now (bound 30 s for loaded CI machines); the old BPE took hours."""
    isolated("""
import random, string, time
from refimpl import Tokenizer
tok = Tokenizer.from_folder()
text = "".join(random.Random(0).choice(string.ascii_letters) for _ in range(1 << 18))
start = time.perf_counter()
ids = tok.encode(text)
assert time.perf_counter() - start < 30, time.perf_counter() - start
assert tok.decode(ids) == text
""", timeout=120)


# ----------------------------------------------------------------------------------------------------------
# 6. the torch peer never unpickles


def test_torch_peer_uses_safetensors_only(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import pickle

    from verification.peers.torch_peer import load_peer, make_random_checkpoint

    folder = make_random_checkpoint(tmp_path / "peer", n_layers=1, d_model=8, n_heads=2, vocab=11, n_ctx=8)
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    load_peer(folder)
    assert not marker.exists(), "pytorch_model.bin was unpickled"


# ----------------------------------------------------------------------------------------------------------
# fuzzing: mutations of valid files either load or raise a RefimplError


def _load_or_refimpl_error(folder: Path) -> None:
    try:
        model = refimpl.load(folder, dtype="float64")
    except RefimplError:
        return
    logits = model.forward([1, 2, 3])
    assert logits.shape == (3, model.config.d_vocab) and np.isfinite(logits).all()


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory, tensors):
    root = tmp_path_factory.mktemp("valid")
    single = write_checkpoint(root / "single", CONFIG, tensors)
    shards = write_checkpoint(root / "shards", CONFIG, tensors, shards=2)
    raw = (single / "model.safetensors").read_bytes()
    return {"single": single, "shards": shards, "weights": raw, "header_end": 8 + int.from_bytes(raw[:8], "little"),
            "index": json.loads((shards / "model.safetensors.index.json").read_text())}


def _scratch(source: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="fuzz-"))
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


@given(data=st.data())
def test_fuzz_safetensors_mutations(valid_files, data):
    raw = data.draw(mutated_bytes(valid_files["weights"], focus=valid_files["header_end"]))
    folder = _scratch(valid_files["single"])
    try:
        (folder / "model.safetensors").write_bytes(raw)
        _load_or_refimpl_error(folder)
    finally:
        shutil.rmtree(folder)


@given(data=st.data())
def test_fuzz_safetensors_header_edits(valid_files, data):
    raw = valid_files["weights"]
    header = json.loads(raw[8:valid_files["header_end"]])
    edited = json.dumps(data.draw(mutated_json(header))).encode()
    folder = _scratch(valid_files["single"])
    try:
        (folder / "model.safetensors").write_bytes(safetensors_bytes(edited, raw[valid_files["header_end"]:]))
        _load_or_refimpl_error(folder)
    finally:
        shutil.rmtree(folder)


@given(data=st.data())
def test_fuzz_sharded_index(valid_files, data):
    text = json.dumps(data.draw(mutated_json(valid_files["index"])))
    if data.draw(st.booleans()):
        text = data.draw(mutated_bytes(text.encode())).decode("latin-1")
    folder = _scratch(valid_files["shards"])
    try:
        (folder / "model.safetensors.index.json").write_bytes(text.encode("latin-1", "replace"))
        _load_or_refimpl_error(folder)
    finally:
        shutil.rmtree(folder)


@given(data=st.data())
def test_fuzz_config_json(valid_files, data):
    raw = json.dumps(data.draw(mutated_json(CONFIG))).encode()
    if data.draw(st.booleans()):
        raw = data.draw(mutated_bytes(raw))
    folder = _scratch(valid_files["single"])
    try:
        (folder / "config.json").write_bytes(raw)
        _load_or_refimpl_error(folder)
    finally:
        shutil.rmtree(folder)


@given(data=st.data())
def test_fuzz_conformance_npz(tiny_model, reference_npz, data):
    """Byte mutations of the zip, or a member replaced by an arbitrary small array."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-npz-"))
    path = folder / "c.npz"
    try:
        if data.draw(st.booleans()):
            path.write_bytes(data.draw(mutated_bytes(reference_npz.read_bytes())))
        else:
            arrays = reference_arrays(reference_npz)
            key = data.draw(st.sampled_from(sorted(arrays)))
            dtype = data.draw(st.sampled_from(["<f8", "<f4", "<i4", "<U4", "|b1", "<c16"]))
            shape = tuple(data.draw(st.lists(st.integers(0, 20), max_size=2)))
            arrays[key] = np.zeros(shape, dtype)
            if data.draw(st.booleans()):
                arrays[data.draw(st.text(max_size=12)).replace("\0", "") or "x"] = np.float64(1.0)
            write_npz(path, arrays)
        try:
            checks = conformance.check_file(path, tiny_model)
        except RefimplError:
            return
        for check in checks:
            assert isinstance(check.measured, float)
            f"{check.measured:.3e} > {check.tolerance:g}"
    finally:
        shutil.rmtree(folder)
