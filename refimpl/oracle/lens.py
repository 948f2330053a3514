"""Logit lens: read any residual-stream vector through ln_final (optional) and the unembedding."""

from __future__ import annotations

import numpy as np

from refimpl.oracle import ops
from refimpl.errors import InputError, check_int
from refimpl.oracle.model import Model


def lens_logits(model: Model, resid: np.ndarray, apply_ln_final: bool = True) -> np.ndarray:
    """logits = ln_final(resid) @ W_U (or resid @ W_U without ln_final).  [..., d] -> [..., vocab]"""
    resid = np.asarray(resid)
    if resid.dtype.kind not in "iuf" or resid.ndim < 1 or resid.shape[-1] != model.config.d_model:
        raise InputError(f"resid must be a real array [..., {model.config.d_model}], got shape {resid.shape} "
                         f"dtype {resid.dtype}")
    W = model.weights
    x = ops.layer_norm(resid, W["ln_final.w"], W["ln_final.b"], model.config.eps)[0] if apply_ln_final else resid
    return ops.linear(x, W["unembed.W_U"])


def top_tokens(model: Model, logits: np.ndarray, k: int = 5, largest: bool = True) -> list[tuple[str, int, float]]:
    """The k highest (or lowest) entries of a 1-D logit vector as (decoded token, id, value)."""
    k = check_int(k, "k", low=1)
    logits = np.asarray(logits)
    if logits.ndim != 1 or logits.dtype.kind not in "iuf":
        raise InputError(f"logits must be a 1-D real vector, got shape {logits.shape} dtype {logits.dtype}")
    order = np.argsort(-logits if largest else logits, kind="stable")[:k]
    return [(model.tokenizer.decode([int(i)]), int(i), float(logits[i])) for i in order]


def layer_lens(model: Model, text: str, k: int = 3) -> list[tuple[str, list[tuple[str, int, float]]]]:
    """Top-k next tokens at the last position read from every block's input and the final output."""
    k = check_int(k, "k", low=1)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.config.n_layers)]
    names.append(f"blocks.{model.config.n_layers - 1}.hook_resid_post")
    logits, trace = model.run_with_trace(model.to_ids(text), names=names)
    rows = [(name, top_tokens(model, lens_logits(model, trace[name][0, -1]), k)) for name in names]
    rows.append(("logits", top_tokens(model, logits[-1], k)))
    return rows
