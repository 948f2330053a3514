"""Data-dependent experiments of the paper's case study (Sections 6-7, Appendix A), on any model.

Prompts are batches of token ids of one length ``[batch, seq]``; observables come from
``refimpl.observable``. Every function returns plain arrays or ``Table`` records.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from . import jacobians, ops
from .errors import InputError
from .observables import Observable
from .propagation import final_ln_boundary, head_features
from .records import Table, head_label


def _batch(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise InputError(f"prompts must be token ids shaped [batch, seq] (one length), got shape {ids.shape}")
    return ids


# ------------------------------------------------------------------ one clean run per prompt set
CLEAN_RUNS = 4  # clean runs kept (the most recent prompt sets)
_clean_runs: list[tuple[object, np.ndarray, object]] = []  # (model, last-position logits, trace)


def clean_names(model) -> list[str]:
    """What a clean run records: every LayerNorm's input (block inputs, resid_mid, the final residual), where
    head outputs re-enter, the attention input, values, z and pattern, and the ln_final scale (enough for
    norms, DLA, patching, fits, LayerNorm studies, resuming); the model's structure names them."""
    s, L = model.structure, model.config.n_layers
    names = list(s.ln_inputs(L).values())
    for l in range(L):
        names += [s.head_reentry(l), s.sublayer_input("attn", l)] + [f"blocks.{l}.attn.{n}" for n in
                                                                     ("hook_v", "hook_z", "hook_pattern")]
    return sorted(set(names) | {"ln_final.hook_scale"}, key=model.activation_names().index)


def clean_run(model, ids):
    """(last-position logits [batch, vocab], trace of ``clean_names``) of ``ids`` [batch, seq], computed once
    and shared by every experiment on the same prompts (the ``CLEAN_RUNS`` most recent prompt sets are
    kept; ``clear_clean_runs()`` drops them). Trace arrays are read-only, so sharing them is safe."""
    ids, _ = model.check_ids(_batch(ids))
    for index, (owner, logits, trace) in enumerate(_clean_runs):
        if owner is model and trace.ids.shape == ids.shape and np.array_equal(trace.ids, ids):
            _clean_runs.insert(0, _clean_runs.pop(index))  # most recently used first
            return logits, trace
    logits, trace = model.run_with_trace(ids, names=clean_names(model), logits_at=-1)
    logits.flags.writeable = False
    _clean_runs.insert(0, (model, logits, trace))
    del _clean_runs[CLEAN_RUNS:]
    return logits, trace


def clear_clean_runs() -> None:
    """Forget the shared clean runs (frees their memory)."""
    _clean_runs.clear()


def observable_values(model, ids, observable: Observable, position: int = -1) -> np.ndarray:
    """n . logits at ``position`` for every prompt.  [batch]"""
    if position == -1:
        return clean_run(model, ids)[0] @ observable.vocab
    return model.forward(_batch(ids), logits_at=position) @ observable.vocab


# ------------------------------------------------------------------ direct logit attribution
def direct_logit_attribution(model, ids, observable: Observable) -> tuple[np.ndarray, np.ndarray]:
    """Each head's direct contribution to n . logits at the last position, with ln_final's scale frozen
    at its value in the run: per head [L, H] and per head and source position [L, H, T], both averaged
    over prompts (the per-position terms sum to the per-head value)."""
    ids = _batch(ids)
    cfg = model.config
    _, trace = clean_run(model, ids)
    scale = trace["ln_final.hook_scale"][:, -1]  # [B, 1]
    g = model.weights["ln_final.w"] * observable.residual  # [d]
    per_position = np.zeros((cfg.n_layers, cfg.n_heads, ids.shape[1]))
    for l in range(cfg.n_layers):
        W_O = model.weights[f"blocks.{l}.attn.W_O"]  # [H, dh, d]
        # value vectors' direct effect: (v_s W_O[h]) projected, centred and scaled by the last token's ln_final
        centred_g = g - g.mean()
        effect = np.einsum("bshk,hk->bhs", trace[f"blocks.{l}.attn.hook_v"], W_O @ centred_g)  # [B, H, T]
        pattern = trace[f"blocks.{l}.attn.hook_pattern"][:, :, -1, :]  # [B, H, T]
        per_position[l] = (pattern * effect / scale[:, :, None]).mean(axis=0)
    return per_position.sum(axis=-1), per_position


