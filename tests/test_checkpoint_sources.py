"""Where a checkpoint comes from: the source argument, the folder's safetensors, the shard index and its file
names; each rule at its edge, with the exact message (the message is what a user reads to fix their input)."""

import json

import pytest

from refimpl.sources.checkpoint import read_index, shard_name_problem
from refimpl.errors import CheckpointError

SEPARATOR = "contains a path separator (shards must sit in the model folder itself)"


@pytest.mark.parametrize("name, problem", [
    (3, "is a int, not a file name"),
    (None, "is a NoneType, not a file name"),
    ("", "is not a file name"),
    (".", "is not a file name"),
    ("..", "is not a file name"),
    ("a\0b.safetensors", "contains a NUL character"),
    ("/abs.safetensors", "is an absolute path"),
    ("\\abs.safetensors", "is an absolute path"),  # a Windows root, refused on every platform
    ("~user.safetensors", "is an absolute path"),
    ("sub/x.safetensors", SEPARATOR),
    ("sub\\x.safetensors", SEPARATOR),
    ("...", "contains '..'"),
    ("x..safetensors", "contains '..'"),
    # names that are fine: dots inside, a tilde not in front
    ("model-00001-of-00002.safetensors", None),
    (".x.safetensors", None),
    ("a~b.safetensors", None),
])
def test_shard_name_rules(name, problem):
    assert shard_name_problem(name) == problem


def _index(tmp_path, weight_map):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return tmp_path / "model.safetensors.index.json"


def test_non_string_shard_is_named_with_its_key_cut_to_80_characters(tmp_path):
    key = "k" * 100
    path = _index(tmp_path, {key: 3})
    with pytest.raises(CheckpointError) as info:
        read_index(tmp_path)
    assert str(info.value) == f"{path}: weight_map maps {repr(key)[:80]}... to a int, not a shard file name"
    path = _index(tmp_path, {"k" * 78: 3})  # repr 80 characters: not cut
    with pytest.raises(CheckpointError) as info:
        read_index(tmp_path)
    assert str(info.value) == f"{path}: weight_map maps {'k' * 78!r} to a int, not a shard file name"


def test_bad_shard_name_is_named_with_name_and_key_cut(tmp_path):
    key, name = "w" * 100, "d/" + "n" * 200
    path = _index(tmp_path, {"ok": "model.safetensors", key: name})
    with pytest.raises(CheckpointError) as info:
        read_index(tmp_path)
    assert str(info.value) == (f"{path}: shard {repr(name)[:120]}... (for {repr(key)[:80]}...) {SEPARATOR}; refused")
    short_key, short_name = "w" * 78, "/" + "n" * 117  # reprs of exactly 80 and 120 characters: not cut
    path = _index(tmp_path, {short_key: short_name})
    with pytest.raises(CheckpointError) as info:
        read_index(tmp_path)
    assert str(info.value) == f"{path}: shard {short_name!r} (for {short_key!r}) is an absolute path; refused"


def test_good_index_is_returned_as_read(tmp_path):
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    _index(tmp_path, weight_map)
    assert read_index(tmp_path) == weight_map


def test_hub_needs_huggingface_hub(monkeypatch):
    import sys

    import refimpl

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now raises ImportError
    with pytest.raises(CheckpointError) as info:
        refimpl.load("acme/x")
    assert str(info.value).startswith("loading 'acme/x' from the hub needs huggingface_hub: ")


# ------------------------------------------------------------------ how a folder's safetensors are found
@pytest.fixture
def checkpoint(tmp_path):
    from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint

    config = gpt_neo_config(vocab=11, d_model=8, n_layers=1, n_heads=2, window=4, n_ctx=8)
    return write_checkpoint(tmp_path / "ckpt", config, random_tensors(config, seed=3))


def test_files_are_memory_mapped_unless_asked(checkpoint):
    from refimpl.sources.checkpoint import open_safetensors

    assert {f.mmap for f in open_safetensors(checkpoint).values()} == {True}
    assert {f.mmap for f in open_safetensors(checkpoint, mmap=False).values()} == {False}


def test_a_single_file_under_another_name_is_found(checkpoint):
    """Without model.safetensors or an index, every *.safetensors in the folder is read (as transformers does)."""
    import numpy as np

    import refimpl

    reference = refimpl.load(checkpoint, dtype="float64").forward([1, 2, 3])
    (checkpoint / "model.safetensors").rename(checkpoint / "weights.safetensors")
    np.testing.assert_array_equal(refimpl.load(checkpoint, dtype="float64").forward([1, 2, 3]), reference)
    (checkpoint / "weights.safetensors").rename(checkpoint / "weights.SAFETENSORS.bak")
    with pytest.raises(CheckpointError) as info:
        refimpl.load(checkpoint)
    assert str(info.value) == f"{checkpoint} holds no model.safetensors (nor a sharded index)"


