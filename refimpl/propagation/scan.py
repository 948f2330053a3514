"""Virtual-head scan (beyond the paper): feature norms of ALL length-2 virtual heads in one batched
computation, and a beam search for longer paths.

For a later head (l2, h2) with feature y2 = W_V2 (W_O2 u) and an earlier head (l1, h1), the virtual head's
feature is y = W_V1 (W_O1 y2) and |y|^2 = a^T G1 a with a = W_O1 y2 and G1 = W_V1^T W_V1 the [dh, dh] Gram
matrix of W_V1: one GEMM per earlier layer against all later features, never a per-pair loop and never
a d x d matrix.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from refimpl.errors import InputError, check_int
from refimpl.propagation.observables import Observable
from refimpl.propagation.boundaries import (NoSignChange, mlp_boundary, _check_fallback, _check_mlp_points, _check_observable)
from refimpl.propagation.layernorms import layer_norm_factor, _check_ln_mapping, _check_mode
from refimpl.propagation.paths import Node, layer_norm_of, path_label
from refimpl.propagation.propagate import head_feature_layer
from refimpl.records import Table, head_label
from refimpl.propagation import jacobians


def _gram(model, layer: int, weight: np.ndarray | None = None) -> np.ndarray:
    """W_V[h]^T diag(weight^2) W_V[h] for every head of ``layer``: [H, dh, dh]."""
    W_V = model.weights[f"blocks.{layer}.attn.W_V"]  # [H, d, dh]
    scaled = W_V if weight is None else W_V * weight[None, :, None]
    return scaled.transpose(0, 2, 1) @ scaled


def virtual_head_norms(model, observable: Observable, layernorm: str = "ignore",
                       norms: Mapping | None = None) -> np.ndarray:
    """|feature| of every virtual head (l1, h1) -> (l2, h2), l1 < l2: array [L, H, L, H] (NaN where l1 >= l2).

    ``layernorm``: "ignore", or "estimate" (ln_final and the later head's ln_1 use sqrt(d) gamma / |x~|
    from ``norms``; the earliest node's ln_1 uses sqrt(d) gamma only).
    """
    if not isinstance(layernorm, str) or layernorm not in ("ignore", "estimate"):
        raise InputError(f"the virtual-head scan supports layernorm 'ignore' or 'estimate', got {layernorm!r}")
    _check_observable(observable)
    _check_ln_mapping(model, norms, "norms")
    cfg = model.config
    L, H, d = cfg.n_layers, cfg.n_heads, cfg.d_model
    u = layer_norm_factor(model, "ln_final", observable.residual, layernorm, False, norms, None)
    later = np.stack([head_feature_layer(model, l, u) for l in range(L)])  # [L, H, d]
    if layernorm == "estimate":
        later = np.stack([layer_norm_factor(model, model.structure.layer_norm("attn", l), later[l], "estimate", False, norms, None)
                          for l in range(L)])
    out = np.full((L, H, L, H), np.nan)
    for l1 in range(L - 1):
        targets = later[l1 + 1:].reshape(-1, d)  # [(L-l1-1)*H, d]
        W_O = model.weights[f"blocks.{l1}.attn.W_O"]  # [H, dh, d]
        a = (W_O.reshape(-1, d) @ targets.T).reshape(H, W_O.shape[1], -1)  # [H, dh, N]
        ln = model.structure.layer_norm("attn", l1)
        weight = np.sqrt(d) * model.weights[ln + ".w"] if layernorm == "estimate" else None
        G = _gram(model, l1, weight)  # [H, dh, dh]
        squared = np.einsum("hkn,hkn->hn", a, G @ a)  # [H, N]
        out[l1, :, l1 + 1:, :] = np.sqrt(np.maximum(squared, 0.0)).reshape(H, L - l1 - 1, H)
    return out


def scan_virtual_heads(model, observable: Observable, top_k: int = 20, layernorm: str = "ignore",
                       norms: Mapping | None = None) -> Table:
    """The ``top_k`` length-2 virtual heads by feature norm, as a table (path, layers, heads, norm).

    A ``top_k`` beyond the number of pairs (l1 < l2) returns every pair, never impossible ones."""
    top_k = check_int(top_k, "top_k", low=1)
    values = virtual_head_norms(model, observable, layernorm, norms)
    L, H = model.config.n_layers, model.config.n_heads
    top_k = min(top_k, L * (L - 1) // 2 * H * H)  # the real pairs; the rest of ``values`` is NaN
    flat = np.where(np.isnan(values), -np.inf, values).ravel()
    order = np.argsort(-flat, kind="stable")[:top_k]
    rows = []
    for index in order:
        l1, h1, l2, h2 = np.unravel_index(index, values.shape)
        rows.append({"path": f"{head_label(l1, h1)} -> {head_label(l2, h2)}", "layer_1": int(l1), "head_1": int(h1),
                     "layer_2": int(l2), "head_2": int(h2), "norm": float(values[l1, h1, l2, h2])})
    return Table(rows)


def beam_search_paths(model, observable: Observable, max_length: int = 3, beam_width: int = 16, top_k: int = 20,
                      layernorm: str = "ignore", norms: Mapping | None = None,
                      mlp_points: Mapping | None = None, mlp_fallback: str | None = None) -> Table:
    """Paths (attention heads, and MLPs of the layers in ``mlp_points``) of up to ``max_length`` nodes
    with the largest feature norms, grown from the logits backwards keeping ``beam_width`` per length.

    Scores use the norm the path would have if its current earliest node were the last one.
    """
    _check_mode(layernorm, "layernorm")
    if layernorm == "exact":
        raise InputError("beam search supports layernorm 'ignore' or 'estimate'")
    max_length = check_int(max_length, "max_length", low=1)
    beam_width = check_int(beam_width, "beam_width", low=1)
    top_k = check_int(top_k, "top_k", low=1)
    _check_observable(observable)
    _check_ln_mapping(model, norms, "norms")
    _check_mlp_points(model, mlp_points)
    _check_fallback(mlp_fallback, "mlp_fallback")
    cfg = model.config
    _check_beam_memory(model, max_length, beam_width, list(mlp_points or ()))
    W = model.weights
    u = layer_norm_factor(model, "ln_final", observable.residual, layernorm, False, norms, None)

    def close(node: Node, y: np.ndarray, last: bool) -> np.ndarray:
        return layer_norm_factor(model, layer_norm_of(model, node), y, layernorm, last, norms, None)

    def expand(nodes: tuple, y: np.ndarray):
        """Every node that can precede ``nodes``: (node, raw feature before its LayerNorm)."""
        limit = nodes[0] if nodes else Node(cfg.n_layers, "attn")
        for layer in range(limit.layer + 1):
            if mlp_points and layer in mlp_points and Node(layer, "mlp") < limit:
                x_neg, x_pos = mlp_points[layer]
                try:
                    point = mlp_boundary(model, layer, y, x_neg, x_pos, mlp_fallback).point.astype(y.dtype)
                except NoSignChange as error:
                    raise error.for_option("mlp_fallback") from None
                p = f"blocks.{layer}.mlp."
                yield Node(layer, "mlp"), jacobians.mlp_vjp(point, W[p + "W_in"], W[p + "b_in"], W[p + "W_out"], y,
                                                            model.activation)
            if layer < limit.layer:
                feats = head_feature_layer(model, layer, y)
                for head in range(cfg.n_heads):
                    yield Node(layer, "attn", head), feats[head]

    beams = [((), u)]
    found = []
    for _ in range(max_length):
        candidates = []
        for nodes, y in beams:
            for node, raw in expand(nodes, y):
                path = (node,) + nodes
                candidates.append((float(np.linalg.norm(close(node, raw, True))), path, close(node, raw, False)))
        candidates.sort(key=lambda c: -c[0])
        found.extend(candidates[:beam_width])
        beams = [(path, y) for _, path, y in candidates[:beam_width]]
        if not beams:
            break
    found.sort(key=lambda c: -c[0])
    return Table([{"path": path_label(p), "length": len(p), "norm": score} for score, p, _ in found[:top_k]])


def _check_beam_memory(model, max_length: int, beam_width: int, mlp_layers) -> None:
    """Refuse a beam whose candidate feature vectors (kept per step) cannot fit in memory.

    Paths are increasing sequences of slots (one head of a layer, or the MLP of a layer in ``mlp_points``),
    so at most e_k(slot sizes) paths have k nodes: the beam never holds more, whatever ``beam_width``.
    """
    from refimpl.oracle import memory

    cfg = model.config
    slots = [cfg.n_heads] * cfg.n_layers + [1] * len(mlp_layers)
    paths = [1] + [0] * len(slots)  # paths[k] = number of paths of k nodes (elementary symmetric polynomials)
    for size in slots:
        for k in range(len(slots), 0, -1):
            paths[k] += paths[k - 1] * size
    beams = min(beam_width, max(paths[:min(max_length, len(slots)) + 1]))
    candidates = beams * sum(slots)  # each beam grows into at most every head and MLP
    need = candidates * cfg.d_model * 8
    if need > memory._CHECK_MEMORY_ABOVE:
        available = memory.available_memory()
        if available is not None and need > available:
            raise InputError(f"beam_width={beam_width} would keep up to {candidates} candidate feature vectors "
                             f"per step ({need / 1e9:.2f} GB), more than the {available / 1e9:.2f} GB available; "
                             "use a smaller beam_width")
