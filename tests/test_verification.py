"""The verification suite: theorem properties, checkers, meta-tests with planted bugs, conformance, report."""

import json

import numpy as np
import pytest
from hypothesis import example, given, settings

import refimpl
from refimpl import jacobians as J
from refimpl import ops
from verification import conformance, errata, theorems
from verification.checks import relative_check
from verification.derivatives import check_adjoint, check_dense, check_jvp
from verification.strategies import layer_norm_inputs, small_configs, theorem2_cases
from verification.tolerances import relative_error, tolerance

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
    assert errata.printed_couplings(tolerance("printed_digits", "paper")).passed
    assert errata.layer_norm_norm_factor(SAME).passed
    assert errata.theorem2_degenerate(SE).passed
    assert errata.theorem1_constant_check(SAME).passed
    assert len(errata.listing()) == 8


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


def test_checkers_catch_attention_scaled_by_sqrt_dhead(tiny64):
    ids = np.arange(10) % 61
    scaled = tiny64.forward(ids, edits={f"blocks.{l}.attn.hook_attn_scores": (lambda s: s / np.sqrt(8))
                                        for l in range(2)})
    assert not relative_check("forward", scaled, tiny64.forward(ids), tolerance("forward_parity", "float64")).passed


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
    assert {"name", "passed", "measured", "reference", "tolerance", "seed"} <= set(report["checks"][0])


def test_torch_backend_checks(organism):
    pytest.importorskip("torch", reason="the torch backend needs torch (pip install -e '.[torch]')")
    from verification.report import torch_checks

    checks = torch_checks(organism, organism.to_ids("<|endoftext|>So, John really is a great friend, isn't"))
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    names = " ".join(c.name for c in checks)
    assert "torch (a)" in names and "MLP" in names and "torch (c)" in names


@given(small_configs())
@settings(max_examples=15)
def test_small_config_strategy_models_are_consistent(config):
    """The exported small-config strategy yields loadable models whose features and forward agree with
    direct formulas (batched vs single, dense W_OV)."""
    import tempfile

    from verification.fixtures import random_tensors, write_checkpoint

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
    from verification.report import block_adjoint_at_width

    assert block_adjoint_at_width(2048, 16, 8192, 4).passed
