"""One head's value and output matrices read straight from a checkpoint's stored tensors (Hugging Face keys
with the ``transformer.`` prefix), for the references that rebuild W_OV without refimpl's conversion.

GPT-Neo stores ``nn.Linear`` ``[out, in]``: head h's value rows ``h*dh:(h+1)*dh`` of ``v_proj.weight`` and its
columns of ``out_proj.weight``. GPT-2 stores Conv1D ``[in, out]``: the value block is columns ``2d:3d`` of the
fused ``c_attn.weight``, head h its columns ``2d + h*dh : 2d + (h+1)*dh``, and head h's rows of ``c_proj``.
"""

from __future__ import annotations

import numpy as np


def head_value_output(raw: dict, layer: int, head: int, dh: int) -> tuple[np.ndarray, np.ndarray]:
    """(V [dh, d], O [d, dh]) in the column convention: the head's output is O @ (V @ x)."""
    p, rows = f"transformer.h.{layer}.", slice(head * dh, (head + 1) * dh)
    if p + "attn.c_attn.weight" in raw:  # GPT-2
        qkv = raw[p + "attn.c_attn.weight"]  # [d, 3d]
        d = qkv.shape[0]
        return qkv[:, 2 * d + head * dh:2 * d + (head + 1) * dh].T, raw[p + "attn.c_proj.weight"][rows].T
    return raw[p + "attn.attention.v_proj.weight"][rows], raw[p + "attn.attention.out_proj.weight"][:, rows]


def dense_ov(raw: dict, layer: int, head: int, dh: int) -> np.ndarray:
    """The head's dense W_OV [d, d], column convention (output = W_OV x)."""
    V, O = head_value_output(raw, layer, head, dh)
    return O @ V


def unembedding(raw: dict) -> np.ndarray:
    """W_U as stored, [V, d]: an explicit ``lm_head.weight``, else the tied token embedding."""
    return raw.get("lm_head.weight", raw["transformer.wte.weight"])


def attention_output_bias(raw: dict, layer: int) -> np.ndarray:
    """The attention output bias b_O [d] (``out_proj.bias`` or ``c_proj.bias``)."""
    p = f"transformer.h.{layer}.attn."
    return raw[p + "c_proj.bias"] if p + "c_proj.bias" in raw else raw[p + "attention.out_proj.bias"]


def mlp_weights(raw: dict, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(W_fc [m, d], b_fc [m], W_proj [d, m], b_proj [d]) in the column convention: MLP(x) = W_proj f(W_fc x + b_fc)
    + b_proj. GPT-Neo stores them so; GPT-2's Conv1D stores their transposes."""
    p = f"transformer.h.{layer}.mlp."
    fc, proj = raw[p + "c_fc.weight"], raw[p + "c_proj.weight"]
    gpt2 = f"transformer.h.{layer}.attn.c_attn.weight" in raw
    return (fc.T if gpt2 else fc), raw[p + "c_fc.bias"], (proj.T if gpt2 else proj), raw[p + "c_proj.bias"]
