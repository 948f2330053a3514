"""The torch backend (optional: torch + transformers). Three independent checks of the oracle:

(a) forward: transformers' GPTNeoForCausalLM in float64 (its float32 q/k cast neutralised) vs the oracle;
(b) path features: torch autograd of n . logits along a path with every off-path quantity frozen, using
    torch's own LayerNorm and tanh-GELU, vs ``refimpl.propagate`` in exact-LayerNorm mode;
(c) a measurement the paper never made: the FULL gradient of n . logits with respect to one head's
    input (through its query, key and value and every later layer, nothing frozen), compared with the
    OV-only direct-path feature, per head.
"""

from __future__ import annotations

import numpy as np

import refimpl
from refimpl.propagation import parse_path

from .checks import Check, relative_check
from .torch_peer import exact_attention, load_peer, peer_forward


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


def torch_path_gradient(model, observable, path, points: dict, mlp_inputs: dict) -> np.ndarray:
    """(b) grad_x of u . LN_f(...) along ``path`` in torch, each nonlinearity held at its own point.

    ``points[name]`` is the input of LayerNorm ``name`` (exact mode); ``mlp_inputs[layer]`` the MLP input
    at which an MLP node is linearised. Off-path parts of the residual are constants chosen so that, at
    x = points[first LayerNorm], every LayerNorm and MLP sees exactly its point.
    """
    import torch
    import torch.nn.functional as F

    nodes = parse_path(model, path)
    W = {k: _t(v) for k, v in model.weights.items()}
    eps, d = model.config.eps, model.config.d_model

    def ln(name, x):
        return F.layer_norm(x, (d,), W[name + ".w"], W[name + ".b"], eps)

    def node_output(node, ln_in):
        if node.kind == "attn":
            p = f"blocks.{node.layer}.attn."
            return ln(node.layer_norm, ln_in) @ W[p + "W_V"][node.head] @ W[p + "W_O"][node.head]
        p = f"blocks.{node.layer}.mlp."
        shift = _t(mlp_inputs[node.layer]) - ln(node.layer_norm, _t(points[node.layer_norm]))
        pre = (shift + ln(node.layer_norm, ln_in)) @ W[p + "W_in"] + W[p + "b_in"]
        return F.gelu(pre, approximate="tanh") @ W[p + "W_out"] + W[p + "b_out"]

    def chain(x, at_point):
        out = None
        for i, node in enumerate(nodes):
            if i == 0:
                ln_in = x
            elif at_point[i - 1] is None:  # the pass at the points themselves
                ln_in = _t(points[node.layer_norm])
            else:
                ln_in = _t(points[node.layer_norm]) - at_point[i - 1] + out
            out = node_output(node, ln_in)
            yield out

    x0 = _t(points[nodes[0].layer_norm])
    with torch.no_grad():
        at_point = list(chain(x0, [None] * len(nodes)))
    x = x0.clone().requires_grad_(True)
    outputs = list(chain(x, at_point))
    final_in = _t(points["ln_final"]) - at_point[-1] + outputs[-1]
    value = _t(observable.residual) @ ln("ln_final", final_in)
    value.backward()
    return x.grad.numpy()


def path_check(model, observable, path, points: dict, mlp_points: dict | None, tolerance: float,
               mlp_fallback: str | None = None) -> Check:
    """(b) the oracle's exact-mode path feature vs torch autograd at the same points."""
    result = refimpl.propagate(model, observable, path, layernorm="exact", points=points, mlp_points=mlp_points,
                               mlp_fallback=mlp_fallback)
    nodes = parse_path(model, path)
    mlp_inputs = {}
    steps = {s.node: s for s in result.steps}
    for node in nodes:
        if node.kind == "mlp":
            x_neg, x_pos = mlp_points[node.layer]
            t = steps[node.label].boundary_t
            mlp_inputs[node.layer] = (1 - t) * np.asarray(x_neg, np.float64) + t * np.asarray(x_pos, np.float64)
    reference = torch_path_gradient(model, observable, path, points, mlp_inputs)
    return relative_check(f"torch (b): autograd along {result.path} vs propagated feature (exact LN)",
                          result.vector, reference, tolerance, group="torch")


def full_gradient_capture(model, observable, ids, position: int | None = None) -> list[dict]:
    """(c) per head: the full gradient g of n . logits[last] w.r.t. the head's input (its ln_1 output at
    ``position``, entering q, k and v) vs the OV-only direct-path feature g_ov = A[last, pos] W_OV^T J_f^T u
    (J_f the exact ln_final Jacobian at the run's own input). Returns cosine and captured share g.g_ov/|g|^2.
    ``position=None`` takes, per head, the token the last query attends to most (where the head reads)."""
    import torch

    from refimpl import jacobians

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
    dh = cfg.d_head
    rows = []
    for layer in range(cfg.n_layers):
        attention = peer.transformer.h[layer].attn.attention
        features = refimpl.propagation.head_feature_layer(oracle, layer, u)
        for head in range(cfg.n_heads):
            pattern_row = trace[f"blocks.{layer}.attn.hook_pattern"][0, head, -1]
            source = int(np.argmax(pattern_row)) if position is None else position
            delta = torch.zeros(cfg.d_model, dtype=torch.float64, requires_grad=True)
            handles = []
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
                def hook(module, inputs, output, proj=proj):
                    out = output.clone()
                    rows_ = slice(head * dh, (head + 1) * dh)
                    out[0, source, rows_] = out[0, source, rows_] + delta @ proj.weight[rows_].T
                    return out
                handles.append(proj.register_forward_hook(hook))
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
