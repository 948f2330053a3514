"""GPT-2 as the second family: parity with transformers' GPT2LMHeadModel, features from the raw tensors,
the config fields that change the model, and the conversion's refusals."""

import io
import json

import numpy as np
import pytest

import refimpl
from refimpl.errors import CheckpointError, ConfigError
from refimpl.families.gpt2 import config_from_dict
from verification.references.fixtures import gpt2_config, random_tensors, write_checkpoint, write_raw_safetensors
from verification.policy.tolerances import relative_error, tolerance

SHAPES = [
    # (d_model, n_layers, n_heads, d_mlp, seq, batch)
    dict(d_model=24, n_layers=1, n_heads=3, d_mlp=None, seq=13, batch=2),
    dict(d_model=20, n_layers=3, n_heads=5, d_mlp=36, seq=17, batch=3),
]


def _transformers():
    pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[torch]')")
    pytest.importorskip("transformers", reason="parity tests need transformers (pip install -e '.[torch]')")
    from verification.peers import torch_peer

    return torch_peer


def _peer_logits(folder, ids):
    import torch

    peer = _transformers().load_peer(folder, "float64")
    with torch.no_grad():
        return peer(torch.as_tensor(np.atleast_2d(ids))).logits.numpy()


@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", range(len(SHAPES)), ids=lambda i: f"shape{i}")
def test_float64_logits_and_residuals_equal_gpt2lmheadmodel(tmp_path, stored, shape):
    tp = _transformers()
    spec = dict(SHAPES[shape])
    seq, batch = spec.pop("seq"), spec.pop("batch")
    folder = tp.make_random_gpt2_checkpoint(tmp_path, seed=shape, dtype=stored, vocab=97, n_ctx=32, **spec)
    ids = np.random.default_rng(shape).integers(0, 97, size=(batch, seq))
    model = refimpl.load(folder, dtype="float64")
    peer_logits, peer_resid = tp.peer_forward(tp.load_peer(folder, "float64"), ids)
    L = model.config.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    logits, trace = model.run_with_trace(ids, names=names)
    assert relative_error(logits, peer_logits) <= tolerance("forward_parity", "float64")
    for name, expected in zip(names, peer_resid):
        assert relative_error(trace[name], expected) <= tolerance("residual_parity", "float64"), name
    # what makes the test able to fail: non-trivial LayerNorms and q/k/v biases, a real 1/sqrt(dh) scale
    W = model.weights
    assert np.abs(W["blocks.0.ln1.w"] - 1).max() > 0.1 and np.abs(W["ln_final.b"]).max() > 0.1
    assert min(np.abs(W[f"blocks.0.attn.b_{x}"]).max() for x in "QKV") > 0.1
    assert model.config.attn_divisor(0) == pytest.approx(np.sqrt(model.config.d_head))


def test_float32_logits_match(tmp_path):
    tp = _transformers()
    folder = tp.make_random_gpt2_checkpoint(tmp_path, seed=3, vocab=50, d_model=16, n_layers=2, n_heads=4, n_ctx=16)
    ids = np.arange(14) % 50
    peer = _peer_logits(folder, ids)[0]
    assert relative_error(refimpl.load(folder, dtype="float32").forward(ids), peer) <= tolerance(
        "forward_parity", "float32")


@pytest.mark.parametrize("extra", [dict(scale_attn_by_inverse_layer_idx=True), dict(scale_attn_weights=False),
                                   dict(tie_word_embeddings=False)], ids=lambda e: next(iter(e)))
def test_config_options_change_the_model_as_in_transformers(tmp_path, extra):
    """Each option honoured: parity with transformers under it, and a different model than without it."""
    tp = _transformers()
    kw = dict(vocab=40, d_model=16, n_layers=3, n_heads=2, n_ctx=16)
    with_option = tp.make_random_gpt2_checkpoint(tmp_path / "on", config=tp.gpt2_hf_config(**kw, **extra), seed=4)
    without = tp.make_random_gpt2_checkpoint(tmp_path / "off", seed=4, **kw)
    ids = np.arange(15) % 40
    got = refimpl.load(with_option, dtype="float64").forward(ids)
    assert relative_error(got, _peer_logits(with_option, ids)[0]) <= tolerance("forward_parity", "float64")
    assert relative_error(got, refimpl.load(without, dtype="float64").forward(ids)) > 1e-3


