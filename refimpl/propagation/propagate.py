"""Observable propagation (paper Sections 4.1-4.4): feature vectors of heads, virtual heads and paths.

Row convention: head h of layer l maps its LayerNorm output x to x @ W_V[h] @ W_O[h]; the feature of an
observable with residual image u is y = W_V[h] @ (W_O[h] @ u) (= the paper's W_OV^T W_U^T n), computed
for all heads at once without ever forming a d x d W_OV. Paths are read by ``paths``, LayerNorms handled by
``layernorms`` (the modes "ignore", "estimate", "exact"), MLP nodes linearised at ``boundaries``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from refimpl.propagation import jacobians
from refimpl.errors import InputError, check_vector
from refimpl.propagation.boundaries import (NoSignChange, _check_fallback, _check_mlp_points, _check_observable,
                                            mlp_boundary)
from refimpl.propagation.layernorms import _check_ln_mapping, _check_mode, layer_norm_factor
from refimpl.propagation.observables import Observable
from refimpl.propagation.paths import Node, layer_norm_of, parse_path, path_label

# ------------------------------------------------------------------ nodes and paths
# ------------------------------------------------------------------ the linear pieces
def head_feature_layer(model, layer: int, u: np.ndarray) -> np.ndarray:
    """y[h] = W_V[h] @ (W_O[h] @ u) for every head of ``layer`` at once.  [d] -> [H, d]"""
    W_O = model.weights[f"blocks.{layer}.attn.W_O"]  # [H, dh, d]
    W_V = model.weights[f"blocks.{layer}.attn.W_V"]  # [H, d, dh]
    a = W_O.reshape(-1, W_O.shape[-1]) @ u  # [H*dh]
    return (a.reshape(W_O.shape[0], 1, -1) @ W_V.transpose(0, 2, 1))[:, 0]  # [H, 1, dh] @ [H, dh, d]


def ov_transpose_apply(model, node: Node, y: np.ndarray) -> np.ndarray:
    """W_OV^T y for one head (row convention W_V[h] @ (W_O[h] @ y)).  [d] -> [d]"""
    W = model.weights
    return W[f"blocks.{node.layer}.attn.W_V"][node.head] @ (W[f"blocks.{node.layer}.attn.W_O"][node.head] @ y)


# ------------------------------------------------------------------ decision boundaries
# ------------------------------------------------------------------ propagation
@dataclass
class PropagationStep:
    node: str
    norm: float  # |feature| after this node and its LayerNorm factor
    boundary_t: float | None = None


@dataclass
class PathFeature:
    """A path's feature vector with what each step did."""

    vector: np.ndarray
    path: str
    steps: list[PropagationStep] = field(default_factory=list)


def propagate(model, observable: Observable, path, layernorm: str = "ignore", *, final_ln: str | None = None,
              norms: Mapping | None = None, points: Mapping | None = None,
              mlp_points: Mapping | None = None, mlp_fallback: str | None = None) -> PathFeature:
    """The feature vector of ``path`` for ``observable``, walking from the logits to the earliest node.

    ``final_ln`` (default: same as ``layernorm``) treats ln_final; in "exact" mode its point must be on the
    decision boundary (``final_ln_boundary``). ``mlp_points[layer] = (x_neg, x_pos)`` are two MLP inputs
    (ln_2 outputs) between which the MLP's boundary point is searched.
    """
    nodes = parse_path(model, path)
    _check_mode(layernorm, "layernorm")
    final_ln = layernorm if final_ln is None else final_ln
    _check_mode(final_ln, "final_ln")
    _check_observable(observable)
    _check_fallback(mlp_fallback, "mlp_fallback")
    _check_mlp_points(model, mlp_points)
    _check_ln_mapping(model, norms, "norms")
    _check_ln_mapping(model, points, "points")
    y = layer_norm_factor(model, "ln_final", observable.residual, final_ln, False, norms, points)
    steps = [PropagationStep("ln_final", float(np.linalg.norm(y)))]
    for index in range(len(nodes) - 1, -1, -1):
        node, t = nodes[index], None
        if node.kind == "attn":
            y = ov_transpose_apply(model, node, y)
        else:
            if not mlp_points or node.layer not in mlp_points:
                raise InputError(f"MLP node {node.label} needs mlp_points[{node.layer}] = (x_neg, x_pos): two MLP "
                                 "inputs (ln_2 outputs) on either side of the decision boundary")
            x_neg, x_pos = mlp_points[node.layer]
            try:
                boundary = mlp_boundary(model, node.layer, y, x_neg, x_pos, mlp_fallback)
            except NoSignChange as error:
                raise error.for_option("mlp_fallback") from None
            W, p = model.weights, f"blocks.{node.layer}.mlp."
            y = jacobians.mlp_vjp(boundary.point.astype(y.dtype), W[p + "W_in"], W[p + "b_in"], W[p + "W_out"], y,
                                  model.activation)
            t = boundary.t
        y = layer_norm_factor(model, layer_norm_of(model, node), y, layernorm, index == 0, norms, points)
        steps.append(PropagationStep(node.label, float(np.linalg.norm(y)), t))
    return PathFeature(y, path_label(nodes), steps)


def path_feature(model, observable: Observable, path, layernorm: str = "ignore", **options) -> np.ndarray:
    """The feature vector [d] of a path (see ``propagate`` for the options)."""
    return propagate(model, observable, path, layernorm, **options).vector


def head_features(model, observable: Observable, layernorm: str = "ignore", *, final_ln: str | None = None,
                  norms: Mapping | None = None, points: Mapping | None = None) -> np.ndarray:
    """Feature vectors of every attention head for ``observable``: [n_layers, n_heads, d_model].

    "ignore": y = W_OV^T W_U^T n. "estimate": each head's feature times sqrt(d) * gamma_ln1 (the last
    node of a length-1 path, Section 5.1.1), with ln_final estimated from ``norms["ln_final"]``.
    "exact": LayerNorm Jacobians at ``points`` (ln_final must be on the decision boundary).
    """
    _check_mode(layernorm, "layernorm")
    final_ln = layernorm if final_ln is None else final_ln
    _check_mode(final_ln, "final_ln")
    _check_observable(observable)
    _check_ln_mapping(model, norms, "norms")
    _check_ln_mapping(model, points, "points")
    if layernorm == "exact":
        points = {k: check_vector(v, f"input activation of {k} (points[{k!r}])", model.config.d_model)
                  for k, v in (points or {}).items()}
    u = layer_norm_factor(model, "ln_final", observable.residual, final_ln, False, norms, points)
    cfg = model.config
    out = np.empty((cfg.n_layers, cfg.n_heads, cfg.d_model), dtype=np.result_type(u, model.dtype))
    for layer in range(cfg.n_layers):
        out[layer] = head_feature_layer(model, layer, u)
        if layernorm != "ignore":
            out[layer] = layer_norm_factor(model, model.structure.layer_norm("attn", layer), out[layer], layernorm, True, norms,
                                           None if points is None else {k: np.broadcast_to(v, out[layer].shape)
                                                                        for k, v in points.items()})
    return out


# ------------------------------------------------------------------ LayerNorm inputs from a trace
