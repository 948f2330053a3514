"""The verification suite: theorem properties, checkers, meta-tests with planted bugs, conformance, report."""

import json

import numpy as np
import pytest
from hypothesis import example, given, settings

import refimpl
from refimpl.propagation import jacobians as J
from refimpl.oracle import ops
from verification import conformance
from verification.references import errata
from verification.references import theorems
from verification.policy.checks import relative_check
from verification.references.derivatives import check_adjoint, check_dense, check_jvp
from verification.policy.strategies import layer_norm_inputs, small_configs, theorem2_cases
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")
SE = tolerance("monte_carlo", "standard_errors")


# ------------------------------------------------------------------ theorems as properties
@given(theorem2_cases())
@example((np.array([0.0, 0.5, 1e-5]), np.array([0.0, 1.0, 0.0]), 1.0, 0.0))  # nearly parallel (found by "long")
def test_theorem2_mean_and_extremes(case):
    y1, y2, s, k = case
    x = theorems.sample_constrained_sphere(y1, s, k, 4000, np.random.default_rng(0))
    scale = s * np.linalg.norm(y1)  # |x . y1| <= s |y1|: the scale of the constraint's rounding
    assert relative_error(np.linalg.norm(x, axis=1), np.full(len(x), s)) <= SAME
    assert np.max(np.abs(x @ y1 - k)) <= SAME * scale
    values = x @ y2
    expected = refimpl.theorem2_expectation(y1, y2, k)
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - expected) <= SE * se + SAME * s * np.linalg.norm(y2)
    lo, hi = refimpl.theorem2_bounds(y1, y2, s, k)
    slack = SAME * s * np.linalg.norm(y2)  # |x . y2| <= s |y2|: rounding relative to that scale
    assert values.min() >= lo - slack and values.max() <= hi + slack
    x_min, x_max = theorems.theorem2_explicit_extremes(y1, y2, s, k)
    assert abs(x_max @ y2 - hi) <= slack and abs(x_min @ y2 - lo) <= slack


@given(layer_norm_inputs())
def test_ideal_layer_norm_gradient_is_the_papers_formula(case):
    x, _, n = case
    assert relative_check("", J.ideal_layer_norm_vjp(x, n), theorems.theorem1_closed_form_gradient(x, n), SAME).passed


@given(layer_norm_inputs())
def test_layer_norm_adjoint_property(case):
    x, w, n = case
    u = np.roll(n, 1)
    assert check_adjoint("ln", lambda v: J.layer_norm_jvp(x, w, 1e-5, v), lambda g: J.layer_norm_vjp(x, w, 1e-5, g),
                         u, n, SAME).passed


def test_theorem1_holds_and_constant():
    for d in (8, 16, 64, 768, 2048):
        mean, se = theorems.theorem1_monte_carlo(d, 5000, d)
        assert mean + SE * se < theorems.theorem1_bound(d)
    assert relative_error(theorems.theorem1_constant(), 0.15542113167741777) <= SAME


def test_errata_checks_pass():
    assert errata.coupling_definition(SAME).passed
    check, note = errata.printed_couplings(tolerance("printed_digits", "paper"))
    assert check.passed and check.kind == "check" and note.kind == "measurement"
    assert errata.layer_norm_norm_factor(SAME).passed
    assert errata.theorem2_degenerate(SE).passed
    assert errata.theorem1_constant_check(SAME).passed
    assert len(errata.listing()) == 8


def test_erratum_1_discriminates_the_coupling(monkeypatch):
    """C12 C21 = cos^2 holds for y1.y2/|y2|^2 too; the check must reject that coupling and the cosine."""
    import refimpl.propagation.analysis

    for wrong in (lambda a, b: (a * b).sum(-1) / (b * b).sum(-1), refimpl.cosine):
        monkeypatch.setattr(refimpl, "coupling", wrong)
        assert not errata.coupling_definition(SAME).passed


def test_erratum_8_rejects_the_printed_constant(monkeypatch):
    monkeypatch.setattr(errata, "theorem1_constant", lambda: 0.155241)
    assert not errata.theorem1_constant_check(SAME).passed


