"""Independent references for the case-study experiments, shared by the tests and the verification report.

Nothing here imports the code under test (``refimpl.case_study.experiments``, ``refimpl.propagation.propagate``,
``refimpl.case_study.pipeline``): prompts are built from the templates' text, observables from known GPT-2 token
ids, feature vectors from the raw checkpoint tensors (Hugging Face keys, column convention), LayerNorm and
the MLP are written out in NumPy, derivatives come from complex steps and roots from bisection. Only the
model's forward pass and trace (verified separately against transformers) are used.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import Polynomial

from verification.references import raw_heads
from verification.references.linearized import bisect_segment

# Known GPT-2 token ids (the notes on GPT-Neo's tokenizer), the paper's names and templates (Section 6.3).
TOKEN = {" she": 673, " he": 339, " her": 607, " him": 683, " actress": 14549, " actor": 8674,
         " nurse": 15849, " programmer": 24292}
FEMALE = ("Jennifer", "Jane", "Annie", "Chloe", "Amy", "Judy", "Lisa", "Carol", "Clara", "Sarah")
MALE = ("John", "David", "Mark", "Paul", "Ryan", "Gary", "Jack", "Arnold", "Joe", "Andy")
TEMPLATE = {
    "subj_friend": "<|endoftext|>So, {} really is a great friend, isn't",
    "subj_funny": "<|endoftext|>Man, {} is so funny, isn't",
    "subj_hard": "<|endoftext|>Really, {} always works so hard, doesn't",
    "obj_love": "<|endoftext|>What do I think about {}? Well, to be honest, I love",
    "occupation": "<|endoftext|>My friend {} is an excellent",
}
PRESET = {"subj": (" she", " he", "subj_friend"), "obj": (" her", " him", "obj_love"),
          "same": (" actress", " actor", "occupation"), "diff": (" nurse", " programmer", "occupation")}


def prompts(model, key: str, names) -> np.ndarray:
    ids = [model.tokenizer.encode(TEMPLATE[key].format(n)) for n in names]
    return np.array(ids)


def female_male(model, key):
    return prompts(model, key, FEMALE), prompts(model, key, MALE)


def n_vector(model, plus: str, minus: str) -> np.ndarray:
    n = np.zeros(model.config.d_vocab)
    n[TOKEN[plus]], n[TOKEN[minus]] = 1.0, -1.0
    return n


def raw_feature(model, raw, layer, head, n) -> np.ndarray:
    """W_OV^T W_U^T n from the stored matrices (``raw_heads``: v_proj / out_proj or c_attn / c_proj of the head)."""
    V, O = raw_heads.head_value_output(raw, layer, head, model.config.d_model // model.config.n_heads)
    return V.T @ (O.T @ (raw_heads.unembedding(raw).T @ n))


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) * (x - mu)).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x * x * x)))


def complex_step_gradient(f, x0):
    return np.array([f(x0 + 1e-30j * e).imag / 1e-30 for e in np.eye(x0.size)])


def raw_tensors(model) -> dict[str, np.ndarray]:
    """The checkpoint's own tensors (Hugging Face keys, ``transformer.`` prefix), widened to float64."""
    from safetensors.numpy import load_file

    tensors = {}
    for path in sorted(model.path.glob("*.safetensors")):
        tensors.update({k if k.startswith(("transformer.", "lm_head")) else "transformer." + k: v.astype(np.float64)
                        for k, v in load_file(str(path)).items()})
    return tensors


def table1_row(model, raw, ids, layer, head, n1, n2):
    """The authors' Table 1 recipe from scratch: ln_1 outputs of every token, dot products with the raw
    features, numpy's Polynomial.fit and r^2 = 1 - SSR / (N var y)."""
    y1, y2 = raw_feature(model, raw, layer, head, n1), raw_feature(model, raw, layer, head, n2)
    name = f"blocks.{layer}.ln1.hook_normalized"
    _, trace = model.run_with_trace(ids, names=[name])
    X = trace[name].reshape(-1, model.config.d_model)
    assert X.shape[0] == ids.shape[0] * ids.shape[1]
    x, y = X @ y1, X @ y2
    line = Polynomial.fit(x, y, 1).convert()
    intercept, slope = line.coef
    r2 = 1 - ((y - line(x)) ** 2).sum() / (len(y) * y.var())
    return {"coupling": y1 @ y2 / (y1 @ y1), "cosine": y1 @ y2 / np.linalg.norm(y1) / np.linalg.norm(y2),
            "best_fit_slope": slope, "r2": r2, "points": len(x)}


