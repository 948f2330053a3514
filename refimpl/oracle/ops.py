"""The transformer operators of the supported families as pure NumPy functions, one equation each, with shapes in the comments.

Row convention (x @ W). Every operator computes in the dtype of its inputs, never downcasts, and is
written without ``abs``/``max`` on the differentiable path so that complex inputs (complex-step
derivatives) pass through unchanged.
"""

from __future__ import annotations

import numpy as np

GELU_C = np.sqrt(2.0 / np.pi)


def center(x: np.ndarray) -> np.ndarray:
    """x - mean(x) over the last axis.  [..., d] -> [..., d]"""
    return x - x.mean(axis=-1, keepdims=True)


def ln_scale(centered: np.ndarray, eps: float) -> np.ndarray:
    """sqrt(mean(centered^2) + eps): biased variance, eps inside the root.  [..., d] -> [..., 1]"""
    return np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)


def ln_apply(centered: np.ndarray, scale: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """centered / scale * w + b.  [..., d], [..., 1], [d], [d] -> [..., d]"""
    return centered / scale * w + b


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """GPT-Neo LayerNorm y = (x - mean x) / sqrt(var x + eps) * w + b; returns (y, scale).  [..., d]"""
    centered = center(x)
    scale = ln_scale(centered, eps)
    return ln_apply(centered, scale, w, b), scale


def gelu_new(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), computed with in-place steps.  [...] -> [...]"""
    inner = x * x  # x^2 (x*x*x is much faster than x**3)
    inner *= x
    inner *= 0.044715
    inner += x
    inner *= GELU_C
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= x
    inner *= 0.5
    return inner


def linear(x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x @ W + b on flattened rows (one GEMM, not one per batch row).  [..., n], [n, m] -> [..., m]"""
    out = x.reshape(-1, x.shape[-1]) @ W
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], W.shape[-1])


def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """[B, T, H*dh] -> [B, T, H, dh]"""
    return x.reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)


def attention_mask(n_tokens: int, window: int | None) -> np.ndarray:
    """Key j visible to query i iff j <= i (and i - window < j for local layers).  -> bool [T, T]"""
    i = np.arange(n_tokens)[:, None]
    j = np.arange(n_tokens)[None, :]
    visible = j <= i
    if window is not None:
        visible &= j > i - window
    return visible


def attention_scores(q: np.ndarray, k: np.ndarray, visible: np.ndarray, divisor: float | None = None) -> np.ndarray:
    """q . k / divisor per head, -inf where masked. GPT-Neo does not scale (divisor None); GPT-2 divides by
    sqrt(d_head) (and by layer + 1 under ``scale_attn_by_inverse_layer_idx``).
    [B, Tq, H, dh], [B, Tk, H, dh], [Tq, Tk] -> [B, H, Tq, Tk]"""
    scores = q.transpose(0, 2, 1, 3) @ k.transpose(0, 2, 3, 1)
    if divisor is not None:
        scores /= divisor
    return np.where(visible, scores, -np.inf)


def softmax(scores: np.ndarray) -> np.ndarray:
    """exp(s - max s) / sum exp(s - max s) over the last axis (masked -inf entries become 0).  [..., T]"""
    e = np.exp(scores - scores.real.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attend(pattern: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z = pattern @ v per head.  [B, H, Tq, Tk], [B, Tk, H, dh] -> [B, Tq, H, dh]"""
    return (pattern @ v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


def head_results(z: np.ndarray, W_O: np.ndarray) -> np.ndarray:
    """Each head's output z[h] @ W_O[h] (no bias).  [B, T, H, dh], [H, dh, d] -> [B, T, H, d]"""
    B, T, H, dh = z.shape
    per_head = z.transpose(2, 0, 1, 3).reshape(H, B * T, dh) @ W_O  # [H, B*T, d]
    return per_head.reshape(H, B, T, -1).transpose(1, 2, 0, 3)