def test_model_level_errata(organism):
    ids = organism.to_ids("<|endoftext|>So, John really is a great friend, isn't")
    subj = refimpl.observable(organism, {" she": 1, " he": -1})
    assert errata.patching_sign(organism, SAME).passed
    assert errata.swapped_layer_norms(organism, subj, ids, SAME).passed
    assert errata.variance_vs_mean_abs(organism, ids).kind == "measurement"


def test_erratum_7_rejects_the_authors_convention(organism, monkeypatch):
    """head_features computed with ln_2's gain (the authors' attention convention) must fail erratum 7."""
    ids = organism.to_ids("<|endoftext|>So, John really is a great friend, isn't")
    subj = refimpl.observable(organism, {" she": 1, " he": -1})
    original = refimpl.propagation.propagate.layer_norm_factor

    def ln2_gain(model, name, y, mode, last, norms, points):
        return original(model, name.replace("ln1", "ln2"), y, mode, last, norms, points)

    monkeypatch.setattr(refimpl.propagation.propagate, "layer_norm_factor", ln2_gain)
    assert not errata.swapped_layer_norms(organism, subj, ids, SAME).passed


# ------------------------------------------------------------------ meta-tests: planted bugs are caught
rng = np.random.default_rng(7)


def test_checkers_catch_a_missing_gamma():
    x, w = rng.normal(size=8), 1 + 0.5 * rng.normal(size=8)
    f = lambda v: ops.layer_norm(v, w, np.zeros(8), 1e-5)[0]  # noqa: E731
    buggy = J.layer_norm_jacobian(x, np.ones(8), 1e-5)  # forgot the gain
    assert not check_dense("ln", f, buggy, x, tolerance("complex_step", "float64")).passed
    assert not check_dense("ln", f, buggy, x, tolerance("central_difference", "float64"), "central").passed
    assert check_dense("ln", f, J.layer_norm_jacobian(x, w, 1e-5), x, tolerance("complex_step", "float64")).passed


def test_checkers_catch_a_jacobian_off_by_1e_6():
    x, w = rng.normal(size=8), 1 + 0.5 * rng.normal(size=8)
    u, g = rng.normal(size=8), rng.normal(size=8)
    f = lambda v: ops.layer_norm(v, w, np.zeros(8), 1e-5)[0]  # noqa: E731
    off = lambda v: J.layer_norm_jvp(x, w, 1e-5, v) * (1 + 1e-6)  # noqa: E731
    assert not check_jvp("ln", f, off, x, u, tolerance("complex_step", "float64")).passed
    result = check_adjoint("ln", off, lambda h: J.layer_norm_vjp(x, w, 1e-5, h), u, g, SAME)
    assert not result.passed and "dense re-check" in result.detail and "J[" in result.detail


def numpy_peer_logits(folder, ids, attention_scale=1.0):
    """An independent GPT-Neo forward written here from the raw Hugging Face tensors (no refimpl code):
    pre-LN blocks, causal (and local-window) softmax attention with scores times ``attention_scale``
    (GPT-Neo: 1, no 1/sqrt(d_head)), gelu_new, ln_f, tied unembedding.  ids [T] -> logits [T, V]"""
    import json

    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    t = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    H, eps, window = cfg["num_heads"], cfg["layer_norm_epsilon"], cfg["window_size"]
    kinds = [kind for block in cfg["attention_types"] for kind in block[0] * block[1]]
    T = len(ids)

    def ln(x, p):
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * t[p + ".weight"] + t[p + ".bias"]

    x = t["wte.weight"][ids] + t["wpe.weight"][:T]
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    for l, kind in enumerate(kinds):
        p = f"h.{l}."
        h = ln(x, p + "ln_1")
        q, k, v = ((h @ t[p + f"attn.attention.{n}_proj.weight"].T).reshape(T, H, -1) for n in "qkv")
        visible = (j <= i) & ((j > i - window) if kind == "local" else True)
        scores = np.where(visible, np.einsum("qhd,khd->hqk", q, k) * attention_scale, -np.inf)
        a = np.exp(scores - scores.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        z = np.einsum("hqk,khd->qhd", a, v).reshape(T, -1)
        x = x + z @ t[p + "attn.attention.out_proj.weight"].T + t[p + "attn.attention.out_proj.bias"]
        pre = ln(x, p + "ln_2") @ t[p + "mlp.c_fc.weight"].T + t[p + "mlp.c_fc.bias"]
        gelu = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre**3)))
        x = x + gelu @ t[p + "mlp.c_proj.weight"].T + t[p + "mlp.c_proj.bias"]
    return ln(x, "ln_f") @ t["wte.weight"].T