def direct_attribution(model, raw, ids, n):
    """Per (layer, head, source): the head's direct effect on n . logits[-1] with ln_final's scale frozen,
    from the value vectors of a run where that source's value is zeroed for that head (hook_v edit)."""
    cfg = model.config
    u = raw_heads.unembedding(raw).T @ n
    g = raw["transformer.ln_f.weight"] * u
    g = g - g.mean()  # the centring of LayerNorm, moved onto the readout
    final = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    _, trace = model.run_with_trace(ids, names=[final])
    x = trace[final][:, -1]
    scale = np.sqrt(((x - x.mean(-1, keepdims=True)) ** 2).mean(-1) + cfg.eps)  # [B]
    out = np.zeros((cfg.n_layers, cfg.n_heads, ids.shape[1]))
    for l in range(cfg.n_layers):
        name = f"blocks.{l}.attn.hook_result"
        _, clean = model.run_with_trace(ids, names=[name])
        for h in range(cfg.n_heads):
            for s in range(ids.shape[1]):
                def zero(v, h=h, s=s):
                    v[:, s, h] = 0
                    return v

                _, t = model.run_with_trace(ids, names=[name], edits={f"blocks.{l}.attn.hook_v": zero})
                part = clean[name][:, -1, h] - t[name][:, -1, h]  # [B, d]
                out[l, h, s] = ((part @ g) / scale).mean()
    return out


def final_inputs(model, ids):
    name = f"blocks.{model.config.n_layers - 1}.hook_resid_post"
    return np.array(model.run_with_trace(ids, names=[name])[1][name])


def path_patching(model, clean_ids, corrupt_ids, n) -> np.ndarray:
    """[L, H] clean - patched n . logits[-1], mean over pairs, where the patched run is the clean run with
    (corrupted - clean) of one head's output added to the final residual (an edit of ln_final's input)."""
    cfg = model.config
    final = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    clean = model.forward(clean_ids)[:, -1] @ n
    out = np.zeros((cfg.n_layers, cfg.n_heads))
    for l in range(cfg.n_layers):
        name = f"blocks.{l}.attn.hook_result"
        _, c = model.run_with_trace(clean_ids, names=[name])
        _, k = model.run_with_trace(corrupt_ids, names=[name])
        for h in range(cfg.n_heads):
            diff = k[name][:, :, h] - c[name][:, :, h]
            patched = model.forward(clean_ids, edits={final: lambda x, diff=diff: x + diff})[:, -1] @ n
            out[l, h] = (clean - patched).mean()
    return out


def steering_effect(model, ids, layer: int, position: int, vector, k: float, n) -> float:
    """Mean change of n . logits[-1] when k * vector is added at ``position`` to the previous block's output
    (the embedding for layer 0), which is the input of ``layer``."""
    hook = "hook_embed" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"

    def add(x):
        x[:, position] += k * np.asarray(vector, dtype=x.dtype)
        return x

    return float(((model.forward(ids, edits={hook: add})[:, -1] - model.forward(ids)[:, -1]) @ n).mean())


def table4(model, raw, groups, n) -> np.ndarray:
    """Appendix A.3's Table 4 from scratch: row i linearises u . ln_final at the boundary point between the
    mean last-token ln_final inputs of group i's male and female prompts (bisection; the mean of the end
    values as the target when they share a sign), column j is the MAE over group j's prompts."""
    w, b = raw["transformer.ln_f.weight"], raw["transformer.ln_f.bias"]
    u = raw_heads.unembedding(raw).T @ n

    def f(x):
        return layer_norm(x, w, b, model.config.eps) @ u

    lasts = [(final_inputs(model, female)[:, -1], final_inputs(model, male)[:, -1]) for female, male in groups]
    out = np.zeros((len(groups), len(groups)))
    for i, (xf, xm) in enumerate(lasts):
        x_neg, x_pos = xm.mean(0), xf.mean(0)
        t = bisect_segment(lambda s: f((1 - s) * x_neg + s * x_pos), fallback="mean")
        x0 = (1 - t) * x_neg + t * x_pos
        grad = complex_step_gradient(f, x0)
        for j, (yf, ym) in enumerate(lasts):
            xs = np.concatenate([yf, ym])
            out[i, j] = np.abs(f(x0) + (xs - x0) @ grad - f(xs)).mean()
    return out


