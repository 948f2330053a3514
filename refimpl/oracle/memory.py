"""Memory budgeting of the runner: how many prompts one chunk of a batch takes under ``chunk_bytes``, the
refusal of a batch whose outputs cannot fit, and what this process can still allocate."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from refimpl.errors import InputError, check_int
from refimpl.oracle.config import Config
from refimpl.oracle.token_ids import _position
from refimpl.oracle.trace import Hooks


DEFAULT_CHUNK_BYTES = 1 << 30  # working memory of one chunk of the batch (see Model.chunk_bytes)

_CHECK_MEMORY_ABOVE = 64 << 20  # below this a run is not worth a look at /proc (MemoryError is still caught)


class ChunkedRuns:
    """The chunked execution of ``Model`` (a mixin: it reads ``config``, ``dtype``, ``chunk_bytes`` and
    ``_elements``, the per-activation element counts)."""

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
