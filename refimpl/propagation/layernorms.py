"""LayerNorm handling on a path (Sections 4.3.3, 5.1.1), per LayerNorm:
  "ignore"   identity (directions only);
  "estimate" sqrt(d) * gamma * y / |x~| with |x~| supplied per LayerNorm; the LAST (earliest) node of a
             path gets sqrt(d) * gamma * y only;
  "exact"    the Jacobian-transpose of the LayerNorm at a supplied input x (J^T y).
LayerNorms are named "blocks.{l}.ln1" (before attention l), "blocks.{l}.ln2" (before MLP l) and "ln_final";
norms and points are mappings keyed by those names, read from a trace by ``ln_input_norms``/``ln_input_points``
(the model's structure says which residual each LayerNorm reads).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from refimpl.propagation import jacobians
from refimpl.errors import InputError, check_index, check_real, check_vector


LN_MODES = ("ignore", "estimate", "exact")


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