# ------------------------------------------------------------------ path patching (authors' method)
def path_patch_heads(model, clean_ids, corrupt_ids, observable: Observable) -> np.ndarray:
    """Per head [L, H]: mean over prompt pairs of n . logits_clean[-1] - n . logits_patched[-1], where the
    patched run adds (head output on the corrupted prompt - on the clean prompt) to the ln_final input at
    every position and re-applies ln_final (a direct-path effect; one clean run of both prompt sets)."""
    clean_ids, corrupt_ids = _batch(clean_ids), _batch(corrupt_ids)
    if clean_ids.shape != corrupt_ids.shape:
        raise InputError(f"clean and corrupted prompts must pair up: shapes {clean_ids.shape} and {corrupt_ids.shape}")
    cfg = model.config
    B = clean_ids.shape[0]
    logits, trace = clean_run(model, np.concatenate([clean_ids, corrupt_ids]))
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    W = model.weights
    base = trace[last][:B, -1]  # [B, d]
    # each head's output at the last token, z[h] @ W_O[h], on the corrupted minus the clean prompts
    diffs = np.stack([np.einsum("bhk,hkd->bhd", trace[f"blocks.{l}.attn.hook_z"][B:, -1]
                                - trace[f"blocks.{l}.attn.hook_z"][:B, -1], W[f"blocks.{l}.attn.W_O"])
                      for l in range(cfg.n_layers)], axis=1)  # [B, L, H, d]
    patched = base[:, None, None, :] + diffs
    out = ops.layer_norm(patched, W["ln_final.w"], W["ln_final.b"], cfg.eps)[0] @ observable.residual  # [B, L, H]
    clean_score = logits[:B] @ observable.vocab  # [B]
    return (clean_score[:, None, None] - out).mean(axis=0)


