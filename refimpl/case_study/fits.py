"""Fits and LayerNorm studies: head-input feature scores and their best-fit line against coupling (Table 1), the LayerNorm input norms and gain variances (Figures 6-7), ln_final's linearisation error (Table 4) and the MLP along a segment (Figure 4)."""

from __future__ import annotations
from typing import Sequence
import numpy as np
from refimpl.propagation import jacobians
from refimpl.oracle import ops
from refimpl.propagation.observables import Observable
from refimpl.propagation.boundaries import final_ln_boundary
from refimpl.propagation.propagate import head_features
from refimpl.records import Table, head_label
from refimpl.case_study.experiments import _batch, clean_run


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
    from refimpl.propagation.analysis import cosine, coupling

    F1, F2 = head_features(model, n1), head_features(model, n2)
    rows = []
    for l, h in heads:
        scores = head_input_scores(model, ids, l, [F1[l, h], F2[l, h]])
        slope, _, r2 = best_fit(scores[0], scores[1])
        rows.append({"head": head_label(l, h), "coupling": float(coupling(F1[l, h], F2[l, h])),
                     "cosine": float(cosine(F1[l, h], F2[l, h])), "best_fit_slope": slope, "r2": r2,
                     "points": int(scores.shape[1])})
    return Table(rows)


def layer_norm_input_norms(model, ids) -> Table:
    """Figure 6: mean |x| of every LayerNorm's input over all tokens of the prompts."""
    from refimpl.propagation.layernorms import ln_input_names

    names = ln_input_names(model)
    _, trace = clean_run(model, ids)
    return Table([{"layernorm": ln, "mean_input_norm": float(np.linalg.norm(trace[act], axis=-1).mean())}
                  for ln, act in names.items()])


def layer_norm_gain_variance(model, ids) -> Table:
    """Figure 7 / A.2: variance of each LayerNorm's gain, and its ratio to the mean |entry| of that
    LayerNorm's inputs (the paper's comparison; note it sets a variance against a mean absolute value)."""
    from refimpl.propagation.layernorms import ln_input_names

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


def mlp_segment(model, layer: int, y: np.ndarray, x_neg: np.ndarray, x_pos: np.ndarray, points: int = 41,
                fallback: str | None = "mean") -> Table:
    """y . MLP((1 - t) x_neg + t x_pos) for t in [0, 1], next to its linear approximation at the boundary
    point and at the two ends (Figure 4)."""
    from refimpl.propagation.boundaries import mlp_boundary

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