def test_forward_parity_catches_a_peer_scaling_attention_by_sqrt_dhead(tiny_neo_dir):
    """The report's forward-parity comparison passes on a correct independent peer and fails on the same
    peer with its attention scores scaled by 1/sqrt(d_head) (the GPT-2 habit GPT-Neo does not have)."""
    tiny64 = refimpl.load(tiny_neo_dir, dtype="float64")
    ids = np.arange(10) % 61
    oracle, tol = tiny64.forward(ids), tolerance("forward_parity", "float64")
    assert relative_check("forward", oracle, numpy_peer_logits(tiny_neo_dir, ids), tol).passed
    planted = numpy_peer_logits(tiny_neo_dir, ids, attention_scale=1 / np.sqrt(tiny64.config.d_head))
    assert not relative_check("forward", oracle, planted, tol).passed


def test_tolerance_policy_rejects_1e_3_in_float64():
    x = rng.normal(size=100)
    for check in ("identity", "forward_parity", "residual_parity", "conformance", "path_autograd"):
        assert not relative_check("", x * (1 + 1e-3), x, tolerance(check, "float64")).passed, check


@pytest.fixture(scope="module")
def organism():
    return refimpl.load(dtype="float64")


def test_conformance_round_trip_and_transposed_w_o(organism, tmp_path):
    observables = {"subj": {" she": 1, " he": -1}, "obj": {" her": 1, " him": -1}}
    path = conformance.write_reference(tmp_path / "ok.npz", organism, observables, dtype="float64")
    checks = conformance.check_file(path, organism)
    assert checks and all(c.passed for c in checks)
    # a peer that took rows instead of columns of out_proj (a transposed W_O per head)
    data = dict(np.load(path))
    W = organism.weights
    cfg = organism.config
    for l in range(cfg.n_layers):
        out_proj = W[f"blocks.{l}.attn.W_O"].reshape(-1, cfg.d_model).T  # [d, H*dh] as stored
        u = refimpl.observable(organism, observables["subj"]).residual
        for h in range(cfg.n_heads):
            wrong_W_O = out_proj[h * cfg.d_head:(h + 1) * cfg.d_head]  # rows: the planted bug
            data[f"feature/subj/{l}.{h}"] = W[f"blocks.{l}.attn.W_V"][h] @ (wrong_W_O @ u)
    np.savez(tmp_path / "bad.npz", **data)
    bad = [c for c in conformance.check_file(tmp_path / "bad.npz", organism, "organism") if not c.passed]
    assert len(bad) == cfg.n_layers * cfg.n_heads
    assert "refimpl.load('organism', dtype='float64')" in bad[0].detail and "expected = " in bad[0].detail


