"""The forward pass of a pre-LN serial transformer (GPT-Neo, GPT-2), read from TransformerLens-layout weights.

What differs between the families is data here: the attention divisor per layer (none for GPT-Neo,
sqrt(d_head) for GPT-2), the local windows (GPT-Neo), the q/k/v biases (GPT-2; absent keys for GPT-Neo),
the MLP activation and the unembedding (tied or not). ``model.family`` says where they came from.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np

from . import ops
from .config import Config
from .errors import InputError, check_int
from .families import family
from .tokenizer import Tokenizer
from .trace import Hooks, Trace, activation_names, check_edits, check_names, check_record_names

DEFAULT_CHUNK_BYTES = 1 << 30  # working memory of one chunk of the batch (see Model.chunk_bytes)
_CHECK_MEMORY_ABOVE = 64 << 20  # below this a run is not worth a look at /proc (MemoryError is still caught)
_BOOLS = (bool, np.bool_)


@dataclass(frozen=True)
class _BlockMatrices:
    """Flat 2-D views of one block's weights for single-GEMM projections (no copies)."""

    W_Q: np.ndarray  # [d, H*dh]
    W_K: np.ndarray  # [d, H*dh]
    W_V: np.ndarray  # [d, H*dh]
    W_O: np.ndarray  # [H*dh, d]
    b_Q: np.ndarray | None  # [H*dh] (None: no bias, GPT-Neo)
    b_K: np.ndarray | None  # [H*dh]
    b_V: np.ndarray | None  # [H*dh]


def _flat_bias(weights: Mapping[str, np.ndarray], key: str) -> np.ndarray | None:
    """[H, dh] -> [H*dh], or None when the family has no such bias."""
    return None if key not in weights else weights[key].reshape(-1)


def _flatten_in(W: np.ndarray) -> np.ndarray:
    """[H, d, dh] -> [d, H*dh] (a view of the checkpoint's [H*dh, d] matrix transposed)."""
    H, d, dh = W.shape
    return W.transpose(1, 0, 2).reshape(d, H * dh)


