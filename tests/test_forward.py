"""Forward pass, trace and edits on small random models (no torch needed)."""

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from refimpl.oracle import ops
from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")


def test_direct_formula_one_global_layer(tmp_path):
    """The whole model written out densely in float64, independent of refimpl.oracle.ops, matches forward()."""
    config = gpt_neo_config(vocab=13, d_model=6, n_layers=1, n_heads=2, kinds=["global"], n_ctx=8)
    t = random_tensors(config, seed=3)
    model = refimpl.load(write_checkpoint(tmp_path, config, t, dtype="float64"), dtype="float64")
    ids = np.array([4, 0, 12, 7, 7])
    p = "transformer.h.0."

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w + b

    x = t["transformer.wte.weight"][ids] + t["transformer.wpe.weight"][:5]
    h = ln(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"])
    q, k, v = (h @ t[p + f"attn.attention.{n}_proj.weight"].T for n in "qkv")
    out = np.zeros_like(x)
    for head in range(2):
        s = slice(3 * head, 3 * head + 3)
        scores = q[:, s] @ k[:, s].T + np.triu(np.full((5, 5), -np.inf), 1)
        pattern = np.exp(scores - scores.max(1, keepdims=True))
        pattern /= pattern.sum(1, keepdims=True)
        out[:, s] = pattern @ v[:, s]
    x = x + out @ t[p + "attn.attention.out_proj.weight"].T + t[p + "attn.attention.out_proj.bias"]
    h = ln(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"]) @ t[p + "mlp.c_fc.weight"].T + t[p + "mlp.c_fc.bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    x = x + h @ t[p + "mlp.c_proj.weight"].T + t[p + "mlp.c_proj.bias"]
    logits = ln(x, t["transformer.ln_f.weight"], t["transformer.ln_f.bias"]) @ t["transformer.wte.weight"].T
    assert relative_error(model.forward(ids), logits) <= SAME


def test_local_window_restricts(tmp_path):
    """One local layer with window 3: the logits at position i ignore tokens before i - 2."""
    config = gpt_neo_config(vocab=17, d_model=8, n_layers=1, n_heads=2, window=3, kinds=["local"], n_ctx=16)
    model = refimpl.load(write_checkpoint(tmp_path, config, random_tensors(config)), dtype="float64")
    a = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    b = a.copy()
    b[:4] = [9, 10, 11, 12]  # positions 0..3 are outside the window of positions >= 6
    la, lb = model.forward(a), model.forward(b)
    np.testing.assert_array_equal(la[6:], lb[6:])
    assert np.abs(la[5] - lb[5]).max() > 1e-3  # position 5 sees position 3
    visible = ops.attention_mask(6, 3)
    assert visible.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3]


def test_batch_and_single_agree(tiny64):
    ids = np.random.default_rng(0).integers(0, 61, size=(3, 11))
    batched = tiny64.forward(ids)
    assert batched.shape == (3, 11, 61)
    for row in range(3):
        assert relative_error(tiny64.forward(ids[row]), batched[row]) <= SAME


def test_causality(tiny64):
    ids = np.arange(12) % 61
    changed = ids.copy()
    changed[8] = 50
    np.testing.assert_array_equal(tiny64.forward(ids)[:8], tiny64.forward(changed)[:8])


@pytest.mark.parametrize(
    "ids, message",
    [
        ([3, -1, 2], r"token id -1 is out of range \[0, 61\)"),
        ([3, 61, 2], r"token id 61 is out of range \[0, 61\)"),
        (list(range(33)), "sequence of 33 tokens is longer than the position table \\(32\\)"),
        ([], "token ids are empty"),
        ([[]], "token ids are empty"),
        ([1.0, 2.0], "token ids must be integers"),
        (np.zeros((1, 1, 3), dtype=int), r"shaped \[seq\] or \[batch, seq\]"),
        (["a", "b"], "token ids must be integers"),
    ],
)
def test_bad_token_ids(tiny64, ids, message):
    with pytest.raises(InputError, match=message):
        tiny64.forward(ids)


def test_trace_has_every_name_with_transformerlens_shapes(tiny64):
    ids = np.arange(7)
    logits, trace = tiny64.run_with_trace(ids)
    assert set(trace) == set(tiny64.activation_names())
    assert len(trace) == 2 + 18 * 2 + 2
    B, T, d, H, dh, m = 1, 7, 16, 2, 8, 64
    expected = {
        "hook_embed": (B, T, d), "hook_pos_embed": (B, T, d), "blocks.1.hook_resid_pre": (B, T, d),
        "blocks.1.ln1.hook_scale": (B, T, 1), "blocks.1.ln1.hook_normalized": (B, T, d),
        "blocks.1.attn.hook_q": (B, T, H, dh), "blocks.1.attn.hook_z": (B, T, H, dh),
        "blocks.1.attn.hook_attn_scores": (B, H, T, T), "blocks.1.attn.hook_pattern": (B, H, T, T),
        "blocks.1.attn.hook_result": (B, T, H, d), "blocks.1.mlp.hook_pre": (B, T, m),
        "blocks.1.mlp.hook_post": (B, T, m), "ln_final.hook_scale": (B, T, 1),
    }
    for name, shape in expected.items():
        assert trace[name].shape == shape, name
    np.testing.assert_array_equal(logits, tiny64.forward(ids))
    # internal consistency of the recorded activations
    assert relative_error(trace["blocks.0.attn.hook_result"].sum(2) + tiny64.weights["blocks.0.attn.b_O"],
                          trace["blocks.0.hook_attn_out"]) <= SAME
    assert relative_error(trace["blocks.1.hook_resid_mid"] + trace["blocks.1.hook_mlp_out"],
                          trace["blocks.1.hook_resid_post"]) <= SAME
    assert relative_error(trace["blocks.0.attn.hook_pattern"].sum(-1), np.ones((1, 2, 7))) <= SAME
    assert np.isneginf(trace["blocks.0.attn.hook_attn_scores"][0, 0, 0, 1])
    # GPT-Neo's block 1 is local with window 4: query 6 sees keys 3..6 only; GPT-2's sees all 7
    assert np.count_nonzero(trace["blocks.1.attn.hook_pattern"][0, 0, 6]) == (4 if tiny64.config.window(1) else 7)


def test_trace_is_read_only_and_selective(tiny64):
    _, trace = tiny64.run_with_trace([1, 2, 3], names=["blocks.0.hook_resid_pre"])
    assert list(trace) == ["blocks.0.hook_resid_pre"]
    with pytest.raises(ValueError):
        trace["blocks.0.hook_resid_pre"][0, 0, 0] = 1.0
    with pytest.raises(KeyError, match="was not recorded"):
        trace["blocks.0.hook_attn_out"]
    with pytest.raises(TypeError):
        trace["x"] = 1


def test_unknown_names_are_errors(tiny64):
    with pytest.raises(InputError, match=r"unknown activation names \['blocks.9.hook_resid_pre'\]"):
        tiny64.run_with_trace([1], names=["blocks.9.hook_resid_pre"])
    with pytest.raises(InputError, match="unknown activation edits"):
        tiny64.forward([1], edits={"resid_pre": lambda x: x})


def test_identity_edits_change_nothing(tiny64):
    ids = [5, 9, 1, 4, 4, 2]
    edits = {name: (lambda x: x) for name in tiny64.activation_names()}
    assert relative_error(tiny64.forward(ids, edits=edits), tiny64.forward(ids)) <= SAME


def test_edit_head_result_equals_zero_ablation(tiny64):
    """Zeroing head 1 of block 0 via hook_result equals zeroing its z (the two paths agree)."""
    ids = [5, 9, 1, 4, 4, 2, 7, 8]

    def kill_result(x):
        x[:, :, 1] = 0
        return x

    def kill_z(x):
        x[:, :, 1] = 0
        return x

    a = tiny64.forward(ids, edits={"blocks.0.attn.hook_result": kill_result})
    b = tiny64.forward(ids, edits={"blocks.0.attn.hook_z": kill_z})
    assert relative_error(a, b) <= SAME
    assert np.abs(a - tiny64.forward(ids)).max() > 1e-3


def test_edit_is_recorded_and_steers(tiny64):
    ids = [5, 9, 1]
    shift = np.zeros(16)
    shift[3] = 2.0
    logits, trace = tiny64.run_with_trace(
        ids, names=["blocks.1.hook_resid_pre"], edits={"blocks.1.hook_resid_pre": lambda x: x + shift})
    _, clean = tiny64.run_with_trace(ids, names=["blocks.1.hook_resid_pre"])
    assert relative_error(trace["blocks.1.hook_resid_pre"] - clean["blocks.1.hook_resid_pre"],
                          np.broadcast_to(shift, (1, 3, 16))) <= SAME


def test_edits_must_keep_shape_and_dtype(tmp_path, tiny_dir):
    model32 = refimpl.load(tiny_dir, dtype="float32")
    with pytest.raises(InputError, match="returned shape"):
        model32.forward([1, 2], edits={"hook_embed": lambda x: x[:, :1]})
    with pytest.raises(InputError, match="returned float64 where the model computes in float32"):
        model32.forward([1, 2], edits={"hook_embed": lambda x: x + np.zeros(16)})


def test_float32_model_computes_in_float32(tiny_dir):
    model32 = refimpl.load(tiny_dir, dtype="float32")
    logits, trace = model32.run_with_trace([1, 2, 3])
    assert logits.dtype == np.float32
    assert all(v.dtype == np.float32 for k, v in trace.items()), [k for k, v in trace.items() if v.dtype != np.float32]


@pytest.mark.parametrize("n_bytes, text", [(1e8, "0.10 GB"), (1e8 - 1, "100.0 MB"), (2.5e9, "2.50 GB"),
                                           (1.5e6, "1.5 MB"),
                                           # just past a rounding step: the divisors are exactly 1e9 and 1e6
                                           (1_015_000_001, "1.02 GB"), (1_250_001, "1.3 MB")])
def test_memory_sizes_in_messages(n_bytes, text):
    from refimpl.oracle.memory import _size

    assert _size(n_bytes) == text


def test_model_repr_names_the_shape(tiny64):
    title = {"gpt_neo": "GPT-Neo", "gpt2": "GPT-2"}[tiny64.config.family]
    assert repr(tiny64) == (f"Model({tiny64.source!r}, {title}, 2 layers, d_model=16, 2 heads, dtype=float64)")


def test_no_sign_change_names_the_fallback_argument():
    from refimpl.propagation.boundaries import NoSignChange

    error = NoSignChange("y . MLP1", 1.0, 2.0)
    assert str(error).endswith("pick a negative and a positive example, or pass fallback='mean' to target the mean value")
    assert "pass mlp_fallback='mean'" in str(error.for_option("mlp_fallback"))


def test_masking_a_whole_query_row_is_refused_but_a_key_column_is_not(tiny64):
    ids = np.arange(6)[None]
    name = "blocks.0.attn.hook_attn_scores"

    def mask_row(x):
        x[0, 0, 3, :] = -np.inf
        return x

    def mask_last_key(x):  # every query loses the last key: the last query still sees the others
        x[..., -1] = -np.inf
        return x

    with pytest.raises(InputError) as info:
        tiny64.forward(ids, edits={name: mask_row})
    assert str(info.value) == (f"edit of {name} masks every key of some query (a row of -inf scores): its attention "
                               "would be NaN")
    assert np.isfinite(tiny64.forward(ids, edits={name: mask_last_key})).all()


def test_names_as_one_string_is_refused_with_the_reason(tiny64):
    with pytest.raises(InputError) as info:
        tiny64.run_with_trace([1, 2], names="blocks.0.hook_resid_pre")
    assert str(info.value) == "names must be a list of activation names, not a single string"