def test_report_command(tmp_path):
    from verification.__main__ import main

    out = tmp_path / "report.json"
    assert main(["--no-torch", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["passed"] and len(report["checks"]) > 40
    assert {"name", "passed", "measured", "reference", "tolerance", "seed", "kind"} <= set(report["checks"][0])
    kinds = [c["kind"] for c in report["checks"]]
    assert report["checks_passed"] == kinds.count("check") > 40 and report["checks_failed"] == 0
    assert report["measurements"] == kinds.count("measurement") >= 5 and report["skipped"] == kinds.count("skipped")
    names = [c["name"] for c in report["checks"]]
    errata_order = [int(n.split(":")[0].split()[1]) for n in names if n.startswith("erratum")]
    assert errata_order == sorted(errata_order) and set(errata_order) == set(range(1, 9))
    assert any("exceeds the Gaussian-case bound" in n for n in names)


def test_report_kinds_table_and_summary():
    from verification.policy.checks import Check, measurement, skipped
    from verification.report import format_summary, format_table

    entries = [Check("a check that fails", False, 2.0, 1.0, 1e-12, detail="why"),
               Check("a check", True, "17.14:0.9632 15.13:1.0972 13.11:1.0554", "4 SE = 4.02e-02", "rounding"),
               measurement("a measurement", 0.39, 0.25), skipped("not run", "needs the GPT-2 vocabulary")]
    assert [c.failed for c in entries] == [True, False, False, False]
    table = format_table(entries)
    assert "17.14:0.9632 15.13:1.0972 13.11:1.0554" in table and "4 SE = 4.02e-02" in table  # nothing cut
    assert "needs the GPT-2 vocabulary" in table and "      why" in table
    assert format_summary(entries) == ("1 checks passed, 1 failed; 1 measurements; 1 skipped "
                                       "(not run: needs the GPT-2 vocabulary)")
    with pytest.raises(ValueError):
        Check("x", True, 0, 0, 0, kind="pass")


def test_report_lists_checks_it_cannot_run_on_another_vocabulary(tiny64):
    from verification.model_sections import errata_checks, propagation_checks

    ids = np.arange(8) % 61
    entries = propagation_checks(tiny64, ids) + errata_checks(tiny64, ids)
    skipped = [c for c in entries if c.kind == "skipped"]
    assert len(skipped) == 2 and all("GPT-2 vocabulary" in c.detail for c in skipped)
    assert all(c.passed for c in entries if c.kind == "check")


def test_torch_backend_checks(organism):
    pytest.importorskip("torch", reason="the torch backend needs torch (pip install -e '.[torch]')")
    from verification.model_sections import torch_checks

    checks = torch_checks(organism, organism.to_ids("<|endoftext|>So, John really is a great friend, isn't"))
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    names = " ".join(c.name for c in checks)
    assert "torch (a)" in names and "MLP" in names and "torch (c)" in names
    assert all(c.kind == "measurement" for c in checks if "torch (c)" in c.name)


@given(small_configs())
@settings(max_examples=15)
def test_small_config_strategy_models_are_consistent(config):
    """The exported small-config strategy yields loadable models whose features and forward agree with
    direct formulas (batched vs single, dense W_OV)."""
    import tempfile

    from verification.references.fixtures import random_tensors, write_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        model = refimpl.load(write_checkpoint(folder, config, random_tensors(config, seed=3), dtype="float64"),
                             dtype="float64")
        ids = np.arange(2 * 9).reshape(2, 9) % config["vocab_size"]
        batched = model.forward(ids)
        assert relative_check("", model.forward(ids[1]), batched[1], SAME).passed
        obs = refimpl.observable(model, {0: 1.0, config["vocab_size"] - 1: -1.0})
        F = refimpl.head_features(model, obs)
        W = model.weights
        dense = W["blocks.0.attn.W_V"][0] @ W["blocks.0.attn.W_O"][0] @ obs.residual
        assert relative_check("", F[0, 0], dense, SAME).passed


def test_block_adjoint_at_the_1_3b_width():
    from verification.sections import block_adjoint_at_width

    assert block_adjoint_at_width(2048, 16, 8192, 4).passed


def test_conformance_reports_errors_relative_to_each_heads_own_feature(organism, tmp_path):
    """A 5% error on one small head reads as 5e-2, not as a fraction of the largest head's feature."""
    observables = {"subj": {" she": 1, " he": -1}}
    path = conformance.write_reference(tmp_path / "ok.npz", organism, observables, dtype="float64")
    data = dict(np.load(path))
    norms = {k: float(np.linalg.norm(v)) for k, v in data.items() if k.startswith("feature/")}
    small = min(norms, key=norms.get)
    data[small] = data[small] * 1.05
    np.savez(tmp_path / "bad.npz", **data)
    bad = [c for c in conformance.check_file(tmp_path / "bad.npz", organism) if not c.passed]
    assert [c.name for c in bad] == [f"conformance {small}"]
    assert abs(bad[0].measured - 0.05) <= 1e-9
