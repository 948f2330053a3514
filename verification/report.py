"""The verification report: every check of the suite, run in order, as a list of Check records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

import refimpl
from refimpl import jacobians as J
from refimpl import ops

from . import errata, linearized, raw_heads, theorems
from .checks import Check, measurement, relative_check, skipped
from .derivatives import check_adjoint, check_dense, check_jvp
from .tolerances import TOLERANCES, tolerance

PROFILES = {  # Monte Carlo sample sizes and property-test effort per profile
    "default": {"theorem1_samples": 20000, "theorem2_samples": 40000, "dims": (8, 16, 64, 768, 2048)},
    "long": {"theorem1_samples": 400000, "theorem2_samples": 1000000, "dims": (8, 16, 64, 768, 2048)},
}
PAPER_PROMPT = "<|endoftext|>So, John really is a great friend, isn't"
FEMALE_PROMPT = "<|endoftext|>So, Jennifer really is a great friend, isn't"
GPT2_VOCAB = 50257  # the observables " she" - " he" and the paper's prompts need the GPT-2 vocabulary


def has_gpt2_vocab(model) -> bool:
    return model.config.d_vocab == GPT2_VOCAB


def default_observable(model):
    """" she" - " he" on a GPT-2 vocabulary; otherwise token 1 - token 2 (any model can be checked)."""
    spec = {" she": 1, " he": -1} if has_gpt2_vocab(model) else {1: 1, 2: -1}
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


def propagation_checks(model, ids) -> list[Check]:
    """Observable propagation against references that share no code with it: dense W_OV from the raw
    checkpoint tensors, the model run along a path (verification.linearized), brute-force virtual heads,
    and the observable's sign on prompts with a known answer."""
    same, frozen = tolerance("identity", "float64"), tolerance("frozen_path", "float64")
    obs = default_observable(model)
    cfg = model.config
    L, H, d, dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_model // cfg.n_heads
    raw = errata.raw_tensors(model)
    u = raw_heads.unembedding(raw).T @ obs.vocab.astype(np.float64)
    M = np.empty((L, H, d, d))  # column-convention OV: head output = M x
    for l in range(L):
        for h in range(H):
            M[l, h] = raw_heads.dense_ov(raw, l, h, dh)
    dense = np.einsum("lhij,i->lhj", M, u)  # M^T u
    checks = [relative_check("propagation: head_features vs dense W_OV^T W_U^T n from raw checkpoint tensors",
                             refimpl.head_features(model, obs), dense, same, group="propagation")]
    # virtual heads: the scan vs brute force with the dense matrices (ignore and estimate)
    ids2 = np.atleast_2d(ids)
    final = f"blocks.{L - 1}.hook_resid_post"
    _, trace = model.run_with_trace(ids2, names=[final] + [f"blocks.{l}.hook_resid_pre" for l in range(L)])
    n_f = float(np.linalg.norm(trace[final][:, -1], axis=-1).mean())
    n_1 = [float(np.linalg.norm(trace[f"blocks.{l}.hook_resid_pre"][:, -1], axis=-1).mean()) for l in range(L)]
    g1 = [np.sqrt(d) * raw[f"transformer.h.{l}.ln_1.weight"] for l in range(L)]
    for mode in ("ignore", "estimate"):
        top = u if mode == "ignore" else np.sqrt(d) * raw["transformer.ln_f.weight"] * u / n_f
        brute = np.full((L, H, L, H), np.nan)
        for l2 in range(L):
            for h2 in range(H):
                y2 = M[l2, h2].T @ top if mode == "ignore" else g1[l2] * (M[l2, h2].T @ top) / n_1[l2]
                for l1 in range(l2):
                    y = np.einsum("hij,i->hj", M[l1], y2)
                    brute[l1, :, l2, h2] = np.linalg.norm(y if mode == "ignore" else g1[l1] * y, axis=-1)
        got = refimpl.virtual_head_norms(model, obs, mode, norms=refimpl.ln_input_norms(model, ids2))
        finite = np.isfinite(brute)
        same_nans = bool(np.array_equal(finite, np.isfinite(got)))
        checks.append(relative_check(f"propagation: virtual_head_norms ({mode}) vs brute force over all "
                                     f"{int(finite.sum())} pairs (raw tensors)",
                                     got[finite] if same_nans else np.full(1, np.inf),
                                     brute[finite] if same_nans else np.ones(1), same, group="propagation"))
    # paths against the model run along them (complex step; nothing of refimpl.propagation)
    pair = np.stack([ids2[0], ids2[0][::-1]])
    mlp_layer = max(L - 2, 0)
    name = f"blocks.{mlp_layer}.ln2.hook_normalized"
    _, t2 = model.run_with_trace(pair, names=[name])
    mlp_points = {mlp_layer: (np.array(t2[name][0, -1]), np.array(t2[name][1, -1]))}
    one = min(1, H - 1)
    long_path = [f"0.{one}", f"MLP{mlp_layer}", f"{L - 1}.{one}"]
    rule = f"propagation: estimate rule (only the earliest node skips 1/|x~|), {' -> '.join(long_path)} vs the model run"
    for path, mode, label in (([f"{L - 1}.{H - 1}"], "exact", None), (["0.0", f"{L - 1}.0"], "exact", None),
                              (long_path, "exact", None), ([f"MLP{mlp_layer}"], "estimate", None),
                              (long_path, "estimate", rule)):
        checks.append(linearized.frozen_path_check(model, obs, path, ids2[:1], mode, frozen, mlp_points, "mean",
                                                   name=label))
    # the observable's sign on prompts with a known answer
    if has_gpt2_vocab(model):
        for prompt, sign, who in ((FEMALE_PROMPT, 1, "female"), (PAPER_PROMPT, -1, "male")):
            value = float(model.forward(model.to_ids(prompt))[-1] @ obs.vocab)
            checks.append(Check(f"propagation: n.logits, n = ' she' - ' he', is {'positive' if sign > 0 else 'negative'} "
                                f"after a {who} name", value * sign > 0, value, 0.0, "> 0" if sign > 0 else "< 0",
                                detail=prompt, group="propagation"))
    else:
        checks.append(skipped("propagation: sign of ' she' - ' he' after a female / male name",
                              f"needs the GPT-2 vocabulary ({GPT2_VOCAB} tokens); this model has {cfg.d_vocab}",
                              "propagation"))
    return checks


