"""The verification report's sections: each a list of checks of one area (tolerance policy, theorems, derivatives, blocks, propagation, errata, experiments, the torch backend), every one against an independent route."""

from __future__ import annotations
from typing import Callable
import numpy as np
import refimpl
from refimpl.propagation import jacobians as J
from refimpl.oracle import ops
from verification.references import linearized
from verification.references import theorems
from verification.policy.checks import Check, measurement, relative_check
from verification.references.derivatives import check_adjoint, check_dense, check_jvp
from verification.policy.tolerances import TOLERANCES, tolerance
from refimpl.oracle.tokenizer import uses_gpt2_vocabulary

PAPER_PROMPT = "<|endoftext|>So, John really is a great friend, isn't"
FEMALE_PROMPT = "<|endoftext|>So, Jennifer really is a great friend, isn't"



def default_observable(model):
    """" she" - " he" on a GPT-2 vocabulary; otherwise token 1 - token 2 (any model can be checked)."""
    spec = {" she": 1, " he": -1} if uses_gpt2_vocabulary(model) else {1: 1, 2: -1}
    return refimpl.observable(model, spec)



def tolerance_policy_checks() -> list[Check]:
    """The policy: every entry has a reason, and every float64 tolerance rejects a 1e-3 relative error
    when used through relative_check (both fail if the table is edited carelessly)."""
    missing = [f"{k}" for k, t in TOLERANCES.items() if not t.reason.strip()]
    x = np.random.default_rng(0).normal(size=100)
    float64 = [k for k in TOLERANCES if k[1] == "float64"]
    accepted = [f"{k[0]}" for k in float64 if relative_check("", x * (1 + 1e-3), x, TOLERANCES[k].value).passed]
    return [Check("tolerance policy: every entry has a reason", not missing, len(missing), 0, 0,
                  detail=f"entries without a reason: {missing}", group="policy"),
            Check(f"tolerance policy: all {len(float64)} float64 tolerances reject a 1e-3 relative error",
                  not accepted, len(accepted), 0, 0, detail=f"accepting 1e-3: {accepted}", group="policy")]


def theorem1_checks(profile: dict, seed: int = 0) -> list[Check]:
    checks = []
    se_tol = tolerance("monte_carlo", "standard_errors")
    for d in profile["dims"]:
        mean, se = theorems.theorem1_monte_carlo(d, profile["theorem1_samples"], seed + d)
        bound = theorems.theorem1_bound(d)
        checks.append(Check(f"theorem 1: E[theta] < 2 arccos(sqrt(1 - 1/(d-1))), d = {d}", mean + se_tol * se < bound,
                            mean, bound, f"mean + {se_tol:g} SE < bound", seed + d,
                            f"mean angle {mean:.4f} rad +- {se:.1e} (SE) vs bound {bound:.4f}", "theorem 1"))
    rng = np.random.default_rng(seed)
    for d in (8, 64, 2048):
        x, n = rng.normal(size=d), rng.normal(size=d)
        checks.append(relative_check(f"theorem 1: closed-form gradient vs hand-written Jacobian, d = {d}",
                                     J.ideal_layer_norm_vjp(x, n), theorems.theorem1_closed_form_gradient(x, n),
                                     tolerance("identity", "float64"), seed=seed, group="theorem 1"))
    checks.append(relative_check("theorem 1: constant c recomputed by root finding", theorems.theorem1_constant(),
                                 0.15542113167741777, tolerance("identity", "float64"),
                                 detail="mpmath reference 0.15542113167741777; paper prints 0.155241 (erratum 8)",
                                 group="theorem 1"))
    return checks


