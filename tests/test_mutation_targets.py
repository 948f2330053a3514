"""Focused, fast tests that kill the mutation catalogue's mutants (verification/mutation/mutants_catalogue.py) in
the forward pass, trace and edits, the frozen block, observables, analysis, records, the virtual-head
scan and the beam search.

Every reference is rebuilt independently: from the checkpoint's raw tensors (Hugging Face layout, not
``model.weights``), by brute force over all paths, or by ``model.forward(edits=...)``; no helper of the
code under test is used to compute an expected value.
"""

from __future__ import annotations


import numpy as np
import pytest

import refimpl
from refimpl.propagation import jacobians as J
from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")
L, H, D, WINDOW = 3, 3, 12, 3
IDS = np.array([7, 3, 3, 41, 0, 19, 22, 5, 60, 11])  # longer than the window of the local layer


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """An untied (explicit lm_head) float64 checkpoint: global, local, global layers; and its raw tensors."""
    config = gpt_neo_config(vocab=61, d_model=D, n_layers=L, n_heads=H, window=WINDOW, n_ctx=16, d_mlp=20,
                            kinds=["global", "local", "global"])
    t = random_tensors(config, seed=11, scale=0.35)
    t["lm_head.weight"] = np.random.default_rng(12).normal(0.0, 0.35, size=t["transformer.wte.weight"].shape)
    model = refimpl.load(write_checkpoint(tmp_path_factory.mktemp("targets"), config, t, dtype="float64"),
                         dtype="float64")
    return config, t, model


@pytest.fixture(scope="module")
def model(parts):
    return parts[2]


