"""Loading: dtypes, memory mapping, sharding, the audited conversion and every bad-checkpoint error."""

import json
import shutil

import numpy as np
import pytest

import refimpl
from refimpl import CheckpointError, ConfigError, InputError
from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint


@pytest.fixture
def parts():
    config = gpt_neo_config(vocab=23, d_model=12, n_layers=2, n_heads=3, window=3, n_ctx=16)
    return config, random_tensors(config, seed=5)


def test_transformerlens_layout(parts, tmp_path):
    config, t = parts
    W = refimpl.load(write_checkpoint(tmp_path, config, t, dtype="float64"), dtype="float64").weights
    dh = 4
    q = t["transformer.h.1.attn.attention.q_proj.weight"]
    o = t["transformer.h.1.attn.attention.out_proj.weight"]
    for h in range(3):
        np.testing.assert_array_equal(W["blocks.1.attn.W_Q"][h], q[h * dh:(h + 1) * dh].T)
        np.testing.assert_array_equal(W["blocks.1.attn.W_O"][h], o[:, h * dh:(h + 1) * dh].T)
    np.testing.assert_array_equal(W["blocks.0.mlp.W_in"], t["transformer.h.0.mlp.c_fc.weight"].T)
    np.testing.assert_array_equal(W["blocks.0.mlp.W_out"], t["transformer.h.0.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(W["unembed.W_U"], t["transformer.wte.weight"].T)
    assert W["blocks.0.attn.W_K"].shape == (3, 12, 4) and W["blocks.0.attn.W_O"].shape == (3, 4, 12)


def test_weights_are_read_only_and_memory_mapped(parts, tmp_path):
    config, t = parts
    model = refimpl.load(write_checkpoint(tmp_path, config, t, dtype="float32"), dtype="float32")
    W_Q = model.weights["blocks.0.attn.W_Q"]
    assert not W_Q.flags.writeable
    base = W_Q
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap), "float32 weights loaded as float32 must be views of the file"
    with pytest.raises(ValueError):
        W_Q[0, 0, 0] = 1.0
    with pytest.raises(TypeError):
        model.weights["embed.W_E"] = None


@pytest.mark.parametrize("stored", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("compute", ["float32", "float64"])
def test_stored_dtypes_decode_exactly(parts, tmp_path, stored, compute):
    config, t = parts
    model = refimpl.load(write_checkpoint(tmp_path, config, t, dtype=stored), dtype=compute)
    assert model.dtype == np.dtype(compute)
    assert all(w.dtype == np.dtype(compute) for w in model.weights.values())
    wte = t["transformer.wte.weight"]
    if stored == "bfloat16":  # expected: round to nearest even on the top 16 bits of the float32
        bits = wte.astype(np.float32).view(np.uint32)
        expected = (((bits + ((bits >> 16) & 1) + 0x7FFF) >> 16) << 16).view(np.float32)
    else:
        expected = wte.astype(stored)
    np.testing.assert_array_equal(model.weights["embed.W_E"], expected.astype(compute))
    logits = model.forward([1, 2, 3])
    assert logits.dtype == np.dtype(compute)


def test_sharded_equals_single(parts, tmp_path):
    config, t = parts
    single = refimpl.load(write_checkpoint(tmp_path / "one", config, t), dtype="float64")
    sharded = refimpl.load(write_checkpoint(tmp_path / "three", config, t, shards=3), dtype="float64")
    ids = [[3, 1, 4, 1, 5, 9, 2, 6]]
    np.testing.assert_array_equal(single.forward(ids), sharded.forward(ids))


def test_legacy_buffers_ignored_and_lm_head_used(parts, tmp_path):
    config, t = parts
    t = dict(t)
    t["transformer.h.0.attn.attention.bias"] = np.ones((1, 1, 16, 16))
    t["transformer.h.0.attn.attention.masked_bias"] = np.array(-1e4)
    t["lm_head.weight"] = t["transformer.wte.weight"] * 2.0
    model = refimpl.load(write_checkpoint(tmp_path, config, t, dtype="float64"), dtype="float64")
    np.testing.assert_array_equal(model.weights["unembed.W_U"], t["lm_head.weight"].T)


def test_keys_without_transformer_prefix(parts, tmp_path):
    """A GPTNeoModel checkpoint (no ``transformer.`` prefix) loads to the same weights and logits."""
    config, t = parts
    bare = {k.removeprefix("transformer."): v for k, v in t.items()}
    plain = refimpl.load(write_checkpoint(tmp_path / "bare", config, bare, dtype="float64"), dtype="float64")
    prefixed = refimpl.load(write_checkpoint(tmp_path / "prefixed", config, t, dtype="float64"), dtype="float64")
    np.testing.assert_array_equal(plain.weights["blocks.1.attn.W_V"], prefixed.weights["blocks.1.attn.W_V"])
    np.testing.assert_array_equal(plain.forward([1, 2, 3]), prefixed.forward([1, 2, 3]))


def test_missing_parameter_named(parts, tmp_path):
    config, t = parts
    del t["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(CheckpointError, match=r"missing parameters \['h.1.mlp.c_fc.bias'\]"):
        refimpl.load(write_checkpoint(tmp_path, config, t))


def test_extra_parameter_named(parts, tmp_path):
    config, t = parts
    t["transformer.h.0.attn.attention.q_proj.bias"] = np.zeros(12)
    with pytest.raises(CheckpointError, match=r"unexpected parameters \['h.0.attn.attention.q_proj.bias'\]"):
        refimpl.load(write_checkpoint(tmp_path, config, t))


def test_wrong_shape_named_with_expected_and_actual(parts, tmp_path):
    config, t = parts
    t["transformer.h.1.attn.attention.out_proj.weight"] = np.zeros((12, 8))
    with pytest.raises(CheckpointError, match=r"out_proj.weight' has shape \[12, 8\], expected \[12, 12\]"):
        refimpl.load(write_checkpoint(tmp_path, config, t))


def test_truncated_file(parts, tmp_path):
    config, t = parts
    path = write_checkpoint(tmp_path, config, t) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        refimpl.load(tmp_path)


def test_corrupt_header(parts, tmp_path):
    config, t = parts
    path = write_checkpoint(tmp_path, config, t) / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[10:20] = b"\xff" * 10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        refimpl.load(tmp_path)


def test_not_safetensors_at_all(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(gpt_neo_config()))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="too short to be safetensors"):
        refimpl.load(tmp_path)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(gpt_neo_config()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # a valid pickle: must never be opened
    with pytest.raises(CheckpointError, match="never unpickles.*safe_serialization=True"):
        refimpl.load(tmp_path)
    with pytest.raises(CheckpointError, match="never unpickles"):
        refimpl.load(tmp_path / "pytorch_model.bin")


def test_not_gpt_neo(parts, tmp_path):
    config, t = parts
    write_checkpoint(tmp_path, {**config, "model_type": "llama"}, t)
    with pytest.raises(ConfigError, match="model_type is 'llama'"):
        refimpl.load(tmp_path)


def test_unsupported_activation(parts, tmp_path):
    config, t = parts
    write_checkpoint(tmp_path, {**config, "activation_function": "gelu"}, t)
    with pytest.raises(ConfigError, match="activation_function 'gelu' is not supported"):
        refimpl.load(tmp_path)


def test_missing_shard(parts, tmp_path):
    config, t = parts
    write_checkpoint(tmp_path, config, t, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors listed in .* is missing"):
        refimpl.load(tmp_path)


def test_missing_directory_and_bad_dtype(tiny_dir):
    with pytest.raises(CheckpointError, match="no such model directory"):
        refimpl.load("./does/not/exist")
    with pytest.raises(InputError, match="dtype must be 'float32' or 'float64'"):
        refimpl.load(tiny_dir, dtype="float16")


def test_no_weights_at_all(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(gpt_neo_config()))
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        refimpl.load(tmp_path)


def test_snapshot_vocabulary_files_are_used(tiny_dir, tmp_path):
    folder = tmp_path / "with_vocab"
    shutil.copytree(tiny_dir, folder)
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "Ġ": 3}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    model = refimpl.load(folder)
    assert model.tokenizer.encode("ab") == [2]