def theorem1_model_measurements(model, ids) -> list[Check]:
    """The angle between n and grad n.LN(x) on the model's own ln_1 inputs, per layer: measurements (the
    bound was derived for Gaussian x and n, which the model's activations are not)."""
    obs = default_observable(model)
    rows = theorems.layer_norm_turning(model, ids, obs)
    out = []
    for r in rows:
        finding = " (exceeds the Gaussian-case bound)" if r["angle_with_gain"] > r["bound"] else ""
        out.append(measurement(f"theorem 1 on the model: angle(n, grad n.LN(x)), ln_1 of layer {r['layer']}{finding}",
                               r["angle_with_gain"], r["bound"],
                               detail=f"with the model's gains {r['angle_with_gain']:.4f} rad, idealised LN "
                                      f"{r['angle_ideal']:.4f} rad, Gaussian-case bound {r['bound']:.4f}",
                               group="theorem 1 (model)"))
    return out


def theorem2_checks(profile: dict, seed: int = 0) -> list[Check]:
    checks = []
    se_tol, opt_tol, same = (tolerance("monte_carlo", "standard_errors"), tolerance("optimiser", "float64"),
                             tolerance("identity", "float64"))
    rng = np.random.default_rng(seed)
    y1 = rng.normal(size=16)
    y_orth = rng.normal(size=16)
    y_orth -= (y_orth @ y1) / (y1 @ y1) * y1
    cases = [("generic", rng.normal(size=16), 1.3), ("k = 0", rng.normal(size=16), 0.0),
             ("y1.y2 = 0", y_orth, 1.3), ("y1.y2 = 0 and k = 0", y_orth, 0.0)]
    s = 2.0
    for label, y2, k in cases:
        mean, se = theorems.theorem2_monte_carlo(y1, y2, s, k, profile["theorem2_samples"], seed)
        expected = refimpl.theorem2_expectation(y1, y2, k)
        checks.append(Check(f"theorem 2: E[x.y2] = k y1.y2/|y1|^2 ({label})", abs(mean - expected) <= se_tol * se,
                            mean, expected, f"{se_tol:g} SE = {se_tol * se:.2e}", seed, group="theorem 2"))
        lo, hi = refimpl.theorem2_bounds(y1, y2, s, k)
        num_lo, num_hi = theorems.theorem2_numerical_extremes(y1, y2, s, k, seed)
        checks.append(relative_check(f"theorem 2: max/min formula vs scipy SLSQP ({label})", [num_lo, num_hi],
                                     [lo, hi], opt_tol, seed=seed, group="theorem 2"))
        x_min, x_max = theorems.theorem2_explicit_extremes(y1, y2, s, k)
        checks.append(relative_check(f"theorem 2: max/min formula vs the explicit extremisers ({label})",
                                     [x_min @ y2, x_max @ y2], [lo, hi], same, seed=seed, group="theorem 2"))
    y, v = rng.normal(size=20), rng.normal(size=20)
    got, expected = theorems.lemma1_cosine(y, v)
    checks.append(relative_check("lemma 1: cos(y, Ay) = sqrt(1 - cos(y, v)^2)", got, expected, same, seed=seed,
                                 group="theorem 2"))
    mean, se, expected = theorems.lemma2_monte_carlo(rng.normal(size=9), rng.normal(size=9), 1.7,
                                                     profile["theorem2_samples"], seed)
    checks.append(Check("lemma 2: E|y - s|^2 = |y - c|^2 + r^2 on a sphere", abs(mean - expected) <= se_tol * se,
                        mean, expected, f"{se_tol:g} SE", seed, group="theorem 2"))
    mean, se, expected = theorems.fact_monte_carlo(rng.normal(size=12), profile["theorem2_samples"], seed)
    checks.append(Check("fact (5.1): E[(x.y)^2] = |y|^2 for x ~ N(0, I)", abs(mean - expected) <= se_tol * se,
                        mean, expected, f"{se_tol:g} SE", seed, group="theorem 2"))
    return checks


