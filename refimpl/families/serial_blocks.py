"""The serial pre-LN block of GPT-Neo and GPT-2, one equation per method, on TransformerLens-layout weights:

    resid_mid = resid_pre + attn(ln1(resid_pre)),   resid_post = resid_mid + mlp(ln2(resid_mid)),

then ln_final and the unembedding. What differs between the two families is data: the attention divisor per
layer (none for GPT-Neo, sqrt(d_head) for GPT-2), the local windows (GPT-Neo), the q/k/v biases (GPT-2; absent
for GPT-Neo), the MLP activation and the unembedding. A family supplies its blocks as ``Family.blocks``; the
runner (``refimpl.oracle.model``) calls only ``_run`` (from the embedding) and ``_run_from`` (from a resume point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from refimpl.oracle import ops
from refimpl.oracle.config import Config
from refimpl.oracle.trace import Hooks


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



class SerialBlocks:
    """The forward maths of one loaded serial model: flat views of its attention weights, its causal (and
    local) masks, and the embedding, blocks and unembedding as methods."""

    def __init__(self, config: Config, weights: Mapping[str, np.ndarray], activation):
        self.config, self.weights, self.activation = config, weights, activation
        self._masks: dict[tuple[int, int | None], np.ndarray] = {}
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

    def _run(self, ids: np.ndarray, hooks: Hooks, position: int | None = None) -> np.ndarray:
        """The forward pass of checked int64 ids [B, T] -> logits [B, T, vocab] (or [B, vocab] at ``position``)."""
        B, T = ids.shape
        W = self.weights
        embed = hooks("hook_embed", W["embed.W_E"][ids])  # [B, T, d]
        pos = hooks("hook_pos_embed", np.broadcast_to(W["pos_embed.W_pos"][:T], embed.shape))  # [B, T, d]
        return self._run_from((0, 0), embed + pos, hooks, position)
