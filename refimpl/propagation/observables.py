"""Observables (paper Section 3): linear functionals n on the logits, and their residual image W_U^T n."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from refimpl.errors import InputError


@dataclass(frozen=True)
class Observable:
    """n . logits, kept as the vocabulary vector ``vocab`` (n) and ``residual`` = W_U^T n (row convention
    ``W_U @ n`` with W_U [d, V]), so that n . (x @ W_U) = x . residual."""

    vocab: np.ndarray  # [d_vocab]
    residual: np.ndarray  # [d_model]
    terms: tuple[tuple[int, str, float], ...]  # (token id, decoded token, weight)
    name: str

    def __repr__(self) -> str:
        return f"Observable({self.name!r})"


def _token_id(model, token) -> int:
    vocab = model.config.d_vocab
    if isinstance(token, (bool, np.bool_)):
        raise InputError(f"observable key {token!r} is neither a token string nor a token id")
    if isinstance(token, (int, np.integer)):
        if not 0 <= int(token) < vocab:
            raise InputError(f"token id {int(token)} in the observable is out of range [0, {vocab})")
        return int(token)
    if isinstance(token, str):
        if token == "":
            raise InputError("the empty string is not a token")
        token_id = model.tokenizer.single_token_id(token)  # InputError listing the tokenization otherwise
        if token_id >= vocab:
            raise InputError(f"{token!r} is token {token_id}, outside this model's vocabulary of {vocab}")
        return token_id
    raise InputError(f"observable key {token!r} is neither a token string nor a token id")


def _finite_float(weight) -> bool:
    try:
        return math.isfinite(float(weight))
    except OverflowError:  # an int beyond float64
        return False


def describe(terms) -> str:
    parts = []
    for _, text, weight in terms:
        sign = "-" if weight < 0 else "+"
        magnitude = abs(weight)
        parts.append(f"{sign} {'' if magnitude == 1 else f'{magnitude:g} '}{text!r}")
    label = " ".join(parts)
    return label[2:] if label.startswith("+ ") else label


def observable(model, spec: Mapping, name: str | None = None) -> Observable:
    """Build n from ``{token string or id: weight}``, e.g. ``{" she": 1, " he": -1}``.

    Every string must be exactly one token (the paper's stated limitation): otherwise an InputError
    lists its tokenization. Repeated tokens add up; an observable that is zero is an error.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise InputError("an observable needs a non-empty mapping {token: weight}, e.g. {' she': 1, ' he': -1}")
    if name is not None and not isinstance(name, str):
        raise InputError(f"observable name must be a str or None, got {type(name).__name__}")
    weights: dict[int, float] = {}
    labels: dict[int, object] = {}  # token id -> the key that named it first (for messages)
    for token, weight in spec.items():
        if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                or not _finite_float(weight):
            raise InputError(f"weight of {token!r} must be a finite number, got {weight!r}")
        token_id = _token_id(model, token)
        labels.setdefault(token_id, token)
        weights[token_id] = weights.get(token_id, 0.0) + float(weight)
    for token_id, total in weights.items():
        with np.errstate(over="ignore", under="ignore"):
            cast = model.dtype.type(total)
        if not np.isfinite(cast):
            raise InputError(f"weight of {labels[token_id]!r} is {total!r} (in total), which is inf in the model's "
                             f"{model.dtype} (|w| <= {float(np.finfo(model.dtype).max):.3g})")
        if total != 0.0 and cast == 0:
            raise InputError(f"weight of {labels[token_id]!r} is {total!r}, which is 0 in the model's {model.dtype}")
    weights = {i: w for i, w in weights.items() if w != 0.0}
    if not weights:
        raise InputError(f"observable {dict(spec)!r} is zero (n = 0): it measures nothing")
    ids = np.array(list(weights), dtype=np.int64)
    w = np.array(list(weights.values()), dtype=model.dtype)
    vocab_vector = np.zeros(model.config.d_vocab, dtype=model.dtype)
    vocab_vector[ids] = w
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, by name
        residual = model.weights["unembed.W_U"][:, ids] @ w  # [d, k] @ [k] -> [d]
    if not np.isfinite(residual).all():
        raise InputError(f"observable {dict(spec)!r} has a non-finite residual image W_U^T n in {model.dtype} "
                         "(weights too large for this dtype, or non-finite entries in W_U)")
    terms = tuple((int(i), model.tokenizer.decode([int(i)]), float(x)) for i, x in zip(ids, w))
    for array in (vocab_vector, residual):
        array.flags.writeable = False
    return Observable(vocab=vocab_vector, residual=residual, terms=terms, name=name or describe(terms))