def derivative_checks(seed: int = 0) -> list[Check]:
    """Every hand-written Jacobian three ways: central differences and complex steps at small d, the
    adjoint identity at the GPT-Neo-1.3B width (d = 2048, d_mlp = 8192)."""
    rng = np.random.default_rng(seed)
    central, complex_tol, same = (tolerance(c, "float64") for c in ("central_difference", "complex_step", "identity"))
    eps = 1e-5
    checks = []

    def three_ways(name: str, f: Callable, dense: Callable, jvp_at: Callable, vjp_at: Callable, small: int, big: int,
                   make_x: Callable):
        x = make_x(small)
        checks.append(check_dense(name, f(small), dense(small, x), x, central, "central", seed))
        checks.append(check_dense(name, f(small), dense(small, x), x, complex_tol, "complex", seed))
        checks.append(check_jvp(name, f(small), lambda u: jvp_at(small, x, u), x, rng.normal(size=x.shape),
                                complex_tol, seed))
        xb = make_x(big)
        checks.append(check_adjoint(f"{name} (d = {big})", lambda u: jvp_at(big, xb, u), lambda g: vjp_at(big, xb, g),
                                    rng.normal(size=xb.shape), rng.normal(size=xb.shape), same, seed))

    gains = {d: 1 + 0.3 * rng.normal(size=d) for d in (9, 2048)}
    biases = {d: 0.1 * rng.normal(size=d) for d in (9, 2048)}
    three_ways("GPT-Neo LayerNorm", lambda d: (lambda x: ops.layer_norm(x, gains[d], biases[d], eps)[0]),
               lambda d, x: J.layer_norm_jacobian(x, gains[d], eps),
               lambda d, x, u: J.layer_norm_jvp(x, gains[d], eps, u), lambda d, x, g: J.layer_norm_vjp(x, gains[d], eps, g),
               9, 2048, lambda d: 2 * rng.normal(size=d) + 0.5)
    three_ways("idealised LayerNorm Px/|Px|", lambda d: J.ideal_layer_norm, lambda d, x: J.ideal_layer_norm_jacobian(x),
               lambda d, x, u: J.ideal_layer_norm_jvp(x, u), lambda d, x, g: J.ideal_layer_norm_vjp(x, g),
               9, 2048, lambda d: rng.normal(size=d))
    mlp_w = {}
    for d, m in ((6, 10), (2048, 8192)):
        mlp_w[d] = (rng.normal(size=(d, m)) / np.sqrt(d), rng.normal(size=m), rng.normal(size=(m, d)) / np.sqrt(m),
                    rng.normal(size=d))
    three_ways("MLP", lambda d: (lambda x: J.mlp(x, *mlp_w[d])), lambda d, x: J.mlp_jacobian(x, *mlp_w[d][:3]),
               lambda d, x, u: J.mlp_jvp(x, *mlp_w[d][:3], u), lambda d, x, g: J.mlp_vjp(x, *mlp_w[d][:3], g),
               6, 2048, lambda d: rng.normal(size=d))
    x = np.linspace(-6, 6, 41)
    checks.append(relative_check("gelu_new': hand-written vs complex step", J.gelu_new_derivative(x),
                                 ops.gelu_new(x + 1e-30j).imag / 1e-30, complex_tol, seed=seed, group="derivatives"))
    checks.append(relative_check("gelu_new': hand-written vs central differences", J.gelu_new_derivative(x),
                                 (ops.gelu_new(x + 1e-6) - ops.gelu_new(x - 1e-6)) / 2e-6, central, seed=seed,
                                 group="derivatives"))
    return checks


