"""Path effects measured by running the oracle itself with everything off the path frozen.

With every attention pattern frozen, every LayerNorm replaced by the identity (its "ignore" mode),
every MLP output frozen, and every head's value input frozen except the heads listed as ``live``, the
model is affine in a perturbation ``delta`` added to one head's input at one position; the change of
n . logits is then exactly linear in ``delta``. Differences of such runs isolate one path, which is
what a propagated feature vector (layernorm="ignore") must reproduce.
"""

from __future__ import annotations

import numpy as np

from refimpl.oracle import ops


def frozen_observable(model, ids: np.ndarray, observable, live: set, source: tuple[int, int] | None = None,
                      delta: np.ndarray | None = None, position: int = -1, layer_norms: str = "identity") -> float:
    """n . logits at the last position of the batch-1 ``ids`` in the frozen model described above
    (complex for ``complex_twin(model)`` and an imaginary ``delta``: a complex-step derivative).

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
    value = logits[0, -1] @ observable.vocab
    return value if np.iscomplexobj(value) else float(value)  # complex for a complex twin (complex step)


def attention_weight(model, ids, layer: int, head: int, query: int = -1, key: int = -1) -> float:
    """The clean attention weight of ``head`` in ``layer`` from ``query`` to ``key``."""
    _, trace = model.run_with_trace(np.atleast_2d(ids), names=[f"blocks.{layer}.attn.hook_pattern"])
    return float(trace[f"blocks.{layer}.attn.hook_pattern"][0, head, query, key])


# ------------------------------------------------------------------ independent path references (no propagation code)
# The reference below imports nothing of refimpl.propagation.propagate. It reads a path itself, takes the model's
# structure as its only knowledge of which LayerNorm feeds which sublayer (ln_1 reads hook_resid_pre and
# feeds attention l, ln_2 reads hook_resid_mid and feeds MLP l, ln_final reads the last hook_resid_post),
# and measures the path's derivative by running the model itself: a complex-weight twin of the model
# carries the tangent in the imaginary part (complex step, h = 1e-20: no subtraction, exact to rounding),
# with every real part held at the clean run and the tangent routed from one node to the next only.
COMPLEX_STEP = 1e-20


def read_path(path) -> list[tuple[str, int, int | None]]:
    """'l.h' -> ('attn', l, h), 'MLPl' -> ('mlp', l, None): the reference's own path reader."""
    nodes = []
    for spec in ([path] if isinstance(path, str) else path):
        text = str(spec).strip().lower().replace(" ", "")
        if text.startswith("mlp"):
            nodes.append(("mlp", int(text[3:]), None))
        else:
            layer, head = text.split(".")
            nodes.append(("attn", int(layer), int(head)))
    return nodes


def structural_ln(kind: str, layer: int) -> tuple[str, str]:
    """(residual activation read by the LayerNorm, LayerNorm weight prefix) in front of a sublayer,
    from the forward pass: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid))."""
    if kind == "attn":
        return f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.ln1"
    if kind == "mlp":
        return f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.ln2"
    raise ValueError(kind)


_TWINS: dict[int, tuple] = {}


def complex_twin(model, readout: np.ndarray | None = None):
    """The same model with complex128 weights (the oracle's operators accept complex input). With
    ``readout`` [V] the unembedding is replaced by the single column W_U @ readout, so the twin's logits
    are [.., 1] = readout . logits (the same numbers, without the full vocabulary)."""
    from refimpl.oracle.model import Model

    cached = _TWINS.get(id(model))
    if cached is None or cached[0] is not model:
        cached = (model, {k: np.asarray(v, np.complex128) for k, v in model.weights.items()})
        _TWINS.clear()
        _TWINS[id(model)] = cached
    weights = dict(cached[1])
    if readout is not None:
        weights["unembed.W_U"] = (np.asarray(model.weights["unembed.W_U"], np.float64)
                                  @ np.asarray(readout, np.float64))[:, None].astype(np.complex128)
    return Model(model.config, weights, model.tokenizer, model.source, model.path)


