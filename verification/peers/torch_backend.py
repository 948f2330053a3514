"""The torch backend (optional: torch + transformers). Three independent checks of the oracle:

(a) forward: transformers' GPTNeoForCausalLM or GPT2LMHeadModel in float64 (its float32 q/k cast neutralised) vs the oracle;
(b) path features: torch autograd of n . logits along a path built from the transformers module graph
    alone (h[l].ln_1 feeds attention l, h[l].ln_2 feeds h[l].mlp, LayerNorm inputs captured by hooks on a
    real run, MLP points by the reference's own bisection), vs ``refimpl.propagate`` in exact-LayerNorm mode;
(c) a measurement the paper never made: the FULL gradient of n . logits with respect to one head's
    input (through its query, key and value and every later layer, nothing frozen), compared with the
    OV-only direct-path feature, per head.
"""

from __future__ import annotations

import numpy as np

import refimpl

from verification.policy.checks import Check, relative_check
from verification.peers.torch_peer import exact_attention, head_value_output, load_peer, peer_forward


def _t(array):
    import torch

    return torch.as_tensor(np.array(array, dtype=np.float64))


def forward_checks(model, ids, tolerance: float) -> list[Check]:
    """(a) oracle logits and every block's input residual (and the final one) vs transformers' in float64."""
    ids = np.atleast_2d(ids)
    peer_logits, peer_resid = peer_forward(load_peer(model.path, "float64"), ids)
    oracle = refimpl.load(model.path, dtype="float64")
    L = oracle.config.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    logits, trace = oracle.run_with_trace(ids, names=names)
    checks = [relative_check("torch (a): forward logits vs transformers float64", logits, peer_logits, tolerance,
                             group="torch")]
    for name, expected in zip(names, peer_resid):
        checks.append(relative_check(f"torch (a): residual {name} vs transformers float64", trace[name], expected,
                                     tolerance, group="torch"))
    return checks


# ------------------------------------------------------------------ one head's inputs in transformers' own modules
# GPT-Neo: nn.Linear [out, in], separate q/k/v_proj. GPT-2: Conv1D [in, out], fused c_attn (q | k | v).
def _head_input_hooks(peer, layer: int, head: int, source: int, delta) -> list:
    """Forward hooks adding ``delta``'s image to head ``head``'s query, key and value at token ``source`` (the
    head's input moved by delta, nothing else); returns the handles."""
    cfg, dh = peer.config, peer.config.hidden_size // peer.config.num_attention_heads
    if cfg.model_type == "gpt2":
        d, c_attn = cfg.hidden_size, peer.transformer.h[layer].attn.c_attn
        cols = [slice(part * d + head * dh, part * d + (head + 1) * dh) for part in range(3)]

        def fused(module, inputs, output):
            out = output.clone()
            for c in cols:
                out[0, source, c] = out[0, source, c] + delta @ module.weight[:, c]
            return out
        return [c_attn.register_forward_hook(fused)]
    attention = peer.transformer.h[layer].attn.attention
    handles = []
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        def hook(module, inputs, output):
            out = output.clone()
            rows_ = slice(head * dh, (head + 1) * dh)
            out[0, source, rows_] = out[0, source, rows_] + delta @ module.weight[rows_].T
            return out
        handles.append(proj.register_forward_hook(hook))
    return handles


