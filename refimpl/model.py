"""The GPT-Neo forward pass (pre-LN blocks, unscaled attention, local windows, gelu_new, tied unembedding)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

import numpy as np

from . import ops
from .config import Config
from .errors import InputError
from .tokenizer import Tokenizer
from .trace import Hooks, Trace, activation_names, check_names


@dataclass(frozen=True)
class _BlockMatrices:
    """Flat 2-D views of one block's weights for single-GEMM projections (no copies)."""

    W_Q: np.ndarray  # [d, H*dh]
    W_K: np.ndarray  # [d, H*dh]
    W_V: np.ndarray  # [d, H*dh]
    W_O: np.ndarray  # [H*dh, d]


def _flatten_in(W: np.ndarray) -> np.ndarray:
    """[H, d, dh] -> [d, H*dh] (a view of the checkpoint's [H*dh, d] matrix transposed)."""
    H, d, dh = W.shape
    return W.transpose(1, 0, 2).reshape(d, H * dh)


class Model:
    """A loaded GPT-Neo: ``config``, ``weights`` (TransformerLens names), ``tokenizer``, forward and trace."""

    def __init__(self, config: Config, weights: Mapping[str, np.ndarray], tokenizer: Tokenizer,
                 source: str | None = None, path: Path | None = None):
        self.config = config
        self.weights = MappingProxyType(dict(weights))
        self.tokenizer = tokenizer
        self.source = source
        self.path = path
        self.dtype = self.weights["embed.W_E"].dtype
        self._names = activation_names(config.n_layers)
        self._masks: dict[tuple[int, int | None], np.ndarray] = {}
        self._flat = [
            _BlockMatrices(
                W_Q=_flatten_in(self.weights[f"blocks.{l}.attn.W_Q"]),
                W_K=_flatten_in(self.weights[f"blocks.{l}.attn.W_K"]),
                W_V=_flatten_in(self.weights[f"blocks.{l}.attn.W_V"]),
                W_O=self.weights[f"blocks.{l}.attn.W_O"].reshape(-1, config.d_model),
            )
            for l in range(config.n_layers)
        ]

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({self.source!r}, {c.n_layers} layers, d_model={c.d_model}, {c.n_heads} heads, "
                f"dtype={self.dtype})")

    # ----------------------------------------------------------------- public API
    def activation_names(self) -> list[str]:
        """Every name ``run_with_trace`` can record or edit, in forward order."""
        return list(self._names)

    def to_ids(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as a 1-D int64 array."""
        return np.asarray(self.tokenizer.encode(text), dtype=np.int64)

    def forward(self, ids, edits: Mapping[str, Callable] | None = None) -> np.ndarray:
        """Logits for token ids ``[seq]`` -> ``[seq, vocab]`` or ``[batch, seq]`` -> ``[batch, seq, vocab]``.

        ``edits`` maps activation names to functions ``value -> new value`` applied during the run.
        """
        if edits:
            check_names(edits, self._names, "edits")
        return self._run(ids, Hooks(edits=edits))

    def run_with_trace(self, ids, names: Iterable[str] | None = None,
                       edits: Mapping[str, Callable] | None = None) -> tuple[np.ndarray, Trace]:
        """Logits and a read-only trace of the activations ``names`` (all when None).

        Trace arrays always carry the batch axis ([1, ...] for 1-D ids). An edited activation is
        recorded as edited, i.e. as the value the rest of the model saw.
        """
        record = self._names if names is None else list(names)
        if isinstance(names, str):
            raise InputError("names must be a list of activation names, not a single string")
        check_names(record, self._names, "names")
        if edits:
            check_names(edits, self._names, "edits")
        hooks = Hooks(record=frozenset(record), edits=edits)
        logits = self._run(ids, hooks)
        return logits, Trace(hooks.values)

    # ----------------------------------------------------------------- input checks
    def check_ids(self, ids) -> tuple[np.ndarray, bool]:
        """Validate token ids; return them as int64 ``[batch, seq]`` and whether the input was 1-D."""
        arr = np.asarray(ids)
        if arr.dtype == object or arr.dtype.kind not in "iu":
            if arr.size == 0 and arr.dtype.kind == "f":
                arr = arr.astype(np.int64)
            else:
                raise InputError(f"token ids must be integers, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2):
            raise InputError(f"token ids must be shaped [seq] or [batch, seq], got shape {arr.shape}")
        if arr.shape[-1] == 0 or arr.size == 0:
            raise InputError(f"token ids are empty (shape {arr.shape}): need at least one token")
        n_ctx, vocab = self.config.n_ctx, self.config.d_vocab
        if arr.shape[-1] > n_ctx:
            raise InputError(f"sequence of {arr.shape[-1]} tokens is longer than the position table ({n_ctx})")
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
        q = hooks(p + "hook_q", ops.split_heads(ops.linear(x, flat.W_Q), H))  # [B, T, H, dh]
        k = hooks(p + "hook_k", ops.split_heads(ops.linear(x, flat.W_K), H))  # [B, T, H, dh]
        v = hooks(p + "hook_v", ops.split_heads(ops.linear(x, flat.W_V), H))  # [B, T, H, dh]
        visible = self._mask(x.shape[1], self.config.window(layer))  # [T, T]
        scores = hooks(p + "hook_attn_scores", ops.attention_scores(q, k, visible))  # [B, H, T, T]
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
        post = hooks(p + "hook_post", ops.gelu_new(pre))  # [B, T, d_mlp]
        return ops.linear(post, W[p + "W_out"], W[p + "b_out"])  # [B, T, d]

    def _block(self, layer: int, resid_pre: np.ndarray, hooks: Hooks) -> np.ndarray:
        """resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid))."""
        p = f"blocks.{layer}."
        resid_pre = hooks(p + "hook_resid_pre", resid_pre)
        attn_out = hooks(p + "hook_attn_out", self._attention(layer, self._layer_norm(p + "ln1.", resid_pre, hooks), hooks))
        resid_mid = hooks(p + "hook_resid_mid", resid_pre + attn_out)
        mlp_out = hooks(p + "hook_mlp_out", self._mlp(layer, self._layer_norm(p + "ln2.", resid_mid, hooks), hooks))
        return hooks(p + "hook_resid_post", resid_mid + mlp_out)

    def _run(self, ids, hooks: Hooks) -> np.ndarray:
        ids, squeeze = self.check_ids(ids)
        B, T = ids.shape
        W = self.weights
        embed = hooks("hook_embed", W["embed.W_E"][ids])  # [B, T, d]
        pos = hooks("hook_pos_embed", np.broadcast_to(W["pos_embed.W_pos"][:T], embed.shape))  # [B, T, d]
        resid = embed + pos
        for layer in range(self.config.n_layers):
            resid = self._block(layer, resid, hooks)
        final = self._layer_norm("ln_final.", resid, hooks)  # [B, T, d]
        logits = ops.linear(final, W["unembed.W_U"])  # [B, T, vocab]
        return logits[0] if squeeze else logits