# ------------------------------------------------------------------ activation patching (full downstream effect)
def activation_patch_heads(model, clean_ids, corrupt_ids, observable: Observable, per_position: bool = False,
                           chunk: int | None = None) -> np.ndarray:
    """Per head: mean over prompt pairs of n . logits_clean[-1] - n . logits_patched[-1], where the patched
    run replaces that head's output (z[h] @ W_O[h]) by its value on the corrupted prompt, at every position
    ([L, H]) or at one position at a time (``per_position``: [L, H, T]), with the full downstream effect
    (later layers recompute), unlike the authors' direct-path ``path_patch_heads``.

    The patched variants of layer l start from its resid_mid (clean resid_mid + the head's output change)
    and run as batches of up to ``chunk`` variants x prompts (default: what the model's chunk budget
    allows), so each costs (n_layers - l - 1/2) / n_layers of a forward."""
    clean_ids, corrupt_ids = _batch(clean_ids), _batch(corrupt_ids)
    if clean_ids.shape != corrupt_ids.shape:
        raise InputError(f"clean and corrupted prompts must pair up: shapes {clean_ids.shape} and {corrupt_ids.shape}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise InputError(f"chunk must be a whole number >= 1 (variants x prompts per run), got {chunk!r}")
    cfg = model.config
    B, T = clean_ids.shape
    logits, trace = clean_run(model, np.concatenate([clean_ids, corrupt_ids]))
    clean_score = logits[:B] @ observable.vocab  # [B]
    W = model.weights
    positions = list(range(T)) if per_position else [None]
    out = np.zeros((cfg.n_layers, cfg.n_heads, len(positions)))
    for l in range(cfg.n_layers):
        z = trace[f"blocks.{l}.attn.hook_z"]  # [2B, T, H, dh]
        change = np.einsum("bthk,hkd->hbtd", z[B:] - z[:B], W[f"blocks.{l}.attn.W_O"])  # [H, B, T, d]
        reentry = model.structure.head_reentry(l)  # resid_mid in a serial block
        mid = trace[reentry][:B]  # [B, T, d]
        variants = []  # (head, position index, [B, T, d] resid_mid)
        for h in range(cfg.n_heads):
            for i, t in enumerate(positions):
                patched = mid + change[h] if t is None else mid.copy()
                if t is not None:
                    patched[:, t] += change[h, :, t]
                variants.append((h, i, patched))
        per_run = max(1, (chunk or model.chunk_rows(T, logits_at=-1)) // B)
        for start in range(0, len(variants), per_run):
            part = variants[start:start + per_run]
            stacked = np.concatenate([v for _, _, v in part])  # [len(part) * B, T, d]
            scores = model.run_from(reentry, stacked, names=(), logits_at=-1)[0] @ observable.vocab
            for j, (h, i, _) in enumerate(part):
                out[l, h, i] = (clean_score - scores[j * B:(j + 1) * B]).mean()
    return out if per_position else out[..., 0]


# ------------------------------------------------------------------ activation steering
def steer(model, ids, observables: Mapping[str, Observable], name: str, position: int, vector: np.ndarray,
          multipliers: Sequence[float]) -> Table:
    """Add k * vector to activation ``name`` at ``position`` and report, per k, the mean change of each
    observable at the last position over the prompts (paper Table 2 / Table 3)."""
    ids = _batch(ids)
    if name not in model.activation_names():
        raise InputError(f"unknown activation {name!r} to steer")
    vector = np.asarray(vector, dtype=model.dtype)
    if vector.shape != (model.config.d_model,):
        raise InputError(f"steering vector must have shape ({model.config.d_model},), got {vector.shape}")
    if not -ids.shape[1] <= position < ids.shape[1]:
        raise InputError(f"position {position} is outside prompts of {ids.shape[1]} tokens")
    clean, trace = clean_run(model, ids)  # shared; the edited runs resume from the steered layer
    rows = []
    for k in multipliers:
        def edit(x, k=k):
            x[:, position] += (k * vector).astype(x.dtype)
            return x

        logits = model.forward(ids, edits={name: edit}, logits_at=-1, resume=trace)
        row = {"activation": name, "position": position, "multiplier": float(k)}
        for label, obs in observables.items():
            row[f"{label}_effect"] = float(((logits - clean) @ obs.vocab).mean())
        rows.append(row)
    return Table(rows)


def activation_scale(model, ids, layer: int, position: int, vector: np.ndarray) -> float:
    """mean |resid_pre of ``layer`` at ``position``| / |vector|: the multiplier that makes ``vector`` as
    long as the activation it is added to (steering multipliers comparable across models)."""
    name = f"blocks.{layer}.hook_resid_pre"
    _, trace = clean_run(model, ids)
    return float(np.linalg.norm(trace[name][:, position], axis=-1).mean() / np.linalg.norm(vector))


def bias_mitigation_search(model, ids, n_diff: Observable, n_same: Observable, top: int = 4,
                           multipliers: Sequence[float] = (-50.0,), relative: bool = False) -> Table:
    """Section 7: the ``top`` heads with the LOWEST coupling C(n_diff -> n_same) = y_diff . y_same / |y_diff|^2
    (the most negative ones when that many are negative, as Section 7 describes; on a model with fewer
    negative couplings some chosen heads have positive coupling, and the table shows it); steer with
    k * (n_diff feature) at ln_1's input of that head's layer, at the token with the largest direct
    attribution, and report both observables' effects (more negative n_diff and positive n_same is good).

    With ``relative=True`` a multiplier m means k = m * mean |activation| / |feature| (m = -1 adds a vector
    as long as the activation itself), which makes multipliers comparable across models. Rows: head, token,
    coupling, relative_multiplier (m, or None when ``relative`` is False), k, n_diff_effect, n_same_effect."""
    ids = _batch(ids)
    F_diff, F_same = head_features(model, n_diff), head_features(model, n_same)
    from .analysis import coupling

    couplings = coupling(F_diff, F_same)
    _, per_position = direct_logit_attribution(model, ids, n_diff)
    order = np.argsort(couplings, axis=None)[:top]
    rows = []
    for flat in order:
        l, h = np.unravel_index(flat, couplings.shape)
        token = int(np.argmax(np.abs(per_position[l, h])))
        unit = activation_scale(model, ids, l, token, F_diff[l, h]) if relative else 1.0
        ks = [m * unit for m in multipliers]
        table = steer(model, ids, {"n_diff": n_diff, "n_same": n_same}, f"blocks.{l}.hook_resid_pre", token,
                      F_diff[l, h], ks)
        for m, row in zip(multipliers, table):
            rows.append({"head": head_label(l, h), "token": token, "coupling": float(couplings[l, h]),
                         "relative_multiplier": float(m) if relative else None, "k": row["multiplier"],
                         "n_diff_effect": row["n_diff_effect"], "n_same_effect": row["n_same_effect"]})
    return Table(rows)


# ------------------------------------------------------------------ feature scores and best fit (Table 1)
def head_input_scores(model, ids, layer: int, features: Sequence[np.ndarray]) -> np.ndarray:
    """Dot products of every token's ln_1 output in ``layer`` with each feature vector (e.g. one head's
    features for several observables): [n_features, batch * seq]."""
    ids = _batch(ids)
    _, trace = clean_run(model, ids)
    x = trace[model.structure.sublayer_input("attn", layer)].reshape(-1, model.config.d_model)  # [B*T, d]
    return np.stack(features).astype(x.dtype) @ x.T  # [n_features, d] @ [d, B*T]


def best_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line y ~ slope x + intercept and r^2 = 1 - SSR / (N var y)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    ssr = float(((y - (slope * x + intercept)) ** 2).sum())
    return float(slope), float(intercept), 1.0 - ssr / (len(y) * float(y.var()))


def coupling_vs_fit(model, ids, heads: Sequence[tuple[int, int]], n1: Observable, n2: Observable) -> Table:
    """Paper Table 1: coupling C(y1 -> y2), cosine, and the best-fit slope and r^2 of the head inputs'
    n2-scores against their n1-scores."""
    from .analysis import cosine, coupling

    F1, F2 = head_features(model, n1), head_features(model, n2)
    rows = []
    for l, h in heads:
        scores = head_input_scores(model, ids, l, [F1[l, h], F2[l, h]])
        slope, _, r2 = best_fit(scores[0], scores[1])
        rows.append({"head": head_label(l, h), "coupling": float(coupling(F1[l, h], F2[l, h])),
                     "cosine": float(cosine(F1[l, h], F2[l, h])), "best_fit_slope": slope, "r2": r2,
                     "points": int(scores.shape[1])})
    return Table(rows)


# ------------------------------------------------------------------ LayerNorm studies (Appendix A)
def layer_norm_input_norms(model, ids) -> Table:
    """Figure 6: mean |x| of every LayerNorm's input over all tokens of the prompts."""
    from .propagation import ln_input_names

    names = ln_input_names(model)
    _, trace = clean_run(model, ids)
    return Table([{"layernorm": ln, "mean_input_norm": float(np.linalg.norm(trace[act], axis=-1).mean())}
                  for ln, act in names.items()])


def layer_norm_gain_variance(model, ids) -> Table:
    """Figure 7 / A.2: variance of each LayerNorm's gain, and its ratio to the mean |entry| of that
    LayerNorm's inputs (the paper's comparison; note it sets a variance against a mean absolute value)."""
    from .propagation import ln_input_names

    names = ln_input_names(model)
    _, trace = clean_run(model, ids)
    rows = []
    for ln, act in names.items():
        variance = float(np.var(model.weights[ln + ".w"]))
        mean_abs = float(np.abs(trace[act]).mean())
        rows.append({"layernorm": ln, "gain_variance": variance, "mean_abs_input": mean_abs,
                     "ratio": variance / mean_abs})
    return Table(rows)


def ln_final_approximation_error(model, groups: Sequence[tuple[np.ndarray, np.ndarray]], observable: Observable,
                                 fallback: str | None = "mean") -> np.ndarray:
    """Table 4: for each source group (female ids, male ids), linearise u . ln_final at the boundary point
    between the mean last-token ln_final inputs of its male (x-) and female (x+) prompts; entry [i, j] is
    the mean |linear approximation - true n . logits| over group j's prompts."""
    last = f"blocks.{model.config.n_layers - 1}.hook_resid_post"
    inputs = []
    for female, male in groups:  # one clean run per group (female and male prompts share a template)
        female, male = _batch(female), _batch(male)
        if female.shape[1] == male.shape[1]:
            x = clean_run(model, np.concatenate([female, male]))[1][last][:, -1].astype(np.float64)
            inputs.append((x[:len(female)], x[len(female):]))
        else:
            inputs.append(tuple(clean_run(model, ids)[1][last][:, -1].astype(np.float64) for ids in (female, male)))
    W = model.weights
    w, b = W["ln_final.w"].astype(np.float64), W["ln_final.b"].astype(np.float64)
    u = observable.residual.astype(np.float64)
    error = np.zeros((len(groups), len(groups)))
    for i, (xf, xm) in enumerate(inputs):
        boundary = final_ln_boundary(model, observable, xm.mean(0), xf.mean(0), fallback=fallback)
        x0 = boundary.point
        f0 = u @ ops.layer_norm(x0, w, b, model.config.eps)[0]
        grad = jacobians.layer_norm_vjp(x0, w, model.config.eps, u)
        for j, (yf, ym) in enumerate(inputs):
            xs = np.concatenate([yf, ym])
            true = ops.layer_norm(xs, w, b, model.config.eps)[0] @ u
            error[i, j] = float(np.abs(f0 + (xs - x0) @ grad - true).mean())
    return error


# ------------------------------------------------------------------ the MLP along a segment (Figure 4)
def mlp_segment(model, layer: int, y: np.ndarray, x_neg: np.ndarray, x_pos: np.ndarray, points: int = 41,
                fallback: str | None = "mean") -> Table:
    """y . MLP((1 - t) x_neg + t x_pos) for t in [0, 1], next to its linear approximation at the boundary
    point and at the two ends (Figure 4)."""
    from .propagation import mlp_boundary

    W, p = model.weights, f"blocks.{layer}.mlp."
    args = tuple(W[p + k].astype(np.float64) for k in ("W_in", "b_in", "W_out", "b_out"))
    act = model.activation
    y = np.asarray(y, np.float64)
    x_neg, x_pos = np.asarray(x_neg, np.float64), np.asarray(x_pos, np.float64)
    boundary = mlp_boundary(model, layer, y, x_neg, x_pos, fallback)

    def linear_at(x0):
        return y @ jacobians.mlp(x0, *args, act), jacobians.mlp_vjp(x0, *args[:3], y, act)

    anchors = {"boundary": linear_at(boundary.point), "x_neg": linear_at(x_neg), "x_pos": linear_at(x_pos)}
    # boundary.target is 0 on a real decision boundary, the mean end value when the fallback was used
    origins = {"boundary": boundary.point, "x_neg": x_neg, "x_pos": x_pos}
    rows = []
    grid = np.linspace(0.0, 1.0, points)
    at = int(np.searchsorted(grid, boundary.t))
    ts = np.insert(grid, at, boundary.t)  # the grid plus one row at the boundary point
    for index, t in enumerate(ts):
        x = boundary.point if index == at else (1 - t) * x_neg + t * x_pos
        row = {"t": float(t), "is_boundary": index == at, "actual": float(y @ jacobians.mlp(x, *args, act)),
               "boundary_t": boundary.t, "boundary_target": boundary.target}
        for key, (value, grad) in anchors.items():
            row[f"linear_at_{key}"] = float(value + (x - origins[key]) @ grad)
        rows.append(row)
    return Table(rows)