def capture_module_inputs(peer, ids) -> dict:
    """Inputs of every ln_1, ln_2 (and the MLP, i.e. ln_2's output) and ln_f module in a real run of the
    peer on ``ids``, captured by forward hooks on the modules themselves: {(module, layer): [B, T, d]}."""
    import torch

    captured, handles = {}, []

    def keep(key, output=False):
        def hook(module, args, out=None):
            captured[key] = (out if output else args[0]).detach().clone()
        return hook

    for layer, block in enumerate(peer.transformer.h):
        handles.append(block.ln_1.register_forward_pre_hook(keep(("ln_1", layer))))
        handles.append(block.ln_2.register_forward_pre_hook(keep(("ln_2", layer))))
        handles.append(block.ln_2.register_forward_hook(keep(("mlp_in", layer), output=True)))
    handles.append(peer.transformer.ln_f.register_forward_pre_hook(keep(("ln_f", None))))
    try:
        with torch.no_grad(), exact_attention():
            peer(torch.as_tensor(np.atleast_2d(ids), dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return captured


def torch_path_reference(peer, observable, path, ids, mlp_pair_ids=None, mlp_fallback: str | None = None,
                         position: int = -1) -> tuple[np.ndarray, dict]:
    """(b) the path's feature from the transformers module graph alone: attention l reads
    ``transformer.h[l].ln_1``, MLP l reads ``.ln_2`` and is ``.mlp``, the logits read ``ln_f``; every
    LayerNorm is linearised at its input captured by hooks on a real run of ``ids``; an MLP node is
    linearised at the root t of g . mlp((1 - t) x_0 + t x_1) (bisection in torch; x_0, x_1 the MLP inputs of
    the two prompts ``mlp_pair_ids`` at ``position``, g the downstream gradient). Returns (grad, {layer: t})."""
    import torch

    from verification.references.linearized import bisect_segment, read_path

    nodes = read_path(path)
    blocks = peer.transformer.h
    cfg = peer.config
    points = capture_module_inputs(peer, ids)
    pair = capture_module_inputs(peer, mlp_pair_ids) if mlp_pair_ids is not None else {}
    with torch.no_grad():
        u = peer.get_output_embeddings().weight.T @ _t(observable.vocab)  # W_U^T n  [d]
    mlp_at, ts = {}, {}

    def ln_of(kind, layer):
        return blocks[layer].ln_1 if kind == "attn" else blocks[layer].ln_2

    def point(kind, layer):
        return points[("ln_1" if kind == "attn" else "ln_2", layer)][0, position]

    def node_out(node, ln_input):
        kind, layer, head = node
        if kind == "attn":
            W_v, W_o = head_value_output(peer, layer, head)  # [dh, d], [d, dh]: v = W_v x (its bias is no direction)
            return W_o @ (W_v @ ln_of(kind, layer)(ln_input))
        ln = ln_of(kind, layer)
        return blocks[layer].mlp(mlp_at[layer] + ln(ln_input) - ln(point(kind, layer)))

    def downstream(start, change):
        """u . ln_f(...) when the LayerNorm input of nodes[start] (or ln_f's) moves by ``change``."""
        for node in nodes[start:]:
            at = point(node[0], node[1])
            with torch.no_grad():
                base = node_out(node, at)
            change = node_out(node, at + change) - base
        return u @ peer.transformer.ln_f(points[("ln_f", None)][0, position] + change)

    def gradient(start):
        x = torch.zeros(cfg.hidden_size, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(downstream(start, x), x)[0].detach()

    for k in range(len(nodes) - 1, -1, -1):
        kind, layer, _ = nodes[k]
        if kind == "mlp":
            g = gradient(k + 1)
            x0, x1 = pair[("mlp_in", layer)][0, position], pair[("mlp_in", layer)][1, position]
            with torch.no_grad():
                t = bisect_segment(lambda s: float(g @ blocks[layer].mlp((1 - s) * x0 + s * x1)), mlp_fallback)
            mlp_at[layer], ts[layer] = (1 - t) * x0 + t * x1, t
    return gradient(0).numpy(), ts


def path_check(model, observable, path, ids, tolerance: float, mlp_pair_ids=None, mlp_fallback: str | None = None,
               peer=None) -> Check:
    """(b) the oracle's exact-mode path feature (points from ``ln_input_points``, MLP inputs from its own
    trace) vs ``torch_path_reference`` built from the transformers module graph."""
    ids = np.atleast_2d(ids)
    peer = peer if peer is not None else load_peer(model.path, "float64")
    points = refimpl.ln_input_points(model, ids)
    mlp_points = None
    if mlp_pair_ids is not None:
        names = [f"blocks.{l}.ln2.hook_normalized" for l in range(model.config.n_layers)]
        _, trace = model.run_with_trace(np.atleast_2d(mlp_pair_ids), names=names)
        mlp_points = {l: (trace[n][0, -1], trace[n][1, -1]) for l, n in enumerate(names)}
    result = refimpl.propagate(model, observable, path, layernorm="exact", points=points, mlp_points=mlp_points,
                               mlp_fallback=mlp_fallback)
    reference, _ = torch_path_reference(peer, observable, path, ids, mlp_pair_ids, mlp_fallback)
    return relative_check(f"torch (b): autograd on the transformers modules along {result.path} vs propagated "
                          "feature (exact LN)", result.vector, reference, tolerance, group="torch")


def full_gradient_capture(model, observable, ids, position: int | None = None) -> list[dict]:
    """(c) per head: the full gradient g of n . logits[last] w.r.t. the head's input (its ln_1 output at
    ``position``, entering q, k and v) vs the OV-only direct-path feature g_ov = A[last, pos] W_OV^T J_f^T u
    (J_f the exact ln_final Jacobian at the run's own input). Returns cosine and captured share g.g_ov/|g|^2.
    ``position=None`` takes, per head, the token the last query attends to most (where the head reads)."""
    import torch

    from refimpl.propagation import jacobians

    peer = load_peer(model.path, "float64")
    ids_t = torch.as_tensor(np.atleast_2d(ids))
    oracle = refimpl.load(model.path, dtype="float64")
    cfg = oracle.config
    last_layer = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    _, trace = oracle.run_with_trace(np.atleast_2d(ids), names=[last_layer] + [
        f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)])
    u = jacobians.layer_norm_vjp(trace[last_layer][0, -1], oracle.weights["ln_final.w"], cfg.eps,
                                 observable.residual.astype(np.float64))
    n = _t(observable.vocab)
    rows = []
    for layer in range(cfg.n_layers):
        features = refimpl.propagation.propagate.head_feature_layer(oracle, layer, u)
        for head in range(cfg.n_heads):
            pattern_row = trace[f"blocks.{layer}.attn.hook_pattern"][0, head, -1]
            source = int(np.argmax(pattern_row)) if position is None else position
            delta = torch.zeros(cfg.d_model, dtype=torch.float64, requires_grad=True)
            handles = _head_input_hooks(peer, layer, head, source, delta)
            try:
                with exact_attention():
                    logits = peer(ids_t).logits
                (logits[0, -1] @ n).backward()
            finally:
                for h in handles:
                    h.remove()
            g = delta.grad.numpy()
            g_ov = pattern_row[source] * features[head]
            gg = float(g @ g)
            rows.append({"label": f"{layer}.{head}", "layer": layer, "head": head, "position": source,
                         "attention": float(pattern_row[source]), "full_norm": float(np.sqrt(gg)),
                         "ov_norm": float(np.linalg.norm(g_ov)),
                         "cosine": float(g @ g_ov / np.sqrt(gg * (g_ov @ g_ov))) if gg and g_ov @ g_ov else float("nan"),
                         "captured_share": float(g @ g_ov / gg) if gg else float("nan")})
    return rows