def _tangent_readout(model, clean, ids, observable, nodes, mode: str, directions: np.ndarray, p: int,
                     earliest: bool, mlp_at: dict, norms: dict) -> np.ndarray:
    """d(n . logits[p]) for tangents ``directions`` [B, d] entering the LayerNorm input of ``nodes[0]``
    (or ln_final's when ``nodes`` is empty), routed node to node; attention weights divided out.

    LayerNorm tangents: "exact" the model's own LayerNorm (complex step at the clean input); "estimate"
    t -> sqrt(d) gamma t / |x~| (sqrt(d) gamma t for the earliest node when ``earliest``); "ignore" t -> t.
    MLP nodes are evaluated at ``mlp_at[layer]`` (an MLP input), their output reset to the clean value.
    """
    cfg, d = model.config, model.config.d_model
    L, B = cfg.n_layers, len(directions)
    twin = complex_twin(model, observable.vocab)
    final = f"blocks.{L - 1}.hook_resid_post"
    feeds = [structural_ln(kind, layer) for kind, layer, _ in nodes] + [(final, "ln_final")]
    state = {"next": 0, "carry": COMPLEX_STEP * np.asarray(directions, np.float64), "in": None}

    def base(name, x):
        return np.broadcast_to(clean[name], x.shape).astype(np.complex128)

    def residual(name):
        def edit(x):
            out = base(name, x)
            if state["next"] < len(feeds) and feeds[state["next"]][0] == name:
                out[:, p] += 1j * state["carry"]
                state["in"] = out[:, p].imag.copy()
            return out
        return edit

    def normalized(name, index):
        ln = feeds[index][1]

        def edit(x):
            out = base(name, x)
            if mode == "exact":
                tangent = x[:, p].imag
            elif mode == "estimate":
                gain = np.sqrt(d) * model.weights[ln + ".w"]
                tangent = gain * state["in"] if (earliest and index == 0 < len(nodes)) else gain * state["in"] / norms[ln]
            else:
                tangent = state["in"]
            if index < len(nodes) and nodes[index][0] == "mlp":
                out[:, p] = mlp_at[nodes[index][1]]
            out[:, p] += 1j * tangent
            return out
        return edit

    def output(name, index):
        kind, layer, head = nodes[index]

        def edit(x):
            tangent = x[:, p].imag
            if kind == "attn":
                tangent = tangent / clean[f"blocks.{layer}.attn.hook_pattern"][0, head, p, p]
            state["carry"] = tangent
            state["next"] = index + 1
            return base(name, x)
        return edit

    edits = {}
    for l in range(L):
        for r in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            edits[f"blocks.{l}.{r}"] = residual(f"blocks.{l}.{r}")
    for index, (kind, layer, head) in enumerate(nodes):
        ln = structural_ln(kind, layer)[1]
        edits[ln + ".hook_normalized"] = normalized(ln + ".hook_normalized", index)
        if kind == "attn":
            p_name, v_name = f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"
            edits[p_name] = lambda x, n=p_name: base(n, x)

            def only_head(x, n=v_name, h=head):
                out = base(n, x)
                out[:, :, h] += 1j * x[:, :, h].imag
                return out
            edits[v_name] = only_head
            edits[f"blocks.{layer}.hook_attn_out"] = output(f"blocks.{layer}.hook_attn_out", index)
        else:
            edits[f"blocks.{layer}.hook_mlp_out"] = output(f"blocks.{layer}.hook_mlp_out", index)
    edits["ln_final.hook_normalized"] = normalized("ln_final.hook_normalized", len(nodes))
    logits = twin.forward(np.repeat(np.atleast_2d(ids)[:1], B, axis=0), edits=edits)
    return logits[:, p, 0].imag / COMPLEX_STEP  # the twin's one logit is n . logits


def reference_gradient(model, clean, ids, observable, nodes, mode, p, earliest, mlp_at, norms, chunk: int = 64):
    """The full gradient [d] of the routed readout, one complex-step direction per basis vector."""
    eye = np.eye(model.config.d_model)
    return np.concatenate([_tangent_readout(model, clean, ids, observable, nodes, mode, eye[i:i + chunk], p,
                                            earliest, mlp_at, norms) for i in range(0, len(eye), chunk)])


def mlp_module(model, layer: int, X: np.ndarray) -> np.ndarray:
    """The model's own MLP branch of ``layer`` applied to inputs X [N, d] (run with ln_2's output replaced)."""
    X = np.asarray(X, dtype=model.dtype)
    name = f"blocks.{layer}.hook_mlp_out"
    _, trace = model.run_with_trace(np.zeros((len(X), 1), dtype=np.int64), names=[name],
                                    edits={f"blocks.{layer}.ln2.hook_normalized": lambda v: X[:, None, :].copy()})
    return np.array(trace[name][:, 0])