def test_an_unlistable_folder_is_named(checkpoint, monkeypatch):
    from pathlib import Path

    import refimpl

    (checkpoint / "model.safetensors").rename(checkpoint / "weights.safetensors")

    def denied(self, pattern):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "glob", denied)
    with pytest.raises(CheckpointError) as info:
        refimpl.load(checkpoint)
    assert str(info.value) == f"cannot list {checkpoint}: Permission denied"


def _sharded(tmp_path):
    from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint

    config = gpt_neo_config(vocab=11, d_model=8, n_layers=1, n_heads=2, window=4, n_ctx=8)
    folder = write_checkpoint(tmp_path / "sharded", config, random_tensors(config, seed=3), shards=2)
    index_path = folder / "model.safetensors.index.json"
    return folder, index_path, json.loads(index_path.read_text())


def test_index_placing_a_tensor_in_the_wrong_shard_is_named(tmp_path):
    import refimpl

    folder, index_path, index = _sharded(tmp_path)
    key, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in set(index["weight_map"].values()) if s != shard)
    index["weight_map"][key] = other  # the tensor exists, in the other shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as info:
        refimpl.load(folder)
    assert str(info.value) == f"model.safetensors.index.json places {key!r} in {other}, but that shard does not hold it"


def test_index_listing_a_tensor_no_shard_holds_is_named_with_its_key_cut(tmp_path):
    import refimpl

    folder, index_path, index = _sharded(tmp_path)
    shard = next(iter(index["weight_map"].values()))
    key = "x" * 100
    index["weight_map"][key] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as info:
        refimpl.load(folder)
    assert str(info.value) == (f"model.safetensors.index.json places {repr(key)[:80]}... in {shard}, "
                               "but that shard does not hold it")


def test_a_tensor_in_two_shards_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    import refimpl

    folder, index_path, index = _sharded(tmp_path)
    first, second = sorted(set(index["weight_map"].values()))
    key = next(k for k, s in index["weight_map"].items() if s == first)
    held = load_file(str(folder / second))
    held[key] = load_file(str(folder / first))[key]
    save_file(held, str(folder / second))
    with pytest.raises(CheckpointError) as info:
        refimpl.load(folder)
    assert str(info.value) == f"tensor {key!r} appears in both {first} and {second}"


# ------------------------------------------------------------------ the source argument
class BytesPath:
    def __fspath__(self):
        return b"/tmp"


@pytest.mark.parametrize("source, revision, message", [
    (b"/tmp", None, "source must be a bundled name, a directory or a hub id (str or os.PathLike), got bytes"),
    (3, None, "source must be a bundled name, a directory or a hub id (str or os.PathLike), got int"),
    (BytesPath(), None, "source must be a str path, got a bytes path"),
    ("  ", None, "source is an empty string; pass None for the default model or a directory"),
    ("a\0b", None, "source 'a\\x00b' contains a NUL character"),
    ("acme/x", 3, "revision must be a string or None, got int"),
    ("./no-such-folder", None, "no such model directory: './no-such-folder'"),
    ("/no-such-folder", None, "no such model directory: '/no-such-folder'"),
    ("~no-such-folder", None, "no such model directory: '~no-such-folder'"),
    ("a/b/c", None, "no such model directory: 'a/b/c'"),
])
def test_bad_sources_are_named(source, revision, message):
    import refimpl

    with pytest.raises((CheckpointError, refimpl.InputError)) as info:
        refimpl.load(source, revision=revision)
    assert str(info.value) == message


def test_a_file_or_fifo_is_not_a_model_folder(tmp_path):
    import os

    import refimpl

    file, fifo = tmp_path / "config.json", tmp_path / "pipe"
    file.write_text("{}")
    os.mkfifo(fifo)
    for path, kind in ((file, "a file"), (fifo, "not a directory (a FIFO, device or socket)")):
        with pytest.raises(CheckpointError) as info:
            refimpl.load(path)
        assert str(info.value) == f"{path} is {kind}; pass the Hugging Face model directory that contains it"


def test_an_unusable_path_is_named(tmp_path):
    import refimpl

    source = str(tmp_path / ("n" * 5000))  # longer than a file name may be: the file system refuses to look
    with pytest.raises(CheckpointError) as info:
        refimpl.load(source)
    assert str(info.value).startswith(f"cannot use '{source[:119]}") and "as a model directory: " in str(info.value)


def test_a_bundled_model_missing_from_the_package_is_named(tmp_path, monkeypatch):
    import refimpl
    from refimpl.sources import checkpoint

    monkeypatch.setitem(checkpoint.BUNDLED, "gone", tmp_path)
    with pytest.raises(CheckpointError) as info:
        refimpl.load("gone")
    assert str(info.value) == f"the bundled model 'gone' is missing from the package ({tmp_path})"
