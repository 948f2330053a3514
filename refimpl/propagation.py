"""Observable propagation (paper Sections 4.1-4.4): feature vectors of heads, virtual heads and paths.

Row convention: head h of layer l maps its LayerNorm output x to x @ W_V[h] @ W_O[h]; the feature of an
observable with residual image u is y = W_V[h] @ (W_O[h] @ u) (= the paper's W_OV^T W_U^T n), computed
for all heads at once without ever forming a d x d W_OV.

LayerNorm handling (Section 4.3.3 / 5.1.1), per LayerNorm on the path:
  "ignore"   identity (directions only);
  "estimate" sqrt(d) * gamma * y / |x~| with |x~| supplied per LayerNorm; the LAST (earliest) node of a
             path gets sqrt(d) * gamma * y only;
  "exact"    the Jacobian-transpose of GPT-Neo's LayerNorm at a supplied input x (J^T y).
LayerNorms are named "blocks.{l}.ln1" (before attention l), "blocks.{l}.ln2" (before MLP l) and
"ln_final"; norms and points are mappings keyed by those names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import brentq

from . import jacobians
from .errors import InputError, check_index, check_int, check_real, check_vector
from .observables import Observable

LN_MODES = ("ignore", "estimate", "exact")


# ------------------------------------------------------------------ nodes and paths
@dataclass(frozen=True, order=True)
class Node:
    """One sublayer on a path: attention head ``layer.head`` or the MLP of ``layer``."""

    layer: int
    kind: str  # "attn" sorts before "mlp" within a layer (whether one feeds the other is the structure's answer)
    head: int | None = None

    @property
    def label(self) -> str:
        return f"{self.layer}.{self.head}" if self.kind == "attn" else f"MLP{self.layer}"


def layer_norm_of(model, node: Node) -> str:
    """The LayerNorm in front of ``node`` (ln_1 for attention, ln_2 for the MLP in a serial block)."""
    return model.structure.layer_norm(node.kind, node.layer)


_HEAD = re.compile(r"^\s*(\d+)\s*\.\s*(\d+)\s*$")
_MLP = re.compile(r"^\s*mlp\s*(\d+)\s*$", re.IGNORECASE)


def parse_node(model, spec) -> Node:
    """"17.14" or (17, 14) -> head 14 of layer 17; "MLP16", "mlp 16" or ("mlp", 16) -> MLP of layer 16."""
    cfg = model.config
    if isinstance(spec, Node):
        if spec.kind not in ("attn", "mlp") or not _is_int(spec.layer) or \
                (spec.kind == "attn" and not _is_int(spec.head)) or (spec.kind == "mlp" and spec.head is not None):
            raise InputError(f"cannot read path node {spec!r}: a Node is (layer, 'attn', head) or (layer, 'mlp')")
        node = spec
    elif isinstance(spec, str) and _HEAD.match(spec):
        layer, head = map(int, _HEAD.match(spec).groups())
        node = Node(layer, "attn", head)
    elif isinstance(spec, str) and _MLP.match(spec):
        node = Node(int(_MLP.match(spec).group(1)), "mlp")
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and spec[0].lower() == "mlp" \
            and _is_int(spec[1]):
        node = Node(int(spec[1]), "mlp")
    elif isinstance(spec, tuple) and len(spec) == 2 and all(_is_int(v) for v in spec):
        node = Node(int(spec[0]), "attn", int(spec[1]))
    else:
        raise InputError(f"cannot read path node {spec!r}: use 'layer.head' (e.g. '17.14') or 'MLP<layer>'")
    if not 0 <= node.layer < cfg.n_layers:
        raise InputError(f"node {node.label} names layer {node.layer}, but the model has layers 0..{cfg.n_layers - 1}")
    if node.kind == "attn" and not 0 <= node.head < cfg.n_heads:
        raise InputError(f"node {node.label} names head {node.head}, but layers have heads 0..{cfg.n_heads - 1}")
    return node


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def parse_path(model, path: Sequence) -> tuple[Node, ...]:
    """Nodes from the earliest to the latest, each able to feed the next (the structure's ``order``: in a
    serial block (layer, attention before MLP) strictly increasing)."""
    if not isinstance(path, (str, Node, tuple, list)):
        raise InputError(f"path must be a node ('17.14', 'MLP3', (17, 14)) or a list of nodes, "
                         f"got {type(path).__name__}")
    one_node = isinstance(path, tuple) and len(path) == 2 and (  # (17, 14) or ("mlp", 16), as parse_node reads
        not isinstance(path[0], (str, tuple, Node)) or (isinstance(path[0], str) and path[0].lower() == "mlp"))
    if isinstance(path, (str, Node)) or one_node:
        path = [path]
    nodes = tuple(parse_node(model, spec) for spec in path)
    if not nodes:
        raise InputError("a path needs at least one node")
    for earlier, later in zip(nodes, nodes[1:]):
        order = model.structure.order
        if not order(earlier.kind, earlier.layer) < order(later.kind, later.layer):
            raise InputError(
                f"path {' -> '.join(n.label for n in nodes)} is not in increasing layer order "
                f"({earlier.label} cannot feed {later.label})")
    return nodes


def path_label(nodes: Sequence[Node]) -> str:
    return " -> ".join(n.label for n in nodes)


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


def _check_mode(mode: str, what: str) -> None:
    if not isinstance(mode, str) or mode not in LN_MODES:
        raise InputError(f"{what} must be one of {list(LN_MODES)}, got {mode!r}")


def layer_norm_factor(model, name: str, y: np.ndarray, mode: str, last: bool,
                      norms: Mapping | None, points: Mapping | None) -> np.ndarray:
    """Carry a feature y back through the LayerNorm ``name`` in ``mode`` (module docstring)."""
    _check_mode(mode, "layernorm mode")
    if mode == "ignore":
        return y
    w, d = model.weights[name + ".w"], model.config.d_model
    if mode == "estimate":
        if last:
            return np.sqrt(d) * w * y
        _check_ln_mapping(model, norms, "norms", keys=False)
        if not norms or name not in norms:
            raise InputError(f"LayerNorm mode 'estimate' needs the input norm |x~| of {name} "
                             f"(norms={{'{name}': ...}}; see ln_input_norms)")
        norm = check_real(norms[name], f"input norm of {name} (norms[{name!r}])", positive=True)
        return np.sqrt(d) * w * y / norm
    _check_ln_mapping(model, points, "points", keys=False)
    if not points or name not in points:
        raise InputError(f"LayerNorm mode 'exact' needs the input activation of {name} "
                         f"(points={{'{name}': x}}; see ln_input_points)")
    value = points[name]
    if not isinstance(value, np.ndarray) or value.shape != y.shape:  # head_features passes broadcast points
        value = check_vector(value, f"input activation of {name} (points[{name!r}])", d)
    x = np.asarray(value, dtype=y.dtype)
    if not np.isfinite(x).all():
        raise InputError(f"input activation of {name} (points[{name!r}]) has non-finite entries in {y.dtype}")
    if x.shape != y.shape:
        raise InputError(f"input activation of {name} has shape {x.shape}, expected {y.shape}")
    return jacobians.layer_norm_vjp(x, w, model.config.eps, y)


def _check_ln_mapping(model, mapping, what: str, keys: bool = True) -> None:
    """``norms``/``points``: None or a mapping keyed by LayerNorm names (typos are errors, not misses;
    ``keys=False`` checks only the type, for the inner loops that the public functions checked for)."""
    if mapping is None:
        return
    if not isinstance(mapping, Mapping):
        raise InputError(f"{what} must be a mapping {{LayerNorm name: value}} (e.g. from ln_input_{what}), "
                         f"got {type(mapping).__name__}")
    if not keys:
        return
    valid = ln_input_names(model)
    unknown = [k for k in mapping if k not in valid]
    if unknown:
        raise InputError(f"{what} has unknown LayerNorm names {unknown[:5]}; names are 'blocks.<layer>.ln1', "
                         "'blocks.<layer>.ln2' and 'ln_final'")


def _check_fallback(fallback, option: str) -> None:
    if fallback is not None and not (isinstance(fallback, str) and fallback == "mean"):
        raise InputError(f"{option} must be None or 'mean', got {fallback!r}")


def _check_observable(observable) -> None:
    if not isinstance(observable, Observable):
        raise InputError(f"observable must be an Observable (from refimpl.observable(model, {{token: weight}})), "
                         f"got {type(observable).__name__}")


def _check_mlp_points(model, mlp_points) -> None:
    """``mlp_points``: None or {layer: (x_neg, x_pos)} with two finite MLP inputs [d] per existing layer."""
    if mlp_points is None:
        return
    if not isinstance(mlp_points, Mapping):
        raise InputError(f"mlp_points must be a mapping {{layer: (x_neg, x_pos)}}, got {type(mlp_points).__name__}")
    cfg = model.config
    for layer, pair in mlp_points.items():
        check_int(layer, f"mlp_points key {layer!r} (a layer)", low=0, high=cfg.n_layers)
        if isinstance(pair, np.ndarray) and pair.ndim == 2:
            pair = tuple(pair)
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"mlp_points[{layer}] must be a pair (x_neg, x_pos) of MLP inputs, got "
                             f"{type(pair).__name__}{f' of {len(pair)}' if isinstance(pair, (tuple, list)) else ''}")
        for side, x in zip(("x_neg", "x_pos"), pair):
            check_vector(x, f"mlp_points[{layer}] {side}", cfg.d_model)


# ------------------------------------------------------------------ decision boundaries
@dataclass(frozen=True)
class Boundary:
    """A point x0 = (1 - t) x_neg + t x_pos on the segment with f(x0) = target."""

    point: np.ndarray
    t: float
    f_neg: float
    f_pos: float
    target: float


class NoSignChange(InputError):
    """A boundary search whose function has the same sign at both ends (and no fallback was asked for)."""

    def __init__(self, what: str, f_neg: float, f_pos: float, option: str = "fallback"):
        self.what, self.f_neg, self.f_pos, self.option = what, f_neg, f_pos, option
        super().__init__(
            f"{what} has no sign change between the two points (f(x_neg) = {f_neg:.6g}, f(x_pos) = {f_pos:.6g}): "
            f"pick a negative and a positive example, or pass {option}='mean' to target the mean value")

    def for_option(self, option: str) -> "NoSignChange":
        """The same error naming ``option``, the argument of the function the user called."""
        return NoSignChange(self.what, self.f_neg, self.f_pos, option)


def boundary_point(f, x_neg: np.ndarray, x_pos: np.ndarray, fallback: str | None = None,
                   what: str = "function", option: str = "fallback") -> Boundary:
    """Root of f on the segment x_neg -> x_pos by brentq (f(x_neg) and f(x_pos) must differ in sign).

    Without a sign change it is an InputError, unless ``fallback="mean"``: then the point where f equals
    the mean of its two end values (what the authors' code did) is returned. ``option`` is the name of
    the caller's argument that carries ``fallback`` (named in the error messages).
    """
    _check_fallback(fallback, option)
    x_neg, x_pos = np.asarray(x_neg), np.asarray(x_pos)
    if x_neg.shape != x_pos.shape or x_neg.ndim != 1:
        raise InputError(f"boundary end points must be two vectors of one shape, got {x_neg.shape} and {x_pos.shape}")
    x_neg = check_vector(x_neg, "boundary end point x_neg", x_neg.shape[0])
    x_pos = check_vector(x_pos, "boundary end point x_pos", x_pos.shape[0])

    def along(t: float) -> float:
        return float(f((1.0 - t) * x_neg + t * x_pos))

    f_neg, f_pos = along(0.0), along(1.0)
    if not (np.isfinite(f_neg) and np.isfinite(f_pos)):
        raise InputError(f"{what} is not finite at the end points (f(x_neg) = {f_neg}, f(x_pos) = {f_pos})")
    target = 0.0
    if not (f_neg <= 0.0 <= f_pos or f_pos <= 0.0 <= f_neg):
        if fallback != "mean":
            raise NoSignChange(what, f_neg, f_pos, option)
        target = 0.5 * (f_neg + f_pos)
    if f_neg == target:
        t = 0.0
    elif f_pos == target:
        t = 1.0
    else:
        t = brentq(lambda s: along(s) - target, 0.0, 1.0, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=200)
    return Boundary((1.0 - t) * x_neg + t * x_pos, float(t), f_neg, f_pos, target)


def mlp_boundary(model, layer: int, y: np.ndarray, x_neg, x_pos, fallback: str | None = None) -> Boundary:
    """The point between two MLP inputs (ln_2 outputs) where y . MLP_layer(x) = 0 (Section 4.3.4)."""
    _check_fallback(fallback, "fallback")
    d = model.config.d_model
    layer = check_int(layer, "layer", low=0, high=model.config.n_layers)
    y = check_vector(y, "y (the feature after the MLP)", d)
    x_neg, x_pos = check_vector(x_neg, "x_neg", d), check_vector(x_pos, "x_pos", d)
    W, p = model.weights, f"blocks.{layer}.mlp."
    args = (W[p + "W_in"].astype(np.float64), W[p + "b_in"].astype(np.float64),
            W[p + "W_out"].astype(np.float64), W[p + "b_out"].astype(np.float64))
    y64 = np.asarray(y, dtype=np.float64)
    return boundary_point(lambda x: y64 @ jacobians.mlp(x, *args, model.activation), x_neg, x_pos, fallback,
                          f"y . MLP{layer}")


def final_ln_boundary(model, observable: Observable, x_neg, x_pos, fallback: str | None = None) -> Boundary:
    """The point between two ln_final inputs where n . logits = (W_U^T n) . ln_final(x) = 0."""
    from . import ops

    _check_fallback(fallback, "fallback")
    _check_observable(observable)
    d = model.config.d_model
    x_neg, x_pos = check_vector(x_neg, "x_neg", d), check_vector(x_pos, "x_pos", d)
    W = model.weights
    w, b = W["ln_final.w"].astype(np.float64), W["ln_final.b"].astype(np.float64)
    u = observable.residual.astype(np.float64)
    return boundary_point(lambda x: u @ ops.layer_norm(x, w, b, model.config.eps)[0], x_neg, x_pos, fallback,
                          "n . logits")


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
def ln_input_names(model) -> dict[str, str]:
    """LayerNorm name -> the trace activation that is its input (the model's structure says which)."""
    return model.structure.ln_inputs(model.config.n_layers)


def traced(model, ids: np.ndarray, names, trace=None):
    """``trace`` when it is a run on exactly ``ids`` holding ``names``; otherwise a new run recording them
    (logits at the last position only)."""
    if trace is not None and getattr(trace, "ids", None) is not None and set(names) <= set(trace) \
            and trace.ids.shape == ids.shape and np.array_equal(trace.ids, ids):
        return trace
    return model.run_with_trace(ids, names=sorted(set(names)), logits_at=-1)[1]


def ln_input_norms(model, ids, position: int = -1, trace=None) -> dict[str, float]:
    """Mean |x| of every LayerNorm's input at ``position`` over the prompts ``ids`` [batch, seq]. ``trace``:
    a run on the same ids already holding the LayerNorms' inputs (used instead of a new run)."""
    names = ln_input_names(model)
    ids, _ = model.check_ids(ids)
    position = check_index(position, "position", ids.shape[1])
    trace = traced(model, ids, names.values(), trace)
    return {ln: float(np.linalg.norm(trace[act][:, position].astype(np.float64), axis=-1).mean())
            for ln, act in names.items()}


def ln_input_points(model, ids, position: int = -1, batch_index: int = 0) -> dict[str, np.ndarray]:
    """Every LayerNorm's input vector at (``batch_index``, ``position``) of a run on ``ids``."""
    names = ln_input_names(model)
    ids, _ = model.check_ids(ids)
    position = check_index(position, "position", ids.shape[1])
    batch_index = check_index(batch_index, "batch_index", ids.shape[0])
    trace = traced(model, ids, names.values())
    return {ln: np.array(trace[act][batch_index, position]) for ln, act in names.items()}


def mlp_inputs(model, layer: int, negative_ids, positive_ids, position: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The authors' recipe for an MLP node's two points (Section 4.3.4): the inputs of MLP ``layer`` (its
    ln_2 outputs) at ``position`` of a prompt on the negative side (e.g. a male name for n_subj) and one on
    the positive side. Returns (x_neg, x_pos) for ``mlp_points={layer: (x_neg, x_pos)}``."""
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 0 <= layer < model.config.n_layers:
        raise InputError(f"layer must be one of 0..{model.config.n_layers - 1}, got {layer!r}")
    name = model.structure.sublayer_input("mlp", layer)
    points = []
    for label, ids in (("negative_ids", negative_ids), ("positive_ids", positive_ids)):
        ids, _ = model.check_ids(ids)
        if ids.shape[0] != 1:
            raise InputError(f"{label} must be one prompt ([seq] or [1, seq]), got {ids.shape[0]} prompts")
        if not -ids.shape[1] <= position < ids.shape[1]:
            raise InputError(f"position {position} is outside the {ids.shape[1]} tokens of {label}")
        _, trace = model.run_with_trace(ids, names=[name])
        points.append(np.array(trace[name][0, position]))
    return points[0], points[1]