def checks(model) -> list:
    """The experiments of ``refimpl.case_study.experiments`` on ``model`` (GPT-2 vocabulary: the paper's prompts)
    against the references above, as report entries."""
    import refimpl
    from refimpl import experiments as ex

    from verification.policy.checks import Check, relative_check, skipped
    from verification.policy.tolerances import tolerance

    from refimpl.oracle.tokenizer import uses_gpt2_vocabulary

    if not uses_gpt2_vocabulary(model):
        return [skipped("experiments vs independent references", "needs the GPT-2 vocabulary (the paper's prompts)",
                        group="experiments")]
    if model.dtype != np.float64:
        return [skipped("experiments vs independent references", "needs a float64 model", group="experiments")]
    same, pipeline = tolerance("identity", "float64"), tolerance("pipeline", "float64")
    raw = raw_tensors(model)
    cfg = model.config
    out = []
    n_subj, n_obj = n_vector(model, " she", " he"), n_vector(model, " her", " him")
    subj = refimpl.observable(model, {" she": 1, " he": -1})
    obj = refimpl.observable(model, {" her": 1, " him": -1})
    female, male = female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    # preset signs: n_subj positive after every female name, negative after every male name
    values = ex.observable_values(model, ids, subj)
    out.append(Check("experiments: n_subj > 0 after each female name, < 0 after each male name",
                     bool(np.all(values[:len(female)] > 0) and np.all(values[len(female):] < 0)),
                     float(min(values[:len(female)].min(), -values[len(female):].max())), 0.0, "> 0",
                     group="experiments"))
    # Table 1 on the three heads with the largest raw n_subj feature norms
    norms = {(l, h): np.linalg.norm(raw_feature(model, raw, l, h, n_subj))
             for l in range(cfg.n_layers) for h in range(cfg.n_heads)}
    heads = sorted(norms, key=lambda lh: -norms[lh])[:3]
    table = ex.coupling_vs_fit(model, ids, heads, subj, obj)
    for row, (l, h) in zip(table, heads):
        ref = table1_row(model, raw, ids, l, h, n_subj, n_obj)
        keys = ("coupling", "cosine", "best_fit_slope", "r2")
        error = max(abs(row[k] - ref[k]) / max(1.0, abs(ref[k])) for k in keys)
        ok = error <= pipeline and row["points"] == ref["points"] == ids.size
        out.append(Check(f"experiments: Table 1 head {l}.{h} vs the authors' recipe (Polynomial.fit over "
                         f"{ref['points']} tokens)", bool(ok), error, 0.0, pipeline,
                         detail=f"slope {row['best_fit_slope']:.6f} vs {ref['best_fit_slope']:.6f}, r^2 "
                                f"{row['r2']:.6f} vs {ref['r2']:.6f}, points {row['points']}", group="experiments"))
    # path patching, every head, against an edit of ln_final's input
    scale = float(np.abs(model.forward(female)[:, -1] @ n_subj).max())
    effects = ex.path_patch_heads(model, female, male, subj)
    out.append(relative_check("experiments: path patching, every head, vs a forward with the head's output "
                              "edited into ln_final's input", effects / scale,
                              path_patching(model, female, male, n_subj) / scale, same, group="experiments",
                              detail=f"errors relative to max |n . logits| = {scale:.3f}"))
    # steering at two layers and positions, against an edit of the previous block's output
    v = raw_feature(model, raw, heads[0][0], heads[0][1], n_subj)
    for layer, position in ((heads[0][0], 5), (1, -1)):
        ks = [-3.0, 2.0]
        got = ex.steer(model, ids, {"subj": subj}, f"blocks.{layer}.hook_resid_pre", position, v, ks).column(
            "subj_effect")
        want = [steering_effect(model, ids, layer, position, v, k, n_subj) for k in ks]
        out.append(Check(f"experiments: steering at layer {layer}, position {position}, k = {ks} vs an edit of "
                         "the previous residual", bool(np.abs(np.subtract(got, want)).max() <= same * scale),
                         float(np.abs(np.subtract(got, want)).max() / scale), 0.0, same, group="experiments"))
    # direct logit attribution per source position, against value ablation
    few = np.concatenate([female[:2], male[:2]])
    per_head, per_position = ex.direct_logit_attribution(model, few, subj)
    ref = direct_attribution(model, raw, few, n_subj)
    out.append(relative_check("experiments: DLA per head and source position vs value ablation",
                              per_position / scale, ref / scale, same, group="experiments"))
    # Table 4, entry by entry (row = source group)
    groups = [female_male(model, key) for key in ("subj_friend", "subj_funny", "subj_hard")]
    mae = ex.ln_final_approximation_error(model, groups, subj)
    ref = table4(model, raw, groups, n_subj)
    out.append(relative_check("experiments: Table 4 entry by entry (row = source group) vs bisection and complex "
                              "steps", mae, ref, pipeline, group="experiments"))
    return out
