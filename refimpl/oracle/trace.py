"""Activation names (TransformerLens') and the read-only trace of a run."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from refimpl.errors import InputError

# Per-block names, in the order the forward pass produces them. Shapes (batch axis always present):
# resid/attn_out/mlp_out/normalized [B, T, d]; hook_scale [B, T, 1]; q/k/v/z [B, T, H, dh];
# attn_scores/pattern [B, H, T_query, T_key] (masked scores are -inf); hook_result [B, T, H, d];
# mlp.hook_pre/hook_post [B, T, d_mlp].
BLOCK_NAMES = (
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
GLOBAL_NAMES_BEFORE = ("hook_embed", "hook_pos_embed")
GLOBAL_NAMES_AFTER = ("ln_final.hook_scale", "ln_final.hook_normalized")


def activation_names(n_layers: int) -> list[str]:
    """Every activation name of an ``n_layers`` model, in forward order."""
    names = list(GLOBAL_NAMES_BEFORE)
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{n}" for n in BLOCK_NAMES]
    return names + list(GLOBAL_NAMES_AFTER)


def check_record_names(names) -> list[str]:
    """``names`` of ``run_with_trace`` as a list of strings, or an InputError saying what it is instead."""
    if isinstance(names, (str, bytes)):
        raise InputError("names must be a list of activation names, not a single string")
    if isinstance(names, Mapping) or not isinstance(names, Iterable):
        raise InputError(f"names must be an iterable of activation-name strings, got {type(names).__name__}")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InputError(f"names must be activation-name strings, got {bad[0]!r} ({type(bad[0]).__name__})")
    return names


def check_edits(edits, valid: list[str]) -> dict[str, Callable]:
    """``edits`` as a dict {activation name: callable}, or an InputError naming what is wrong."""
    if edits is None:
        return {}
    if not isinstance(edits, Mapping):
        raise InputError(f"edits must be a mapping {{activation name: function}}, got {type(edits).__name__}")
    bad = [n for n in edits if not isinstance(n, str)]
    if bad:
        raise InputError(f"edits must be keyed by activation-name strings, got {bad[0]!r} ({type(bad[0]).__name__})")
    check_names(edits, valid, "edits")
    for name, edit in edits.items():
        if not callable(edit):
            raise InputError(f"edit of {name} must be a function value -> new value, got {type(edit).__name__}")
    return dict(edits)


def check_names(names, valid: list[str], what: str) -> None:
    known = set(valid)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(
            f"unknown activation {what} {unknown}; names look like 'blocks.0.hook_resid_pre', "
            f"'blocks.0.attn.hook_pattern', 'ln_final.hook_normalized' (see Model.activation_names())"
        )


class Trace(Mapping[str, np.ndarray]):
    """Read-only mapping from activation name to a read-only array; ``ids`` are the token ids of the run
    ([batch, seq] int64, read-only; None for a run started from an activation)."""

    def __init__(self, values: dict[str, np.ndarray], ids: np.ndarray | None = None):
        self._values = values
        if ids is not None:  # a copy: the caller may reuse its array
            ids = np.array(ids)
            ids.flags.writeable = False
        self.ids = ids

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"{name!r} was not recorded; recorded: {sorted(self._values)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Trace({len(self)} activations)"


class Hooks:
    """Records the named activations asked for and applies per-name edits ``value -> new value``."""

    def __init__(self, record: frozenset[str] = frozenset(), edits: Mapping[str, Callable] | None = None):
        self.record = record
        self.edits = dict(edits or {})
        self.values: dict[str, np.ndarray] = {}

    def wants(self, name: str) -> bool:
        return name in self.record or name in self.edits

    def edited(self, name: str) -> bool:
        return name in self.edits

    def __call__(self, name: str, value: np.ndarray) -> np.ndarray:
        edit = self.edits.get(name)
        if edit is not None:
            try:
                new = edit(value.copy())
            except Exception as exc:  # a bug in the user's edit: name where it happened, keep the cause
                raise InputError(f"edit of {name} raised {type(exc).__name__}: {exc}") from exc
            if not isinstance(new, np.ndarray):
                raise InputError(f"edit of {name} returned {type(new).__name__}, expected a numpy array "
                                 f"(an edit may change its argument in place, but must return it)")
            if new.shape != value.shape:
                raise InputError(f"edit of {name} returned shape {new.shape}, expected {value.shape}")
            if new.dtype != value.dtype:
                raise InputError(
                    f"edit of {name} returned {new.dtype} where the model computes in {value.dtype}; "
                    f"return .astype({value.dtype}) explicitly or load the model with that dtype"
                )
            _check_finite_edit(name, new)
            value = new
        if name in self.record:
            view = value.view()
            view.flags.writeable = False
            self.values[name] = view
        return value


def _check_finite_edit(name: str, new: np.ndarray) -> None:
    """An edit must return finite values; attention scores may be -inf (masked), but not a whole row."""
    if np.isfinite(new).all():
        return
    if name.endswith("hook_attn_scores"):
        if not (np.isnan(new) | np.isposinf(new)).any():
            if not np.isneginf(new).all(axis=-1).any():
                return
            raise InputError(f"edit of {name} masks every key of some query (a row of -inf scores): "
                             "its attention would be NaN")
        raise InputError(f"edit of {name} returned NaN or +inf scores (only -inf, a masked key, is allowed)")
    raise InputError(f"edit of {name} returned non-finite values (NaN or inf)")