# ------------------------------------------------------------------ an independent GPT-Neo
def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased variance, eps inside the root (torch)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def reference_logits(config, t, ids):
    """GPT-Neo written out per head and per (query, key) from the raw tensors (torch's [out, in] layout)."""
    d, n_heads = config["hidden_size"], config["num_heads"]
    dh, T = d // n_heads, len(ids)
    kinds = [entry[0][0] for entry in config["attention_types"]]
    x = t["transformer.wte.weight"][ids] + t["transformer.wpe.weight"][np.arange(T)]
    for layer, kind in enumerate(kinds):
        p = f"transformer.h.{layer}."
        h = _ln(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"])
        q, k, v = (h @ t[p + f"attn.attention.{n}_proj.weight"].T for n in "qkv")
        z = np.zeros_like(x)
        for head in range(n_heads):
            cols = slice(head * dh, (head + 1) * dh)
            for i in range(T):
                keys = [j for j in range(T) if j <= i and (kind == "global" or i - j < config["window_size"])]
                s = np.array([q[i, cols] @ k[j, cols] for j in keys])  # GPT-Neo: no 1/sqrt(dh)
                a = np.exp(s - s.max())
                z[i, cols] = (a / a.sum()) @ v[keys, cols]
        x = x + z @ t[p + "attn.attention.out_proj.weight"].T + t[p + "attn.attention.out_proj.bias"]
        m = _ln(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"]) @ t[p + "mlp.c_fc.weight"].T + t[p + "mlp.c_fc.bias"]
        x = x + _gelu(m) @ t[p + "mlp.c_proj.weight"].T + t[p + "mlp.c_proj.bias"]
    return _ln(x, t["transformer.ln_f.weight"], t["transformer.ln_f.bias"]) @ t["lm_head.weight"].T


def test_forward_equals_a_from_scratch_gpt_neo(parts):
    config, t, model = parts
    assert relative_error(model.forward(IDS), reference_logits(config, t, IDS)) <= SAME
    # the local window matters for these ids (the test could not pass with global attention everywhere)
    global_config = dict(config, attention_types=[[["global"], 1]] * L)
    assert relative_error(model.forward(IDS), reference_logits(global_config, t, IDS)) > 1e-3


# ------------------------------------------------------------------ trace and edits
def test_identity_edit_of_head_results_changes_nothing(model):
    clean = model.forward(IDS)
    for layer in range(L):
        edited = model.forward(IDS, edits={f"blocks.{layer}.attn.hook_result": lambda x: x})
        assert relative_error(edited, clean) <= SAME, layer


def test_edit_is_applied_and_the_trace_records_the_edited_value(model):
    delta = np.random.default_rng(3).normal(size=D)
    name = "blocks.1.hook_resid_pre"

    def add(x):
        x[:, 4] += delta
        return x

    _, clean = model.run_with_trace(IDS, names=[name])
    logits, trace = model.run_with_trace(IDS, names=[name], edits={name: add})
    expected = np.array(clean[name])
    expected[:, 4] += delta
    np.testing.assert_array_equal(trace[name], expected)
    # the same change made one step earlier (resid_post of block 0 is resid_pre of block 1)
    same = model.forward(IDS, edits={"blocks.0.hook_resid_post": add})
    assert relative_error(logits, same) <= SAME
    assert relative_error(logits, model.forward(IDS)) > 1e-6


# ------------------------------------------------------------------ the frozen block
def test_frozen_block_equals_the_models_block_at_its_own_patterns(model):
    names = [f"blocks.{l}.{n}" for l in range(L) for n in ("hook_resid_pre", "attn.hook_pattern", "hook_resid_post")]
    _, trace = model.run_with_trace(IDS, names=names)
    for layer in range(L):
        X = np.array(trace[f"blocks.{layer}.hook_resid_pre"][0])
        A = np.array(trace[f"blocks.{layer}.attn.hook_pattern"][0])
        got = J.block_frozen_attention(model, layer, X, A)
        assert relative_error(got, trace[f"blocks.{layer}.hook_resid_post"][0]) <= SAME, layer


# ------------------------------------------------------------------ observables
def test_observable_adds_repeated_tokens_and_uses_the_unembedding(parts):
    _, t, model = parts
    token = model.tokenizer.decode([32])
    assert model.tokenizer.encode(token) == [32]
    obs = refimpl.observable(model, {token: 1.0, 32: 2.0, 9: -0.5})  # the string and the id are one token
    expected_n = np.zeros(61)
    expected_n[32], expected_n[9] = 3.0, -0.5
    np.testing.assert_array_equal(obs.vocab, expected_n)
    lm_head = t["lm_head.weight"]  # [V, d], untied: differs from wte
    assert np.abs(lm_head - t["transformer.wte.weight"]).max() > 0.1
    assert relative_error(obs.residual, lm_head.T @ expected_n) <= SAME
    # n . logits = ln_final(x) . residual at every position
    logits, trace = model.run_with_trace(IDS, names=["ln_final.hook_normalized"])
    assert relative_error(trace["ln_final.hook_normalized"][0] @ obs.residual, logits @ expected_n) <= SAME


# ------------------------------------------------------------------ analysis and records
def test_cosine_and_compare_features_against_formulas():
    rng = np.random.default_rng(5)
    F1, F2 = rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7))
    cos = np.array([[F1[l, h] @ F2[l, h] / np.sqrt((F1[l, h] @ F1[l, h]) * (F2[l, h] @ F2[l, h]))
                     for h in range(3)] for l in range(2)])
    assert relative_error(refimpl.cosine(F1, F2), cos) <= SAME
    assert abs(float(refimpl.cosine(F1[0, 0], 3.0 * F1[0, 0])) - 1.0) <= SAME
    table = refimpl.compare_features(F1, F2)
    expected = sorted(((cos[l, h], f"{l}.{h}") for l in range(2) for h in range(3)), reverse=True)
    assert table.column("label") == [label for _, label in expected]
    assert relative_error(table.column("cosine"), [c for c, _ in expected]) <= SAME


def test_head_table_order_and_labels():
    values = np.array([[0.3, -1.0, 2.0], [5.0, 0.0, 1.5]])
    table = refimpl.head_table(values, "norm")
    assert table.column("label") == ["1.0", "0.2", "1.2", "0.0", "1.1", "0.1"]
    assert table.column("norm") == [5.0, 2.0, 1.5, 0.3, 0.0, -1.0]
    assert [(r["layer"], r["head"]) for r in table] == [(1, 0), (0, 2), (1, 2), (0, 0), (1, 1), (0, 1)]
    assert refimpl.head_table(values, "norm", descending=False).column("norm") == [-1.0, 0.0, 0.3, 1.5, 2.0, 5.0]


# ------------------------------------------------------------------ brute-force paths for scan and beam search
LN_NORMS = {"ln_final": 2.5, **{f"blocks.{l}.ln1": 1.5 + 0.7 * l for l in range(L)}}


