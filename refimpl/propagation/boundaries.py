"""Decision boundaries (Section 4.3.4): the point on the segment between two inputs where y . MLP(x) (or
n . logits through ln_final) is zero, where an MLP node (or ln_final) is linearised; the authors' recipe for
an MLP node's two points; and the checks of the options that carry them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy.optimize import brentq

from refimpl.propagation import jacobians
from refimpl.errors import InputError, check_int, check_vector
from refimpl.propagation.observables import Observable


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
    from refimpl.oracle import ops

    _check_fallback(fallback, "fallback")
    _check_observable(observable)
    d = model.config.d_model
    x_neg, x_pos = check_vector(x_neg, "x_neg", d), check_vector(x_pos, "x_pos", d)
    W = model.weights
    w, b = W["ln_final.w"].astype(np.float64), W["ln_final.b"].astype(np.float64)
    u = observable.residual.astype(np.float64)
    return boundary_point(lambda x: u @ ops.layer_norm(x, w, b, model.config.eps)[0], x_neg, x_pos, fallback,
                          "n . logits")


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
