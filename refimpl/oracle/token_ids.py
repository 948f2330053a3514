"""Checks of the runner's inputs that are not the model's: token id arrays, ``logits_at`` and a resumed
activation."""

from __future__ import annotations

import itertools
from typing import Mapping

import numpy as np

from refimpl.errors import InputError, check_int

_BOOLS = (bool, np.bool_)


def _position(logits_at, T: int) -> int | None:
    """``logits_at`` checked against T positions (None: every position)."""
    if logits_at is None:
        return None
    check_int(logits_at, "logits_at")
    if not -T <= logits_at < T:
        raise InputError(f"logits_at {logits_at} is outside the {T} positions")
    return int(logits_at)


def _activation(value, d_model: int, dtype: np.dtype, name: str) -> np.ndarray:
    """A resumed activation: a finite array [batch, seq, d_model] in the model's dtype."""
    arr = np.asarray(value)
    if arr.ndim != 3 or arr.shape[-1] != d_model or 0 in arr.shape:
        raise InputError(f"activation for {name} must be shaped [batch, seq, {d_model}], got {arr.shape}")
    if arr.dtype != dtype:
        raise InputError(f"activation for {name} is {arr.dtype} where the model computes in {dtype}; "
                         f"convert it explicitly")
    if not np.isfinite(arr).all():
        raise InputError(f"activation for {name} holds NaN or inf")
    return arr


def _ids_array(ids, vocab: int) -> np.ndarray:
    """Anything but an integer ndarray -> an integer ndarray, or an InputError naming the token ids."""
    if ids is None or isinstance(ids, (str, bytes, Mapping, set, frozenset)):
        hint = "; encode text with model.to_ids(text)" if isinstance(ids, str) else ""
        raise InputError(f"token ids must be a list or array of integers, got {type(ids).__name__}{hint}")
    try:
        arr = np.asarray(ids)
    except (ValueError, TypeError, OverflowError) as exc:
        lengths = [len(row) if hasattr(row, "__len__") else "scalar" for row in ids] if isinstance(ids, (list, tuple)) else []
        raise InputError(f"token ids must be a rectangular [seq] or [batch, seq] array of integers; "
                         f"got rows of lengths {lengths[:10]}" if lengths else
                         f"token ids cannot be read as an integer array: {exc}") from None
    if arr.dtype.kind not in "iu" and arr.size and not isinstance(ids, np.ndarray) and arr.dtype.kind in "fO":
        # a list numpy could not read as integers: name the first element that is not an id
        # (numpy reads [1, 2**63] as float64 and [1, 2**70] as object)
        for value in np.asarray(ids, dtype=object).ravel():
            if not isinstance(value, (int, np.integer)) or isinstance(value, _BOOLS):
                raise InputError(f"token ids must be integers, got {value!r} ({type(value).__name__})")
            if not 0 <= value < vocab:
                raise InputError(f"token id {value} is out of range [0, {vocab})")
    if arr.dtype == object:
        raise InputError("token ids must be an integer array, got an object array: convert with .astype(np.int64)")
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            return arr.astype(np.int64)
        hint = " (floats are refused even when whole: convert with .astype(np.int64))" if arr.dtype.kind == "f" else ""
        raise InputError(f"token ids must be integers, got dtype {arr.dtype}{hint}")
    if isinstance(ids, (list, tuple)) and _has_bool(ids, arr.ndim):
        raise InputError("token ids must be integers, got a bool among them")
    return arr


def _has_bool(ids, ndim: int) -> bool:
    """A bool anywhere in a list of ints or of rows (numpy reads [1, True] as [1, 1]); C-speed type scan."""
    if ndim == 1:
        types = set(map(type, ids))
    elif ndim == 2:
        types = set(map(type, itertools.chain.from_iterable(ids)))
    else:
        return False  # refused for its shape anyway
    return bool(types.intersection(_BOOLS))