def _path_norm(t, u, path, mode):
    """|feature| of a head path (earliest first) from the raw tensors: y <- W_V[h] (W_O[h] y) per head,
    LayerNorm factors sqrt(d) gamma / |x~| ("estimate"; the earliest node: sqrt(d) gamma only)."""
    d = u.shape[0]
    dh = d // H
    y = u
    if mode == "estimate":
        y = np.sqrt(d) * t["transformer.ln_f.weight"] * y / LN_NORMS["ln_final"]
    for index in range(len(path) - 1, -1, -1):
        layer, head = path[index]
        p = f"transformer.h.{layer}.attn.attention."
        W_O = t[p + "out_proj.weight"][:, head * dh:(head + 1) * dh]  # [d, dh] (torch [out, in])
        W_V = t[p + "v_proj.weight"][head * dh:(head + 1) * dh]  # [dh, d]
        y = W_V.T @ (W_O.T @ y)  # the feature through head (layer, head): W_OV^T y
        if mode == "estimate":
            gamma = t[f"transformer.h.{layer}.ln_1.weight"]
            y = np.sqrt(d) * gamma * y / (1.0 if index == 0 else LN_NORMS[f"blocks.{layer}.ln1"])
    return float(np.linalg.norm(y))


def _label(path):
    return " -> ".join(f"{l}.{h}" for l, h in path)


HEADS = [(l, h) for l in range(L) for h in range(H)]
PAIRS = [(a, b) for a in HEADS for b in HEADS if a[0] < b[0]]


@pytest.fixture(scope="module")
def subj(model):
    return refimpl.observable(model, {5: 1, 7: -1})


@pytest.mark.parametrize("mode", ["ignore", "estimate"])
def test_scan_table_equals_brute_force_over_all_pairs(parts, subj, mode):
    _, t, model = parts
    u = t["lm_head.weight"][5] - t["lm_head.weight"][7]
    expected = sorted(((_path_norm(t, u, pair, mode), _label(pair)) for pair in PAIRS), reverse=True)
    table = refimpl.scan_virtual_heads(model, subj, top_k=len(PAIRS), layernorm=mode,
                                       norms=LN_NORMS if mode == "estimate" else None)
    assert table.column("path") == [label for _, label in expected]
    assert relative_error(table.column("norm"), [n for n, _ in expected]) <= SAME


@pytest.mark.parametrize("mode", ["ignore", "estimate"])
def test_beam_search_wide_beam_is_exhaustive(parts, subj, mode):
    """A beam wider than every candidate list finds every path of length <= 2, in order of norm."""
    _, t, model = parts
    u = t["lm_head.weight"][5] - t["lm_head.weight"][7]
    paths = [(h,) for h in HEADS] + PAIRS
    expected = sorted(((_path_norm(t, u, p, mode), _label(p)) for p in paths), reverse=True)
    table = refimpl.beam_search_paths(model, subj, max_length=2, beam_width=1000, top_k=1000, layernorm=mode,
                                      norms=LN_NORMS if mode == "estimate" else None)
    assert table.column("path") == [label for _, label in expected]
    assert relative_error(table.column("norm"), [n for n, _ in expected]) <= SAME


@pytest.mark.parametrize("mode", ["ignore", "estimate"])
def test_beam_search_narrow_beam_against_exhaustive_search(parts, subj, mode):
    """beam_width 3 < 9 heads: length 1 keeps the exhaustive top 3; length 2 extends exactly those and
    keeps the top 3 of their extensions, i.e. the best pairs whose later head is in the exhaustive top 3."""
    _, t, model = parts
    u = t["lm_head.weight"][5] - t["lm_head.weight"][7]
    width = 3
    singles = sorted(((_path_norm(t, u, (h,), mode), (h,)) for h in HEADS), reverse=True)
    beam = {p[0] for _, p in singles[:width]}
    extensions = sorted(((_path_norm(t, u, pair, mode), pair) for pair in PAIRS if pair[1] in beam), reverse=True)
    found = sorted(singles[:width] + extensions[:width], reverse=True)
    table = refimpl.beam_search_paths(model, subj, max_length=2, beam_width=width, top_k=2 * width, layernorm=mode,
                                      norms=LN_NORMS if mode == "estimate" else None)
    assert table.column("path") == [_label(p) for _, p in found]
    assert relative_error(table.column("norm"), [n for n, _ in found]) <= SAME
    # the narrow beam really prunes: the best pair overall is not always reachable
    best_pairs = sorted(((_path_norm(t, u, pair, mode), pair) for pair in PAIRS), reverse=True)
    assert len(extensions) < len(best_pairs)