def test_head_features_equal_dense_ov_from_the_raw_checkpoint(tmp_path):
    """W_OV^T W_U^T n per head, built densely from c_attn / c_proj / wte read by safetensors itself."""
    from safetensors.numpy import load_file

    config = gpt2_config(vocab=61, d_model=16, n_layers=3, n_heads=4, d_mlp=24)
    folder = write_checkpoint(tmp_path, config, random_tensors(config, seed=9), dtype="float64")
    model = refimpl.load(folder, dtype="float64")
    raw = load_file(folder / "model.safetensors")
    n = np.zeros(61)
    n[[3, 7, 11]] = [1.0, -1.0, 0.5]
    feats = refimpl.head_features(model, refimpl.observable(model, {3: 1, 7: -1, 11: 0.5}))
    d, H = 16, 4
    dh = d // H
    W_U = raw["transformer.wte.weight"].T  # [d, V], tied
    for l in range(3):
        c_attn, c_proj = raw[f"transformer.h.{l}.attn.c_attn.weight"], raw[f"transformer.h.{l}.attn.c_proj.weight"]
        for h in range(H):
            W_V = c_attn[:, 2 * d + h * dh:2 * d + (h + 1) * dh]  # [d, dh]
            W_O = c_proj[h * dh:(h + 1) * dh]  # [dh, d]
            dense = W_V @ W_O  # [d, d]: x @ W_OV is the head's value-output map
            expected = dense @ (W_U @ n)
            assert relative_error(feats[l, h], expected) <= tolerance("identity", "float64"), (l, h)


def test_head_outputs_carry_the_value_bias(tmp_path):
    """z includes b_V (v = x W_V + b_V), so each head's output, summed, plus b_O is hook_attn_out."""
    config = gpt2_config(vocab=31, d_model=12, n_layers=1, n_heads=3)
    model = refimpl.load(write_checkpoint(tmp_path, config, random_tensors(config, seed=2), dtype="float64"),
                         dtype="float64")
    names = ["blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_v", "blocks.0.attn.hook_result", "blocks.0.hook_attn_out"]
    _, tr = model.run_with_trace(np.arange(9), names=names)
    W = model.weights
    v = np.einsum("btd,hdk->bthk", tr["blocks.0.ln1.hook_normalized"], W["blocks.0.attn.W_V"]) + W["blocks.0.attn.b_V"]
    assert relative_error(tr["blocks.0.attn.hook_v"], v) <= tolerance("identity", "float64")
    total = tr["blocks.0.attn.hook_result"].sum(axis=2) + W["blocks.0.attn.b_O"]
    assert relative_error(total, tr["blocks.0.hook_attn_out"]) <= tolerance("identity", "float64")


# ------------------------------------------------------------------ config and conversion refusals
def test_config_fields():
    cfg = config_from_dict(gpt2_config(d_model=16, n_heads=4, n_layers=2))
    assert (cfg.family, cfg.d_mlp, cfg.d_head, cfg.attention_kinds) == ("gpt2", 64, 4, ("global", "global"))
    assert cfg.attn_divisors == (2.0, 2.0) and cfg.window(1) is None and cfg.tied
    by_layer = config_from_dict(gpt2_config(d_model=16, n_heads=4, n_layers=3, scale_attn_by_inverse_layer_idx=True))
    assert by_layer.attn_divisors == (2.0, 4.0, 6.0)
    assert config_from_dict(gpt2_config(scale_attn_weights=False)).attn_divisors is None
    assert config_from_dict(gpt2_config(reorder_and_upcast_attn=True)) == config_from_dict(gpt2_config())


