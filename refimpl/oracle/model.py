"""The runner: a loaded model's forward pass, trace, edits, logits at one position, ``run_from`` and
``resume``, over the blocks its family supplies (``model.blocks``; the serial block of GPT-Neo and GPT-2 is
``refimpl.families.serial_blocks``) and in chunks under a memory budget (``refimpl.oracle.memory``)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np

from refimpl.errors import InputError
from refimpl.families import family
from refimpl.oracle.config import Config
from refimpl.oracle.memory import DEFAULT_CHUNK_BYTES, ChunkedRuns, _elements_per_prompt
from refimpl.oracle.token_ids import _activation, _ids_array, _position
from refimpl.oracle.tokenizer import Tokenizer
from refimpl.oracle.trace import Trace, activation_names, check_edits, check_names, check_record_names



class Model(ChunkedRuns):
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
        self._elements = {name: _elements_per_prompt(config, name) for name in self._names}
        self.blocks = self.family.blocks(config, self.weights, self.activation)

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
                                       lambda a, b, hooks: self.blocks._run_from(start, act[a:b], hooks, position))
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
                                               lambda a, b, hooks: self.blocks._run_from(start, act[a:b], hooks, position))
                values.update({n: resume[n] for n in before})
                return (logits[0] if squeeze else logits), values, ids
        logits, values = self._execute(B, T, record, edits, position,
                                       lambda a, b, hooks: self.blocks._run(ids[a:b], hooks, position))
        return (logits[0] if squeeze else logits), values, ids