def bisect_segment(f, fallback: str | None = None) -> float:
    """t in [0, 1] with f(t) = 0 by bisection (f(t) = mean of the end values with ``fallback="mean"``)."""
    f0, f1 = f(0.0), f(1.0)
    target = 0.0
    if not min(f0, f1) <= 0.0 <= max(f0, f1):
        if fallback != "mean":
            raise ValueError(f"no sign change on the segment ({f0:.6g}, {f1:.6g})")
        target = 0.5 * (f0 + f1)
    lo, hi, f_lo = 0.0, 1.0, f0 - target
    if f_lo == 0.0:
        return 0.0
    if f1 - target == 0.0:
        return 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi) or hi - lo <= 1e-17:
            break
        f_mid = f(mid) - target
        if f_mid == 0.0:
            return mid
        if (f_mid < 0) == (f_lo < 0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def reference_path_feature(model, observable, path, ids, mode: str = "exact", mlp_points: dict | None = None,
                           fallback: str | None = None, position: int = -1) -> tuple[np.ndarray, dict]:
    """The path's feature vector measured on the model itself (module comment above), and the MLP
    linearisation parameters t found by the reference's own bisection.

    exact: LayerNorm Jacobians at the run's own inputs at ``position`` of prompt 0; estimate: |x~| = mean
    over the prompts of |LayerNorm input| at ``position``, read from the trace by the structural map.
    """
    ids = np.atleast_2d(ids)
    nodes = read_path(path)
    p = position % ids.shape[1]
    _, clean = model.run_with_trace(ids[:1])
    L = model.config.n_layers
    _, all_rows = model.run_with_trace(ids, names=[f"blocks.{l}.{r}" for l in range(L)
                                                   for r in ("hook_resid_pre", "hook_resid_mid")]
                                       + [f"blocks.{L - 1}.hook_resid_post"])
    norms = {}
    for l in range(L):
        for kind in ("attn", "mlp"):
            act, ln = structural_ln(kind, l)
            norms[ln] = float(np.linalg.norm(all_rows[act][:, p], axis=-1).mean())
    norms["ln_final"] = float(np.linalg.norm(all_rows[f"blocks.{L - 1}.hook_resid_post"][:, p], axis=-1).mean())
    mlp_at, ts = {}, {}
    for k in range(len(nodes) - 1, -1, -1):
        kind, layer, _ = nodes[k]
        if kind != "mlp":
            continue
        g = reference_gradient(model, clean, ids, observable, nodes[k + 1:], mode, p, False, mlp_at, norms)
        x_neg, x_pos = (np.asarray(v, np.float64) for v in mlp_points[layer])
        t = bisect_segment(lambda s: float(g @ mlp_module(model, layer, [(1 - s) * x_neg + s * x_pos])[0]), fallback)
        mlp_at[layer], ts[layer] = (1 - t) * x_neg + t * x_pos, t
    y = reference_gradient(model, clean, ids, observable, nodes, mode, p, True, mlp_at, norms)
    return y, ts


def frozen_path_check(model, observable, path, ids, mode: str, tolerance: float, mlp_points: dict | None = None,
                      fallback: str | None = None, position: int = -1, name: str | None = None):
    """The oracle's ``path_feature`` (points from ``ln_input_points``, norms from ``ln_input_norms``) vs
    ``reference_path_feature``: max |y - y_ref| <= tolerance * max |y_ref|."""
    import refimpl

    from verification.policy.checks import relative_check

    ids = np.atleast_2d(ids)
    options = {"mlp_points": mlp_points, "mlp_fallback": fallback}
    if mode == "exact":
        options["points"] = refimpl.ln_input_points(model, ids[:1], position)
    elif mode == "estimate":
        options["norms"] = refimpl.ln_input_norms(model, ids, position)
    y = refimpl.path_feature(model, observable, path, layernorm=mode, **options)
    reference, _ = reference_path_feature(model, observable, path, ids, mode, mlp_points, fallback, position)
    label = " -> ".join(str(s) for s in ([path] if isinstance(path, str) else path))
    return relative_check(name or f"propagation: {label} ({mode} LN) vs the model run along the path",
                          y, reference, tolerance, group="propagation")


def block_vs_model(model, ids, layer: int, perturbation: np.ndarray | None = None):
    """(block_frozen_attention(X, A), the model's own hook_resid_post) for the block input X = clean
    resid_pre (+ perturbation, injected by an edit) with the block's attention pattern frozen at A."""
    from refimpl.propagation import jacobians

    ids = np.atleast_2d(ids)[:1]
    pre, pat, post = (f"blocks.{layer}.{n}" for n in ("hook_resid_pre", "attn.hook_pattern", "hook_resid_post"))
    _, clean = model.run_with_trace(ids, names=[pre, pat])
    X = np.array(clean[pre][0]) + (0.0 if perturbation is None else perturbation)
    A = np.array(clean[pat][0])
    _, run = model.run_with_trace(ids, names=[post], edits={pre: lambda v: X[None].astype(v.dtype),
                                                            pat: lambda v: A[None].astype(v.dtype)})
    return jacobians.block_frozen_attention(model, layer, X, A), np.array(run[post][0])
