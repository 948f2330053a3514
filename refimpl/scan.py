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

from .errors import InputError
from .observables import Observable
from .propagation import (Node, head_feature_layer, layer_norm_factor, mlp_boundary, path_label,
                          _check_mode)
from .records import Table, head_label
from . import jacobians


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
    if layernorm not in ("ignore", "estimate"):
        raise InputError(f"the virtual-head scan supports layernorm 'ignore' or 'estimate', got {layernorm!r}")
    cfg = model.config
    L, H, d = cfg.n_layers, cfg.n_heads, cfg.d_model
    u = layer_norm_factor(model, "ln_final", observable.residual, layernorm, False, norms, None)
    later = np.stack([head_feature_layer(model, l, u) for l in range(L)])  # [L, H, d]
    if layernorm == "estimate":
        later = np.stack([layer_norm_factor(model, f"blocks.{l}.ln1", later[l], "estimate", False, norms, None)
                          for l in range(L)])
    out = np.full((L, H, L, H), np.nan)
    for l1 in range(L - 1):
        targets = later[l1 + 1:].reshape(-1, d)  # [(L-l1-1)*H, d]
        W_O = model.weights[f"blocks.{l1}.attn.W_O"]  # [H, dh, d]
        a = (W_O.reshape(-1, d) @ targets.T).reshape(H, W_O.shape[1], -1)  # [H, dh, N]
        weight = np.sqrt(d) * model.weights[f"blocks.{l1}.ln1.w"] if layernorm == "estimate" else None
        G = _gram(model, l1, weight)  # [H, dh, dh]
        squared = np.einsum("hkn,hkn->hn", a, G @ a)  # [H, N]
        out[l1, :, l1 + 1:, :] = np.sqrt(np.maximum(squared, 0.0)).reshape(H, L - l1 - 1, H)
    return out


def scan_virtual_heads(model, observable: Observable, top_k: int = 20, layernorm: str = "ignore",
                       norms: Mapping | None = None) -> Table:
    """The ``top_k`` length-2 virtual heads by feature norm, as a table (path, layers, heads, norm)."""
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    values = virtual_head_norms(model, observable, layernorm, norms)
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
    if max_length < 1 or beam_width < 1 or top_k < 1:
        raise InputError("max_length, beam_width and top_k must be at least 1")
    cfg = model.config
    W = model.weights
    u = layer_norm_factor(model, "ln_final", observable.residual, layernorm, False, norms, None)

    def close(node: Node, y: np.ndarray, last: bool) -> np.ndarray:
        return layer_norm_factor(model, node.layer_norm, y, layernorm, last, norms, None)

    def expand(nodes: tuple, y: np.ndarray):
        """Every node that can precede ``nodes``: (node, raw feature before its LayerNorm)."""
        limit = nodes[0] if nodes else Node(cfg.n_layers, "attn")
        for layer in range(limit.layer + 1):
            if mlp_points and layer in mlp_points and Node(layer, "mlp") < limit:
                x_neg, x_pos = mlp_points[layer]
                point = mlp_boundary(model, layer, y, x_neg, x_pos, mlp_fallback).point.astype(y.dtype)
                p = f"blocks.{layer}.mlp."
                yield Node(layer, "mlp"), jacobians.mlp_vjp(point, W[p + "W_in"], W[p + "b_in"], W[p + "W_out"], y)
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
