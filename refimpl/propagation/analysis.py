"""Data-free analysis of feature vectors (paper Section 5 and 6.8): norms, cosines, couplings,
Theorem 2's expectation and extremes, SVD of W_OV, and the logit lens of a vector."""

from __future__ import annotations

import numpy as np

from refimpl.errors import InputError, check_int, check_real
from refimpl.oracle.lens import lens_logits, top_tokens
from refimpl.records import Table


def feature_norms(features: np.ndarray) -> np.ndarray:
    """|y| over the last axis, e.g. [n_layers, n_heads, d] -> [n_layers, n_heads]."""
    return np.linalg.norm(features, axis=-1)


def _dot(a, b):
    return (np.asarray(a) * np.asarray(b)).sum(axis=-1)


def cosine(y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """y1 . y2 / (|y1| |y2|), broadcasting over leading axes."""
    return _dot(y1, y2) / (np.linalg.norm(y1, axis=-1) * np.linalg.norm(y2, axis=-1))


def coupling(y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """Coupling coefficient C(y1 -> y2) = y1 . y2 / |y1|^2 (Theorem 2), broadcasting over leading axes.

    The paper's text writes y1 . y2 / (|y1| |y2|), which is the cosine (erratum); Theorem 2 and the
    authors' code use |y1|^2, so that C(y1 -> y2) C(y2 -> y1) = cos^2.
    """
    return _dot(y1, y2) / _dot(y1, y1)


def _feature_pair(y1, y2) -> tuple[np.ndarray, np.ndarray]:
    """Two finite, non-zero feature vectors of one length, as float64 (or an InputError naming which)."""
    arrays = []
    for name, y in (("y1", y1), ("y2", y2)):
        try:
            a = np.asarray(y)
        except (ValueError, TypeError):
            raise InputError(f"{name} must be a vector of numbers, got {type(y).__name__}") from None
        if a.dtype.kind not in "iuf" or a.ndim != 1 or a.size == 0:
            raise InputError(f"{name} must be a non-empty 1-D real vector, got shape {a.shape} dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise InputError(f"{name} has non-finite entries (NaN or inf)")
        if not np.any(a):
            raise InputError(f"{name} is the zero vector: the constraint or the bound is undefined")
        arrays.append(a)
    if arrays[0].shape != arrays[1].shape:
        raise InputError(f"y1 and y2 must have one shape, got {arrays[0].shape} and {arrays[1].shape}")
    return arrays[0], arrays[1]


def theorem2_expectation(y1: np.ndarray, y2: np.ndarray, k: float) -> float:
    """E[x . y2] for x uniform on {|x| = s, x . y1 = k}: k y1 . y2 / |y1|^2 (independent of s)."""
    y1, y2 = _feature_pair(y1, y2)
    k = check_real(k, "k")
    return float(k * coupling(y1, y2))


def theorem2_bounds(y1: np.ndarray, y2: np.ndarray, s: float, k: float) -> tuple[float, float]:
    """(min, max) of x . y2 over {|x| = s, x . y1 = k}: |y2|/|y1| (k cos t -/+ |sin t| sqrt(s^2 |y1|^2 - k^2)).

    |sin t| is taken from the part of y2 orthogonal to y1 (not sqrt(1 - cos^2), which turns a rounding
    error of 1e-16 in cos into 1e-8 when y1 and y2 are parallel).
    """
    y1, y2 = _feature_pair(y1, y2)
    s, k = check_real(s, "s"), check_real(k, "k")
    if s < 0:
        raise InputError(f"s is the norm |x| and must be >= 0, got {s}")
    with np.errstate(over="ignore"):
        n1, n2 = float(np.linalg.norm(y1)), float(np.linalg.norm(y2))
    if not (np.isfinite(n1) and np.isfinite(n2)):
        raise InputError("|y1| or |y2| overflows float64")
    if abs(k) > s * n1:
        raise InputError(f"no x with |x| = {s} has x . y1 = {k}: need |k| <= s |y1| = {s * n1}")
    cos = float(np.clip(_dot(y1, y2) / (n1 * n2), -1.0, 1.0))
    sin = float(np.linalg.norm(y2 - _dot(y1, y2) / _dot(y1, y1) * y1)) / n2
    spread = sin * np.sqrt(max(0.0, s * s * n1 * n1 - k * k))
    return n2 / n1 * (k * cos - spread), n2 / n1 * (k * cos + spread)


def ov_svd(model, layer: int, head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of one head's OV circuit without forming d x d: (singular values [dh], input directions
    [dh, d], output directions [dh, d]).

    Input directions are the right singular vectors of the paper's column-convention W_OV (directions in
    the head's input space, like feature vectors, Section 6.8). Uses W_V = Q_v R_v, W_O^T = Q_o R_o and the
    SVD of the small R_v R_o^T.
    """
    layer = check_int(layer, "layer", low=0, high=model.config.n_layers)
    head = check_int(head, "head", low=0, high=model.config.n_heads)
    W_V = model.weights[f"blocks.{layer}.attn.W_V"][head].astype(np.float64)  # [d, dh]
    W_O = model.weights[f"blocks.{layer}.attn.W_O"][head].astype(np.float64)  # [dh, d]
    Q_v, R_v = np.linalg.qr(W_V)
    Q_o, R_o = np.linalg.qr(W_O.T)
    U, S, Vt = np.linalg.svd(R_v @ R_o.T)
    return S, (Q_v @ U).T, (Q_o @ Vt.T).T


def svd_alignment(model, layer: int, head: int, feature: np.ndarray, k: int = 5) -> Table:
    """The k right singular vectors of W_OV best aligned with ``feature`` (by |cosine|), as a table."""
    k = check_int(k, "k", low=1)
    feature = _model_vector(model, feature, "feature")
    if not np.any(feature):
        raise InputError("feature is the zero vector: it has no direction to align with")
    S, inputs, _ = ov_svd(model, layer, head)
    cos = inputs @ feature / (np.linalg.norm(inputs, axis=1) * np.linalg.norm(feature))
    order = np.argsort(-np.abs(cos), kind="stable")[:k]
    return Table([{"index": int(i), "singular_value": float(S[i]), "cosine": float(cos[i]),
                   "abs_cosine": float(abs(cos[i]))} for i in order])


def vector_lens(model, vector: np.ndarray, k: int = 5, apply_ln_final: bool = False) -> Table:
    """Top and bottom k tokens of ``vector @ W_U`` (or of ln_final(vector) @ W_U), decoded."""
    k = check_int(k, "k", low=1)
    if not isinstance(apply_ln_final, (bool, np.bool_)):
        raise InputError(f"apply_ln_final must be True or False, got {apply_ln_final!r}")
    logits = lens_logits(model, _model_vector(model, vector, "vector", model.dtype), apply_ln_final)
    rows = [{"end": "top", "rank": r, "token": t, "id": i, "logit": v}
            for r, (t, i, v) in enumerate(top_tokens(model, logits, k))]
    rows += [{"end": "bottom", "rank": r, "token": t, "id": i, "logit": v}
             for r, (t, i, v) in enumerate(top_tokens(model, logits, k, largest=False))]
    return Table(rows)


def _model_vector(model, vector, what: str, dtype=np.float64) -> np.ndarray:
    """A finite residual-stream vector [d_model] in ``dtype``, or an InputError naming ``what``."""
    from refimpl.errors import check_vector

    return check_vector(vector, what, model.config.d_model, dtype)


def compare_features(features_1: np.ndarray, features_2: np.ndarray) -> Table:
    """Per head: norms, cosine and both couplings between two observables' feature tables [L, H, d]."""
    from refimpl.records import head_label

    features_1, features_2 = np.asarray(features_1), np.asarray(features_2)
    if features_1.ndim != 3 or features_1.shape != features_2.shape:
        raise InputError(f"feature tables must both be [n_layers, n_heads, d], got {features_1.shape} and "
                         f"{features_2.shape}")

    n1, n2 = feature_norms(features_1), feature_norms(features_2)
    cos, c12, c21 = cosine(features_1, features_2), coupling(features_1, features_2), coupling(features_2, features_1)
    rows = [{"label": head_label(l, h), "layer": l, "head": h, "norm_1": n1[l, h], "norm_2": n2[l, h],
             "cosine": cos[l, h], "coupling_1_to_2": c12[l, h], "coupling_2_to_1": c21[l, h]}
            for l in range(n1.shape[0]) for h in range(n1.shape[1])]
    rows.sort(key=lambda r: -r["cosine"])
    return Table(rows)