def errata_checks(model, ids, seed: int = 0) -> list[Check]:
    """The errata in numeric order (1-8); model-level ones that need the GPT-2 vocabulary are listed as skipped."""
    same = tolerance("identity", "float64")
    checks = [errata.coupling_definition(same, seed)]
    checks += errata.printed_couplings(tolerance("printed_digits", "paper"))
    checks += [errata.layer_norm_norm_factor(same, seed),
               errata.theorem2_degenerate(tolerance("monte_carlo", "standard_errors"), seed),
               errata.variance_vs_mean_abs(model, ids)]
    if has_gpt2_vocab(model):
        checks.append(errata.patching_sign(model, same))
    else:
        checks.append(skipped("erratum 6: path patching sign (clean - patched)",
                              f"needs the paper's prompts in the GPT-2 vocabulary; this model has {model.config.d_vocab} "
                              "tokens", "errata"))
    checks.append(errata.swapped_layer_norms(model, default_observable(model), ids, same))
    checks.append(errata.theorem1_constant_check(same))
    return checks


def experiment_checks(model) -> list[Check]:
    """refimpl.experiments (preset signs, Table 1, path patching, steering, DLA, Table 4) against the
    independent references of ``verification.experiment_references``."""
    from . import experiment_references

    return experiment_references.checks(model)


def torch_checks(model, ids) -> list[Check]:
    try:
        import torch  # noqa: F401  (availability check)
        import transformers  # noqa: F401  (availability check)
    except ImportError as exc:
        return [skipped("torch backend", f"torch/transformers not installed: {exc}", "torch")]
    from . import torch_backend
    from .torch_peer import load_peer

    checks = torch_backend.forward_checks(model, ids, tolerance("forward_parity", "float64"))
    obs = default_observable(model)
    L, H = model.config.n_layers, model.config.n_heads
    tol = tolerance("path_autograd", "float64")
    peer = load_peer(model.path, "float64")
    pair = np.stack([np.asarray(ids), np.asarray(ids)[::-1]])
    one = min(1, H - 1)
    for path in ([f"{L - 1}.{H - 1}"], ["0.0", f"{L - 1}.0"], [f"0.{one}", f"MLP{max(L - 2, 0)}", f"{L - 1}.{one}"]):
        checks.append(torch_backend.path_check(model, obs, path, ids, tol, pair, "mean", peer=peer))
    for row in torch_backend.full_gradient_capture(model, obs, ids):
        checks.append(measurement(f"torch (c): OV-only share of the full gradient, head {row['label']}",
                                  row["captured_share"], 1.0,
                                  detail=f"at token {row['position']} (attention {row['attention']:.3f}): cosine "
                                         f"{row['cosine']:.4f}, |full| {row['full_norm']:.3e}, |OV| {row['ov_norm']:.3e}",
                                  group="torch (c)", extra=row))
    return checks


