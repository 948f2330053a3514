"""Path effects measured by running the oracle itself with everything off the path frozen.

With every attention pattern frozen, every LayerNorm replaced by the identity (its "ignore" mode),
every MLP output frozen, and every head's value input frozen except the heads listed as ``live``, the
model is affine in a perturbation ``delta`` added to one head's input at one position; the change of
n . logits is then exactly linear in ``delta``. Differences of such runs isolate one path, which is
what a propagated feature vector (layernorm="ignore") must reproduce.
"""

from __future__ import annotations

import numpy as np

from refimpl import ops


def frozen_observable(model, ids: np.ndarray, observable, live: set, source: tuple[int, int] | None = None,
                      delta: np.ndarray | None = None, position: int = -1, layer_norms: str = "identity") -> float:
    """n . logits at the last position of the batch-1 ``ids`` in the frozen model described above.

    ``live``: heads (layer, head) whose value input is computed from the (frozen-linear) residual;
    all other heads read their clean values. ``delta`` [d] is added to the input of ``source`` at
    ``position``, for that head only. ``layer_norms="identity"`` replaces every LayerNorm by the identity
    and adds ``delta`` to the head's LayerNorm output; ``"live"`` keeps the real LayerNorms (their scales
    respond to the perturbation) and adds ``delta`` to the residual entering the source head's ln_1.
    """
    ids = np.atleast_2d(ids)
    cfg = model.config
    names = [n for n in model.activation_names() if n.endswith(("hook_pattern", "hook_v", "hook_mlp_out"))]
    _, clean = model.run_with_trace(ids, names=names)
    stash: dict[str, np.ndarray] = {}
    edits = {}

    def keep(key):
        def edit(x):
            stash[key] = x
            return x
        return edit

    def identity_of(key):
        return lambda x: stash[key].copy()

    identity = layer_norms == "identity"
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        edits[p + "hook_resid_pre"] = keep(p + "ln1")
        edits[p + "hook_resid_mid"] = keep(p + "ln2")
        if identity:
            edits[p + "ln1.hook_normalized"] = identity_of(p + "ln1")
            edits[p + "ln2.hook_normalized"] = identity_of(p + "ln2")
        edits[p + "attn.hook_pattern"] = (lambda name: lambda x: np.array(clean[name]))(p + "attn.hook_pattern")
        edits[p + "hook_mlp_out"] = (lambda name: lambda x: np.array(clean[name]))(p + "hook_mlp_out")

        def value_edit(x, layer=l):
            out = np.array(clean[f"blocks.{layer}.attn.hook_v"])
            for head in range(cfg.n_heads):
                if (layer, head) in live:
                    out[:, :, head] = x[:, :, head]
            if source is not None and source[0] == layer and delta is not None:
                W_V = model.weights[f"blocks.{layer}.attn.W_V"][source[1]]
                delta_ = np.asarray(delta, dtype=out.dtype)
                if not identity:  # the change of ln_1's output when its input moves by delta
                    w, b = model.weights[f"blocks.{layer}.ln1.w"], model.weights[f"blocks.{layer}.ln1.b"]
                    x = stash[f"blocks.{layer}.ln1"][:, position]
                    delta_ = ops.layer_norm(x + delta_, w, b, cfg.eps)[0] - ops.layer_norm(x, w, b, cfg.eps)[0]
                out[:, position, source[1]] += delta_ @ W_V
            return out

        edits[p + "attn.hook_v"] = value_edit
    if identity:
        last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
        edits[last] = keep("final")
        edits["ln_final.hook_normalized"] = identity_of("final")
    logits = model.forward(ids, edits=edits)
    return float(logits[0, -1] @ observable.vocab)


def attention_weight(model, ids, layer: int, head: int, query: int = -1, key: int = -1) -> float:
    """The clean attention weight of ``head`` in ``layer`` from ``query`` to ``key``."""
    _, trace = model.run_with_trace(np.atleast_2d(ids), names=[f"blocks.{layer}.attn.hook_pattern"])
    return float(trace[f"blocks.{layer}.attn.hook_pattern"][0, head, query, key])