def block_checks(model, ids, seed: int = 0) -> list[Check]:
    """A whole block of ``model`` (float64) with its attention patterns frozen, three ways."""
    rng = np.random.default_rng(seed)
    layer = model.config.n_layers - 1
    names = [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_pattern"]
    _, trace = model.run_with_trace(np.atleast_2d(ids)[:1], names=names)
    X, A = np.array(trace[names[0]][0]), np.array(trace[names[1]][0])
    U, G = rng.normal(size=X.shape), rng.normal(size=X.shape)
    name = f"block {layer} of the model, attention frozen"
    checks = [check_jvp(name, lambda x: J.block_frozen_attention(model, layer, x, A),
                        lambda u: J.block_frozen_attention_jvp(model, layer, X, A, u), X, U,
                        tolerance("complex_step", "float64"), seed),
              check_adjoint(name, lambda u: J.block_frozen_attention_jvp(model, layer, X, A, u),
                            lambda g: J.block_frozen_attention_vjp(model, layer, X, A, g), U, G,
                            tolerance("identity", "float64"), seed)]
    small = X[:3]
    dense = np.stack([J.block_frozen_attention_jvp(model, layer, small, A[:, :3, :3], e.reshape(small.shape)).ravel()
                      for e in np.eye(small.size)], axis=1)
    checks.append(check_dense(name + " (first 3 positions)",
                              lambda x: J.block_frozen_attention(model, layer, x.reshape(small.shape), A[:, :3, :3]).ravel(),
                              dense, small.ravel(), tolerance("central_difference", "float64"), "central", seed))
    checks.append(block_adjoint_at_width(2048, 16, 8192, 5, seed))
    checks += block_vs_model_checks(model, ids, seed)
    return checks


def block_vs_model_checks(model, ids, seed: int = 0) -> list[Check]:
    """block_frozen_attention against the model's own block (run_with_trace with the block's
    attn.hook_pattern frozen by an edit), at the clean block input and at a perturbed one (an edit of
    hook_resid_pre): the two outputs hook_resid_post agree to rounding."""
    rng = np.random.default_rng(seed)
    checks = []
    for layer in sorted({0, model.config.n_layers - 1}):
        X = model.run_with_trace(np.atleast_2d(ids)[:1], names=[f"blocks.{layer}.hook_resid_pre"])[1][
            f"blocks.{layer}.hook_resid_pre"][0]
        for label, delta in (("clean input", None), ("perturbed input", 0.5 * np.std(X) * rng.normal(size=X.shape))):
            got, expected = linearized.block_vs_model(model, ids, layer, delta)
            checks.append(relative_check(f"block_frozen_attention vs the model's block {layer} ({label}, pattern "
                                         "frozen by an edit)", got, expected, tolerance("identity", "float64"),
                                         seed=seed, group="derivatives"))
    return checks


def block_adjoint_at_width(d: int, n_heads: int, d_mlp: int, n_tokens: int, seed: int = 0) -> Check:
    """The frozen-attention block's adjoint identity at a real width (GPT-Neo-1.3B: 2048, 16 heads, 8192),
    on random weights held by a minimal stand-in for a model."""
    from types import SimpleNamespace

    from refimpl.families import GELU_NEW

    rng = np.random.default_rng(seed)
    dh = d // n_heads
    weights = {"blocks.0.ln1.w": 1 + 0.2 * rng.normal(size=d), "blocks.0.ln1.b": 0.1 * rng.normal(size=d),
               "blocks.0.attn.W_V": rng.normal(size=(n_heads, d, dh)) / np.sqrt(d),
               "blocks.0.attn.W_O": rng.normal(size=(n_heads, dh, d)) / np.sqrt(dh),
               "blocks.0.attn.b_O": 0.1 * rng.normal(size=d), "blocks.0.attn.b_V": 0.1 * rng.normal(size=(n_heads, dh)),
               "blocks.0.ln2.w": 1 + 0.2 * rng.normal(size=d), "blocks.0.ln2.b": 0.1 * rng.normal(size=d),
               "blocks.0.mlp.W_in": rng.normal(size=(d, d_mlp)) / np.sqrt(d), "blocks.0.mlp.b_in": rng.normal(size=d_mlp),
               "blocks.0.mlp.W_out": rng.normal(size=(d_mlp, d)) / np.sqrt(d_mlp), "blocks.0.mlp.b_out": rng.normal(size=d)}
    model = SimpleNamespace(weights=weights, config=SimpleNamespace(eps=1e-5), activation=GELU_NEW)
    A = np.tril(rng.random((n_heads, n_tokens, n_tokens)))
    A /= A.sum(-1, keepdims=True)
    X, U, G = (rng.normal(size=(n_tokens, d)) for _ in range(3))
    return check_adjoint(f"block with attention frozen (d = {d}, {n_heads} heads, d_mlp = {d_mlp})",
                         lambda u: J.block_frozen_attention_jvp(model, 0, X, A, u),
                         lambda g: J.block_frozen_attention_vjp(model, 0, X, A, g), U, G,
                         tolerance("identity", "float64"), seed)