class Model:
    """A loaded model: ``config``, ``weights`` (TransformerLens names), ``tokenizer``, forward and trace;
    ``family`` (GPT-Neo or GPT-2), its ``structure`` (which residual feeds which LayerNorm) and ``activation``.

    Big batches run in chunks of whole prompts so that the working memory of one chunk (its logits
    [b, T, V], attention [b, H, T, T], MLP activations) stays under ``chunk_bytes`` (default 1 GiB,
    settable per model); the result is identical to an unchunked run. A batch whose logits (and trace)
    alone do not fit in the memory available is refused up front with the size it would need.
    """

    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __init__(self, config: Config, weights: Mapping[str, np.ndarray], tokenizer: Tokenizer,
                 source: str | None = None, path: Path | None = None):
        self.config = config
        self.weights = MappingProxyType(dict(weights))
        self.tokenizer = tokenizer
        self.source = source
        self.path = path
        self.dtype = self.weights["embed.W_E"].dtype
        self.family = family(config.family)
        self.structure = self.family.structure
        self.activation = self.family.activation(config)
        self._names = activation_names(config.n_layers)
        self._masks: dict[tuple[int, int | None], np.ndarray] = {}
        self._elements = {name: _elements_per_prompt(config, name) for name in self._names}
        self._flat = [
            _BlockMatrices(
                W_Q=_flatten_in(self.weights[f"blocks.{l}.attn.W_Q"]),
                W_K=_flatten_in(self.weights[f"blocks.{l}.attn.W_K"]),
                W_V=_flatten_in(self.weights[f"blocks.{l}.attn.W_V"]),
                W_O=self.weights[f"blocks.{l}.attn.W_O"].reshape(-1, config.d_model),
                b_Q=_flat_bias(self.weights, f"blocks.{l}.attn.b_Q"),
                b_K=_flat_bias(self.weights, f"blocks.{l}.attn.b_K"),
                b_V=_flat_bias(self.weights, f"blocks.{l}.attn.b_V"),
            )
            for l in range(config.n_layers)
        ]

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({self.source!r}, {self.family.title}, {c.n_layers} layers, d_model={c.d_model}, {c.n_heads} heads, "
                f"dtype={self.dtype})")

    # ----------------------------------------------------------------- public API
    def activation_names(self) -> list[str]:
        """Every name ``run_with_trace`` can record or edit, in forward order."""
        return list(self._names)

    def to_ids(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as a 1-D int64 array."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        return np.asarray(self.tokenizer.encode(text), dtype=np.int64)

    def forward(self, ids, edits: Mapping[str, Callable] | None = None, *, logits_at: int | None = None,
                resume: Trace | None = None) -> np.ndarray:
        """Logits for token ids ``[seq]`` -> ``[seq, vocab]`` or ``[batch, seq]`` -> ``[batch, seq, vocab]``.

        ``edits`` maps activation names to functions ``value -> new value`` applied during the run. An
        edit gets a copy of the activation (it may change it in place and return it) and must return a
        finite array of the same shape and dtype (``hook_attn_scores`` may hold -inf, but not a whole row
        of it); an edit that raises is reported as an InputError naming the activation. When the batch is
        run in chunks (see the class docstring), an edit is called once per chunk with that chunk's
        rows: an edit that treats prompts differently must not index the batch axis absolutely.

        ``logits_at``: compute the unembedding only at this position: logits ``[batch, vocab]`` (``[vocab]``
        for 1-D ids). ``resume``: the trace of a run on the SAME ids that recorded
        ``blocks.{l}.hook_resid_pre`` (or ``hook_resid_mid``) of the earliest layer the edits touch; the run
        then starts there (an edit at layer l cannot change layers below l). Without such an activation it
        is a full run; the result is the same either way (to rounding).
        """
        return self._dispatch(ids, frozenset(), check_edits(edits, self._names), logits_at, resume)[0]

    def run_with_trace(self, ids, names: Iterable[str] | None = None,
                       edits: Mapping[str, Callable] | None = None, *, logits_at: int | None = None,
                       resume: Trace | None = None) -> tuple[np.ndarray, Trace]:
        """Logits and a read-only trace of the activations ``names`` (all when None).

        Trace arrays always carry the batch axis ([1, ...] for 1-D ids). An edited activation is
        recorded as edited, i.e. as the value the rest of the model saw. ``logits_at`` and ``resume`` as
        in ``forward``; a resumed run takes the activations before its starting point from ``resume`` (it
        resumes only when ``resume`` holds every such name asked for). ``trace.ids`` are the ids of the run.
        """
        record = self._names if names is None else check_record_names(names)
        if names is not None:
            check_names(record, self._names, "names")
        logits, values, ids = self._dispatch(ids, frozenset(record), check_edits(edits, self._names), logits_at, resume)
        return logits, Trace(values, ids=ids)

    def run_from(self, name: str, activation, names: Iterable[str] | None = None,
                 edits: Mapping[str, Callable] | None = None, *, logits_at: int | None = None
                 ) -> tuple[np.ndarray, Trace]:
        """Run the model from a given activation: ``name`` is ``blocks.{l}.hook_resid_pre`` or
        ``blocks.{l}.hook_resid_mid`` and ``activation`` its value ``[batch, seq, d_model]`` (the model's
        dtype). Returns the logits (``[batch, seq, vocab]``, or ``[batch, vocab]`` with ``logits_at``) and a
        trace of ``names`` (all activations from ``name`` on when None); ``edits`` apply from ``name`` on
        (an edit of ``name`` itself too). Activations before ``name`` are not computed: asking for them
        or editing them is an InputError."""
        start = self._resume_point(name)
        act = _activation(activation, self.config.d_model, self.dtype, name)
        later = self._names[self._names.index(name):]
        record = later if names is None else check_record_names(names)
        check_names(record, self._names, "names")
        edits = check_edits(edits, self._names)
        early = sorted({n for n in list(record) + list(edits) if n not in later}, key=self._names.index)
        if early:
            raise InputError(f"run_from({name!r}) does not compute {early[:4]}: they come before {name}")
        B, T = act.shape[:2]
        if T > self.config.n_ctx:
            raise InputError(f"activation: {T} positions are more than the position table ({self.config.n_ctx})")
        position = _position(logits_at, T)
        logits, values = self._execute(B, T, frozenset(record), edits, position,
                                       lambda a, b, hooks: self._run_from(start, act[a:b], hooks, position))
        return logits, Trace(values)

    # ----------------------------------------------------------------- input checks
    def check_ids(self, ids) -> tuple[np.ndarray, bool]:
        """Validate token ids; return them as int64 ``[batch, seq]`` and whether the input was 1-D.

        Accepted: integer arrays and (nested) lists of ints. Refused with an InputError naming the token
        ids: ragged lists, floats (even whole ones like 2.0: convert explicitly), bools, strings, None,
        objects, object arrays, ids beyond int64, negative or ``>= vocab`` ids, empty input, more tokens
        than the position table.
        """
        vocab = self.config.d_vocab
        if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
            arr = ids
        else:
            arr = _ids_array(ids, vocab)
        if arr.ndim not in (1, 2):
            raise InputError(f"token ids must be shaped [seq] or [batch, seq], got shape {arr.shape}")
        if arr.shape[-1] == 0 or arr.size == 0:
            raise InputError(f"token ids are empty (shape {arr.shape}): need at least one token")
        n_ctx = self.config.n_ctx
        if arr.shape[-1] > n_ctx:
            raise InputError(f"token ids: sequence of {arr.shape[-1]} tokens is longer than the position table ({n_ctx})")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= vocab:
            bad = lo if lo < 0 else hi
            raise InputError(f"token id {bad} is out of range [0, {vocab})")
        squeeze = arr.ndim == 1
        return arr.reshape(-1, arr.shape[-1]).astype(np.int64, copy=False), squeeze

    # ----------------------------------------------------------------- forward pass
    def _mask(self, n_tokens: int, window: int | None) -> np.ndarray:
        key = (n_tokens, window)
        if key not in self._masks:
            self._masks[key] = ops.attention_mask(n_tokens, window)
        return self._masks[key]

    def _layer_norm(self, prefix: str, x: np.ndarray, hooks: Hooks) -> np.ndarray:
        w, b = self.weights[prefix + "w"], self.weights[prefix + "b"]
        centered = ops.center(x)
        scale = hooks(prefix + "hook_scale", ops.ln_scale(centered, self.config.eps))
        return hooks(prefix + "hook_normalized", ops.ln_apply(centered, scale, w, b))

    def _attention(self, layer: int, x: np.ndarray, hooks: Hooks) -> np.ndarray:
        p, W, flat = f"blocks.{layer}.attn.", self.weights, self._flat[layer]
        H = self.config.n_heads
        q = hooks(p + "hook_q", ops.split_heads(ops.linear(x, flat.W_Q, flat.b_Q), H))  # [B, T, H, dh]
        k = hooks(p + "hook_k", ops.split_heads(ops.linear(x, flat.W_K, flat.b_K), H))  # [B, T, H, dh]
        v = hooks(p + "hook_v", ops.split_heads(ops.linear(x, flat.W_V, flat.b_V), H))  # [B, T, H, dh]
        visible = self._mask(x.shape[1], self.config.window(layer))  # [T, T]
        divisor = self.config.attn_divisor(layer)
        scores = hooks(p + "hook_attn_scores", ops.attention_scores(q, k, visible, divisor))  # [B, H, T, T]
        pattern = hooks(p + "hook_pattern", ops.softmax(scores))  # [B, H, T, T]
        z = hooks(p + "hook_z", ops.attend(pattern, v))  # [B, T, H, dh]
        if hooks.wants(p + "hook_result"):
            result = hooks(p + "hook_result", ops.head_results(z, W[p + "W_O"]))  # [B, T, H, d]
            if hooks.edited(p + "hook_result"):
                return result.sum(axis=2) + W[p + "b_O"]
        return ops.linear(z.reshape(*z.shape[:2], -1), flat.W_O, W[p + "b_O"])  # [B, T, d]

    def _mlp(self, layer: int, x: np.ndarray, hooks: Hooks) -> np.ndarray:
        p, W = f"blocks.{layer}.mlp.", self.weights
        pre = hooks(p + "hook_pre", ops.linear(x, W[p + "W_in"], W[p + "b_in"]))  # [B, T, d_mlp]
        post = hooks(p + "hook_post", self.activation.f(pre))  # [B, T, d_mlp]
        return ops.linear(post, W[p + "W_out"], W[p + "b_out"])  # [B, T, d]

    def _block(self, layer: int, resid_pre: np.ndarray, hooks: Hooks) -> np.ndarray:
        """resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid))."""
        p = f"blocks.{layer}."
        resid_pre = hooks(p + "hook_resid_pre", resid_pre)
        attn_out = hooks(p + "hook_attn_out", self._attention(layer, self._layer_norm(p + "ln1.", resid_pre, hooks), hooks))
        return self._block_mlp(layer, resid_pre + attn_out, hooks)

    def _block_mlp(self, layer: int, resid_mid: np.ndarray, hooks: Hooks) -> np.ndarray:
        """The second half of a block: resid_post = resid_mid + mlp(ln2(resid_mid))."""
        p = f"blocks.{layer}."
        resid_mid = hooks(p + "hook_resid_mid", resid_mid)
        mlp_out = hooks(p + "hook_mlp_out", self._mlp(layer, self._layer_norm(p + "ln2.", resid_mid, hooks), hooks))
        return hooks(p + "hook_resid_post", resid_mid + mlp_out)

    def _unembed(self, resid: np.ndarray, hooks: Hooks, position: int | None) -> np.ndarray:
        """ln_final and the unembedding, at every position or only at ``position``.  -> [B, T, V] or [B, V]"""
        final = self._layer_norm("ln_final.", resid, hooks)  # [B, T, d]
        if position is not None:
            final = final[:, position]  # [B, d]
        return ops.linear(final, self.weights["unembed.W_U"])

    def _run_from(self, start: tuple[int, int], resid: np.ndarray, hooks: Hooks, position: int | None) -> np.ndarray:
        """Blocks from ``start`` = (layer, 0: its input / 1: its resid_mid) on, then the unembedding."""
        layer, half = start
        resid = self._block(layer, resid, hooks) if half == 0 else self._block_mlp(layer, resid, hooks)
        for later in range(layer + 1, self.config.n_layers):
            resid = self._block(later, resid, hooks)
        return self._unembed(resid, hooks, position)

    # ----------------------------------------------------------------- resuming
    def _resume_point(self, name: str) -> tuple[int, int]:
        """``blocks.{l}.hook_resid_pre`` -> (l, 0), ``blocks.{l}.hook_resid_mid`` -> (l, 1)."""
        if not isinstance(name, str) or name not in self._names or not name.endswith(("hook_resid_pre",
                                                                                      "hook_resid_mid")):
            raise InputError(f"a run can start from blocks.{{l}}.hook_resid_pre or blocks.{{l}}.hook_resid_mid "
                             f"(l in 0..{self.config.n_layers - 1}), got {name!r}")
        return int(name.split(".")[1]), 0 if name.endswith("hook_resid_pre") else 1

    def _earliest(self, names) -> tuple[int, int] | None:
        """The resume point (layer, half) before every one of ``names``; None when one is the embedding."""
        points = []
        for name in names:
            if name.startswith("ln_final."):
                points.append((self.config.n_layers - 1, 1))
            elif name.startswith("blocks."):
                layer, rest = int(name.split(".")[1]), name.split(".", 2)[2]
                points.append((layer, 1 if rest.startswith(("hook_resid_mid", "ln2.", "mlp.", "hook_mlp_out",
                                                             "hook_resid_post")) else 0))
            else:
                return None
        return min(points) if points else None

    def _dispatch(self, ids, record: frozenset, edits: dict, logits_at, resume) -> tuple[np.ndarray, dict, np.ndarray]:
        """Check ``ids`` and run them, from the embedding or (``resume``) from the earliest edited layer;
        the logits, the recorded values and the checked ids."""
        ids, squeeze = self.check_ids(ids)
        B, T = ids.shape
        position = _position(logits_at, T)
        start = self._earliest(edits) if resume is not None and edits else None
        if resume is not None and not isinstance(resume, Trace):
            raise InputError(f"resume must be the Trace of a run on the same ids, got {type(resume).__name__}")
        if start is not None:
            name = f"blocks.{start[0]}.hook_{'resid_pre' if start[1] == 0 else 'resid_mid'}"
            index = self._names.index(name)
            before = {n for n in record if self._names.index(n) < index}
            usable = name in resume and before <= set(resume) and resume.ids is not None
            if usable and (resume.ids.shape != ids.shape or not np.array_equal(resume.ids, ids)):
                raise InputError("resume is the trace of a run on other token ids than these")
            if usable:
                act = resume[name]
                logits, values = self._execute(B, T, record - before, edits, position,
                                               lambda a, b, hooks: self._run_from(start, act[a:b], hooks, position))
                values.update({n: resume[n] for n in before})
                return (logits[0] if squeeze else logits), values, ids
        logits, values = self._execute(B, T, record, edits, position,
                                       lambda a, b, hooks: self._run(ids[a:b], hooks, position))
        return (logits[0] if squeeze else logits), values, ids

    def _execute(self, B: int, T: int, record: frozenset, edits: dict, position: int | None,
                 run_rows: Callable) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run ``run_rows(start, stop, hooks)`` over the batch (in chunks if needed); logits and the values."""
        rows = self._rows_per_chunk(B, T, record, position)
        try:
            if rows >= B:
                hooks = Hooks(record=record, edits=edits)
                logits, values = run_rows(0, B, hooks), hooks.values
            else:
                logits, values = None, {}
                for start in range(0, B, rows):
                    hooks = Hooks(record=record, edits=edits)
                    part, stop = run_rows(start, start + rows, hooks), min(B, start + rows)
                    if logits is None:
                        logits = np.empty((B,) + part.shape[1:], part.dtype)
                        values = {n: np.empty((B,) + v.shape[1:], v.dtype) for n, v in hooks.values.items()}
                    logits[start:stop] = part
                    for name, value in hooks.values.items():
                        values[name][start:stop] = value
                    del part, hooks
                for value in values.values():
                    value.flags.writeable = False
        except MemoryError:
            out, work = self._row_bytes(T, record, position)
            raise InputError(
                f"token ids: ran out of memory running {B} prompts x {T} tokens (the logits{' and trace' if record else ''} "
                f"need {_size(B * out)}, each chunk of {min(rows, B)} prompts about {_size(min(rows, B) * work)} more); "
                "pass fewer prompts at a time or lower model.chunk_bytes") from None
        return logits, values

    def _row_bytes(self, T: int, record: frozenset, position: int | None = None) -> tuple[int, int]:
        """Bytes per prompt of (the returned logits + recorded activations, the working set of a run)."""
        c, size = self.config, self.dtype.itemsize
        traced = sum(a * T + b * T * T for a, b in (self._elements[n] for n in record))
        logit_rows = T if position is None else 1
        work = logit_rows * c.d_vocab + T * (3 * c.d_mlp + 16 * c.d_model) + 4 * c.n_heads * T * T + traced
        return size * (logit_rows * c.d_vocab + traced), size * work

    def chunk_rows(self, n_tokens: int, logits_at: int | None = None) -> int:
        """How many sequences of ``n_tokens`` one run (no trace) takes under ``chunk_bytes``: the batch size
        that batched sweeps use."""
        position = None if logits_at is None else _position(logits_at, n_tokens)
        return max(1, check_int(self.chunk_bytes, "model.chunk_bytes", low=1)
                   // self._row_bytes(n_tokens, frozenset(), position)[1])

    def _rows_per_chunk(self, B: int, T: int, record: frozenset, position: int | None = None) -> int:
        """Prompts per chunk under ``chunk_bytes``; refuses a batch whose outputs cannot fit in memory."""
        budget = check_int(self.chunk_bytes, "model.chunk_bytes", low=1)
        out, work = self._row_bytes(T, record, position)
        rows = max(1, budget // work)
        need = B * out + min(rows, B) * work
        if need > _CHECK_MEMORY_ABOVE:
            available = available_memory()
            if available is not None:
                if B * out + work > available:  # not even one prompt at a time beside the outputs
                    fit = max(0, (available - work) // out)
                    raise InputError(
                        f"token ids: {B} prompts x {T} tokens are too many for the memory available: the logits "
                        f"[{B}, {T}, {self.config.d_vocab}] ({self.dtype}){' and the trace' if record else ''} alone "
                        f"need {_size(B * out)}, and {_size(available)} is available; pass fewer prompts "
                        f"at a time (about {fit} fit){' or record fewer activations' if record else ''}")
                rows = max(1, min(rows, (available - B * out) // work))  # smaller chunks if memory is short
        return min(rows, B)

    def _run(self, ids: np.ndarray, hooks: Hooks, position: int | None = None) -> np.ndarray:
        """The forward pass of checked int64 ids [B, T] -> logits [B, T, vocab] (or [B, vocab] at ``position``)."""
        B, T = ids.shape
        W = self.weights
        embed = hooks("hook_embed", W["embed.W_E"][ids])  # [B, T, d]
        pos = hooks("hook_pos_embed", np.broadcast_to(W["pos_embed.W_pos"][:T], embed.shape))  # [B, T, d]
        return self._run_from((0, 0), embed + pos, hooks, position)


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


def _elements_per_prompt(c: Config, name: str) -> tuple[int, int]:
    """(a, b): one prompt of T tokens holds a * T + b * T * T elements of activation ``name``."""
    if name.endswith(("hook_attn_scores", "hook_pattern")):
        return 0, c.n_heads
    if name.endswith("hook_scale"):
        return 1, 0
    if name.endswith("hook_result"):
        return c.n_heads * c.d_model, 0
    if name.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return c.d_mlp, 0
    return c.d_model, 0


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e8 else f"{n_bytes / 1e6:.1f} MB"


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


def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of MemAvailable, the cgroup's memory.max headroom
    and the RLIMIT_AS headroom (None where none of them can be read, e.g. not on Linux)."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            limits.append(soft - used)
    except (ImportError, OSError, ValueError, StopIteration):
        pass
    return max(0, min(limits)) if limits else None