@pytest.mark.parametrize("extra, message", [
    (dict(add_cross_attention=True), "add_cross_attention is true"),
    (dict(activation_function="relu"), "activation_function 'relu' is not supported"),
    (dict(scale_attn_weights=1), "'scale_attn_weights' must be true or false, got 1"),
    (dict(tie_word_embeddings="no"), "'tie_word_embeddings' must be true or false"),
    (dict(n_embd=18, n_head=4), "n_embd 18 is not divisible by n_head 4"),
    (dict(n_inner=0), "'n_inner' must be a positive integer"),
    (dict(n_layer=10**6), "'n_layer' is 1000000, above the sane limit"),
    (dict(model_type="gpt_neo"), "this parser reads only 'gpt2'"),
])
def test_config_refusals(extra, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(gpt2_config(**extra))


def test_unknown_model_type_names_the_families(tmp_path):
    config = gpt2_config()
    write_checkpoint(tmp_path, {**config, "model_type": "gpt_neox"}, random_tensors(config))
    with pytest.raises(ConfigError, match=r"model_type is 'gpt_neox'; this oracle implements \['gpt2', 'gpt_neo'\]"):
        refimpl.load(tmp_path)


def test_legacy_buffers_are_ignored_and_a_missing_tensor_named(tmp_path):
    config = gpt2_config(vocab=31, d_model=8, n_layers=2, n_heads=2, n_ctx=8)
    tensors = random_tensors(config, seed=1)
    plain = refimpl.load(write_checkpoint(tmp_path / "plain", config, tensors, dtype="float64"), dtype="float64")
    legacy = {k: ("F64", v) for k, v in tensors.items()}
    for l in range(2):  # old checkpoints store the causal-mask buffers (a mask and -1e4)
        legacy[f"transformer.h.{l}.attn.bias"] = ("F32", np.tril(np.ones((1, 1, 8, 8), np.float32)))
        legacy[f"transformer.h.{l}.attn.masked_bias"] = ("F32", np.array(-1e4, np.float32))
    folder = write_checkpoint(tmp_path / "legacy", config, {}, dtype="float64")
    write_raw_safetensors(folder / "model.safetensors", legacy)
    ids = np.arange(7)
    np.testing.assert_array_equal(refimpl.load(folder, dtype="float64").forward(ids), plain.forward(ids))
    del legacy["transformer.h.1.attn.c_attn.bias"]
    write_raw_safetensors(folder / "model.safetensors", legacy)
    with pytest.raises(CheckpointError, match=r"missing parameters \['h.1.attn.c_attn.bias'\]"):
        refimpl.load(folder)


def test_a_gpt_neo_tensor_in_a_gpt2_checkpoint_is_named(tmp_path):
    config = gpt2_config(vocab=31, d_model=8, n_layers=1, n_heads=2)
    tensors = random_tensors(config)
    tensors["transformer.h.0.attn.attention.q_proj.weight"] = np.zeros((8, 8))
    with pytest.raises(CheckpointError, match=r"unexpected parameters \['h.0.attn.attention.q_proj.weight'\]; is it GPT-2\?"):
        refimpl.load(write_checkpoint(tmp_path, config, tensors))


def test_c_attn_of_the_wrong_width_is_named(tmp_path):
    config = gpt2_config(vocab=31, d_model=8, n_layers=1, n_heads=2)
    tensors = random_tensors(config)
    tensors["transformer.h.0.attn.c_attn.weight"] = np.zeros((8, 16))  # q and k only
    with pytest.raises(CheckpointError, match=r"'transformer.h.0.attn.c_attn.weight' has shape \[8, 16\], expected \[8, 24\]"):
        refimpl.load(write_checkpoint(tmp_path, config, tensors))


def test_tied_config_with_a_different_lm_head_is_refused_and_untied_uses_it(tmp_path):
    config = gpt2_config(vocab=31, d_model=8, n_layers=1, n_heads=2)
    tensors = random_tensors(config, seed=3)
    same = {**tensors, "lm_head.weight": tensors["transformer.wte.weight"].copy()}
    ids = np.arange(6)
    base = refimpl.load(write_checkpoint(tmp_path / "base", config, tensors, dtype="float64"), dtype="float64")
    tied_copy = refimpl.load(write_checkpoint(tmp_path / "same", config, same, dtype="float64"), dtype="float64")
    np.testing.assert_array_equal(tied_copy.forward(ids), base.forward(ids))
    other = {**tensors, "lm_head.weight": tensors["transformer.wte.weight"] + 1.0}
    with pytest.raises(CheckpointError, match="differs from the token embedding, but the config ties them"):
        refimpl.load(write_checkpoint(tmp_path / "other", config, other))
    untied = refimpl.load(write_checkpoint(tmp_path / "untied", {**config, "tie_word_embeddings": False}, other,
                                           dtype="float64"), dtype="float64")
    np.testing.assert_array_equal(untied.weights["unembed.W_U"], other["lm_head.weight"].T)
    with pytest.raises(CheckpointError, match=r"missing parameters \['lm_head.weight'\]"):
        refimpl.load(write_checkpoint(tmp_path / "nohead", {**config, "tie_word_embeddings": False}, tensors))


def test_hub_ids_gpt2_and_openai_community_load_from_a_local_cache_offline(tmp_path, monkeypatch):
    """``gpt2`` and ``openai-community/gpt2`` go through the same loader (a hand-made cache, HF_HUB_OFFLINE=1)."""
    pytest.importorskip("huggingface_hub")
    config = gpt2_config(vocab=31, d_model=8, n_layers=2, n_heads=2, n_ctx=16)
    commit = "c" * 40
    for repo in ("models--gpt2", "models--openai-community--gpt2"):
        write_checkpoint(tmp_path / repo / "snapshots" / commit, config, random_tensors(config, seed=6), dtype="float64")
        (tmp_path / repo / "refs").mkdir()
        (tmp_path / repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    a, b = refimpl.load("gpt2", dtype="float64"), refimpl.load("openai-community/gpt2", dtype="float64")
    assert a.family.name == b.family.name == "gpt2"
    np.testing.assert_array_equal(a.forward([1, 2, 3]), b.forward([1, 2, 3]))
    assert json.loads((a.path / "config.json").read_text())["model_type"] == "gpt2"


# ------------------------------------------------------------------ the GPT-2 organism
def test_gpt2_organism_is_bundled_small_and_passes_the_verification_report(tmp_path):
    from verification.__main__ import main

    model = refimpl.load("organism-gpt2")
    assert model.family.name == "gpt2" and model.config.attn_divisors == (4.0,) * 4
    size = sum(p.stat().st_size for p in model.path.iterdir())
    assert size < 8e6, size
    out = tmp_path / "report.json"
    assert main(["--model", "organism-gpt2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["passed"] and report["checks_failed"] == 0 and report["checks_passed"] > 60


# ------------------------------------------------------------------ validate and conformance on GPT-2
def test_validate_with_the_transformers_peer_agrees_on_a_random_gpt2(tmp_path, capsys):
    """The transformers peer reads GPT-2's own modules (c_attn's value block, c_proj): every activation, the
    features and path patching agree; a peer whose c_proj is read as nn.Linear would not."""
    tp = _transformers()
    from verification.peers.validate import main

    folder = tp.make_random_gpt2_checkpoint(tmp_path, seed=8, dtype="float64", vocab=61, d_model=16, n_layers=2,
                                            n_heads=4, n_ctx=32)
    assert main(["--peer", "transformers", "--model", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "path_patching (all heads)" in out and "features (all heads)" in out and "FAIL" not in out


def test_conformance_of_the_oracles_own_gpt2_features(tmp_path):
    """The oracle's own GPT-2 features written in the conformance format pass; one head's feature off by 5%
    fails, by that head's name."""
    import zipfile

    from verification.conformance import check_file, write_reference

    config = gpt2_config(vocab=61, d_model=16, n_layers=2, n_heads=2)
    folder = write_checkpoint(tmp_path / "m", config, random_tensors(config, seed=4), dtype="float64")
    model = refimpl.load(folder, dtype="float64")
    good = write_reference(tmp_path / "good.npz", model, {"n": {3: 1, 7: -1}})
    assert all(c.passed for c in check_file(good, model))
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "feature/n/1.0.npy":
                array = np.load(io.BytesIO(data))
                buffer = io.BytesIO()
                np.save(buffer, array * 1.05)
                data = buffer.getvalue()
            dst.writestr(name, data)
    failed = [c.name for c in check_file(bad, model) if not c.passed]
    assert failed and all("1.0" in name for name in failed), failed


def test_transformer_lens_on_the_gpt2_organism_differs_only_in_its_masking_constant(capsys):
    """TransformerLens' bridge on GPT-2: every activation, the weights, features and path patching agree; its
    hook_attn_scores hold the dtype's minimum at masked keys where the oracle has -inf (named as a finding)."""
    pytest.importorskip("transformer_lens", reason="the TransformerLens peer needs transformer-lens ('.[tl]')")
    from verification.peers.validate import main

    assert main(["--peer", "transformer-lens", "--model", "organism-gpt2"]) == 1
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 4 and all(".attn.hook_attn_scores:" in f and "FINDING: masked keys hold" in f for f in fails)
    assert "92 of 96 items agree" in out and "path_patching (all heads)" in out


# ------------------------------------------------------------------ the structure and the activation as the seam
def test_the_structure_names_the_layernorms_and_refuses_unknown_sublayers():
    from refimpl.families import SERIAL

    assert SERIAL.layer_norm("attn", 3) == "blocks.3.ln1" and SERIAL.layer_norm("mlp", 3) == "blocks.3.ln2"
    assert SERIAL.sublayer_input("mlp", 1) == "blocks.1.ln2.hook_normalized"
    assert SERIAL.order("attn", 2) < SERIAL.order("mlp", 2) < SERIAL.order("attn", 3)
    assert SERIAL.head_reentry(2) == "blocks.2.hook_resid_mid"
    for kind in ("MLP", "XXmlpXX", None, "ln"):
        with pytest.raises(ValueError, match="a sublayer kind is one of"):
            SERIAL.layer_norm(kind, 0)
        with pytest.raises(ValueError, match="a sublayer kind is one of"):
            SERIAL.order(kind, 0)


@pytest.mark.parametrize("family", ["gpt_neo", "gpt2"])
def test_mlp_nodes_use_the_models_activation(tmp_path, family):
    """propagate, mlp_boundary and mlp_segment linearise the MLP with the model's own activation (a family's, e.g.
    NeoX's exact gelu): with tanh in its place every one of them follows tanh, not gelu_new."""
    from refimpl import experiments as ex
    from refimpl.families import Activation
    from refimpl.propagation import jacobians as J
    from verification.references.fixtures import small_model

    model = small_model(tmp_path, family=family)
    model.activation = Activation("tanh", np.tanh, lambda x: 1.0 - np.tanh(x) ** 2)
    W, p = model.weights, "blocks.1.mlp."
    args = (W[p + "W_in"], W[p + "b_in"], W[p + "W_out"], W[p + "b_out"])
    rng = np.random.default_rng(3)
    y = rng.normal(size=16)
    f = lambda x: y @ (np.tanh(x @ args[0] + args[1]) @ args[2] + args[3])  # noqa: E731
    x_neg, x_pos = rng.normal(size=16), rng.normal(size=16)
    while np.sign(f(x_neg)) == np.sign(f(x_pos)):
        x_pos = rng.normal(size=16)
    boundary = refimpl.mlp_boundary(model, 1, y, x_neg, x_pos)
    assert abs(f(boundary.point)) <= 1e-9 * (abs(f(x_neg)) + abs(f(x_pos)))
    rows = ex.mlp_segment(model, 1, y, x_neg, x_pos, points=5)
    for row in rows:
        x = boundary.point if row["is_boundary"] else (1 - row["t"]) * x_neg + row["t"] * x_pos
        assert relative_error(row["actual"], f(x)) <= tolerance("identity", "float64")
    grad = (J.mlp_jacobian(boundary.point, *args[:3], model.activation).T @ y)
    at = [row for row in rows if row["is_boundary"]][0]
    end = [row for row in rows if row["t"] == 1.0][0]
    assert relative_error(end["linear_at_boundary"], at["actual"] + (x_pos - boundary.point) @ grad) <= \
        tolerance("identity", "float64")
    obs = refimpl.observable(model, {3: 1, 7: -1})
    u = refimpl.head_features(model, obs)[2, 0]
    while np.sign(u @ J.mlp(x_neg, *args, model.activation)) == np.sign(u @ J.mlp(x_pos, *args, model.activation)):
        x_pos = rng.normal(size=16)
    feature = refimpl.path_feature(model, obs, ["MLP1", "2.0"], mlp_points={1: (x_neg, x_pos)})
    point = refimpl.mlp_boundary(model, 1, u, x_neg, x_pos).point
    assert relative_error(feature, J.mlp_jacobian(point, *args[:3], model.activation).T @ u) <= \
        tolerance("identity", "float64")