def run(model_source=None, profile: str = "default", include_torch: bool = True, seed: int = 0,
        progress=None) -> list[Check]:
    """Every entry of the report, in order. ``progress(message)`` is called before each section."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    say = progress or (lambda message: None)
    settings = PROFILES[profile]
    model = refimpl.load(model_source, dtype="float64")
    ids = model.to_ids(PAPER_PROMPT) if has_gpt2_vocab(model) else np.arange(8) % model.config.d_vocab
    sections = [("tolerance policy", tolerance_policy_checks), ("theorem 1", lambda: theorem1_checks(settings, seed)),
                ("theorem 1 on the model", lambda: theorem1_model_measurements(model, ids)),
                ("theorem 2", lambda: theorem2_checks(settings, seed)), ("derivatives", lambda: derivative_checks(seed)),
                ("blocks", lambda: block_checks(model, ids, seed)),
                ("propagation", lambda: propagation_checks(model, ids)),
                ("errata", lambda: errata_checks(model, ids, seed)), ("experiments", lambda: experiment_checks(model))]
    if include_torch:
        sections.append(("torch backend", lambda: torch_checks(model, ids)))
    checks: list[Check] = []
    for name, section in sections:
        say(name)
        checks += section()
    if not include_torch:
        checks.append(skipped("torch backend", "not run (--no-torch)", "torch"))
    return checks


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_table(checks: list[Check]) -> str:
    """One line per entry, every column as wide as its widest cell (nothing is cut); the result column says
    PASS / FAIL for checks, "measurement" or "skipped" otherwise; failures and skips show their detail."""
    rows = [(c.name, _cell(c.measured), _cell(c.reference), _cell(c.tolerance), "" if c.seed is None else str(c.seed),
             ("PASS" if c.passed else "FAIL") if c.kind == "check" else c.kind) for c in checks]
    header = ("check", "measured", "reference", "tolerance", "seed", "result")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(6)]

    def line(r):
        return (f"{r[0]:{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  "
                f"{r[4]:>{widths[4]}}  {r[5]}")

    lines = [line(header)]
    for c, r in zip(checks, rows):
        lines.append(line(r))
        if (c.failed or c.kind == "skipped") and c.detail:
            lines += ["      " + text for text in c.detail.splitlines()]
    return "\n".join(lines)


def counts(checks: list[Check]) -> dict:
    """Numbers of passed and failed checks, measurements and skipped entries."""
    return {"checks_passed": int(sum(bool(c.kind == "check" and c.passed) for c in checks)),
            "checks_failed": int(sum(bool(c.failed) for c in checks)),
            "measurements": int(sum(c.kind == "measurement" for c in checks)),
            "skipped": int(sum(c.kind == "skipped" for c in checks))}


def format_summary(checks: list[Check]) -> str:
    """'N checks passed, M failed; K measurements; S skipped (reasons)'."""
    n = counts(checks)
    reasons = "; ".join(f"{c.name}: {c.detail}" for c in checks if c.kind == "skipped")
    return (f"{n['checks_passed']} checks passed, {n['checks_failed']} failed; {n['measurements']} measurements; "
            f"{n['skipped']} skipped" + (f" ({reasons})" if reasons else ""))


def write_json(checks: list[Check], path: str | Path, **meta) -> None:
    Path(path).write_text(json.dumps({**meta, "checks": [c.as_dict() for c in checks], **counts(checks),
                                      "summary": format_summary(checks),
                                      "passed": not any(c.failed for c in checks)}, indent=1) + "\n")
