"""The report's sections that read a model: propagation against dense W_OV from the raw tensors and the model run along paths, the errata, the experiments' independent routes, and the torch backend."""

from __future__ import annotations
import numpy as np
import refimpl
from verification.references import errata
from verification.references import linearized
from verification.references import raw_heads
from verification.policy.checks import Check, measurement, relative_check, skipped
from verification.policy.tolerances import tolerance
from refimpl.oracle.tokenizer import uses_gpt2_vocabulary
from verification.sections import FEMALE_PROMPT, PAPER_PROMPT, default_observable


def propagation_checks(model, ids) -> list[Check]:
    """Observable propagation against references that share no code with it: dense W_OV from the raw
    checkpoint tensors, the model run along a path (verification.references.linearized), brute-force virtual heads,
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
    # paths against the model run along them (complex step; nothing of refimpl.propagation.propagate)
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
    if uses_gpt2_vocabulary(model):
        for prompt, sign, who in ((FEMALE_PROMPT, 1, "female"), (PAPER_PROMPT, -1, "male")):
            value = float(model.forward(model.to_ids(prompt))[-1] @ obs.vocab)
            checks.append(Check(f"propagation: n.logits, n = ' she' - ' he', is {'positive' if sign > 0 else 'negative'} "
                                f"after a {who} name", value * sign > 0, value, 0.0, "> 0" if sign > 0 else "< 0",
                                detail=prompt, group="propagation"))
    else:
        checks.append(skipped("propagation: sign of ' she' - ' he' after a female / male name",
                              f"needs the GPT-2 vocabulary and tokenizer; this model has {cfg.d_vocab}",
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
    if uses_gpt2_vocabulary(model):
        checks.append(errata.patching_sign(model, same))
    else:
        checks.append(skipped("erratum 6: path patching sign (clean - patched)",
                              f"needs the paper's prompts in the GPT-2 vocabulary; this model has {model.config.d_vocab} "
                              "tokens", "errata"))
    checks.append(errata.swapped_layer_norms(model, default_observable(model), ids, same))
    checks.append(errata.theorem1_constant_check(same))
    return checks


def experiment_checks(model) -> list[Check]:
    """refimpl.case_study.experiments (preset signs, Table 1, path patching, steering, DLA, Table 4) against the
    independent references of ``verification.references.experiment_references``."""
    from verification.references import experiment_references

    return experiment_references.checks(model)


def torch_checks(model, ids) -> list[Check]:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return [skipped("torch backend", f"torch/transformers not installed: {exc}", "torch")]
    from verification.peers import torch_backend
    from verification.peers.torch_peer import load_peer

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
