"""Every experiment of ``refimpl.case_study.experiments`` against an independent route on the default model.

The references here share no code with the functions under test: prompts are built from the templates'
text, observables from known GPT-2 token ids, feature vectors from the raw checkpoint tensors (Hugging
Face keys, column convention), LayerNorm and the MLP are written out in NumPy, derivatives come from
complex steps, roots from bisection, and interventions from ``model.forward(edits=...)`` on other hooks
than the ones the experiments use. Tolerances are scaled to the quantity a difference is taken from.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.polynomial import Polynomial

import refimpl
from verification.references import raw_heads
from refimpl.case_study import pipeline as case_study
from refimpl import experiments as ex
from verification.references import experiment_references as R
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")
ROOT = tolerance("root_finding", "float64")
PIPELINE = tolerance("pipeline", "float64")


@pytest.fixture(scope="module", params=("organism", "organism-gpt2"))
def model(request):
    return refimpl.load(request.param, dtype="float64")


@pytest.fixture(scope="module")
def raw(model):
    return R.raw_tensors(model)


def preset(model, name):
    return refimpl.observable(model, case_study.OBSERVABLES[name], name)


# ------------------------------------------------------------------ observables and their signs
@pytest.mark.parametrize("name", list(R.PRESET))
def test_preset_signs_on_prompts_with_known_answers(model, name):
    """Each preset is +female -male: positive on every paper prompt with a female name, negative on male."""
    plus, minus, key = R.PRESET[name]
    obs = preset(model, name)
    np.testing.assert_array_equal(obs.vocab, R.n_vector(model, plus, minus))
    female, male = R.female_male(model, key)
    values_f, values_m = ex.observable_values(model, female, obs), ex.observable_values(model, male, obs)
    direct_f = model.forward(female)[:, -1, R.TOKEN[plus]] - model.forward(female)[:, -1, R.TOKEN[minus]]
    scale = np.abs(model.forward(female)[:, -1]).max()
    assert np.abs(values_f - direct_f).max() <= SAME * scale
    assert np.all(values_f > 0) and np.all(values_m < 0), (values_f, values_m)


# ------------------------------------------------------------------ Table 1: coupling vs best-fit slope
def test_table1_against_the_authors_recipe(model, raw):
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    n1, n2 = R.n_vector(model, " she", " he"), R.n_vector(model, " her", " him")
    heads = [(l, h) for l in range(model.config.n_layers) for h in range(model.config.n_heads)]
    table = ex.coupling_vs_fit(model, ids, heads, preset(model, "subj"), preset(model, "obj"))
    assert len(table) == len(heads)
    for row, (l, h) in zip(table, heads):
        expected = R.table1_row(model, raw, ids, l, h, n1, n2)
        assert row["head"] == f"{l}.{h}" and row["points"] == expected["points"] == ids.size
        for key in ("coupling", "cosine", "best_fit_slope", "r2"):
            assert abs(row[key] - expected[key]) <= PIPELINE * max(1.0, abs(expected[key])), (l, h, key, row)


def test_head_input_scores_cover_every_token(model, raw):
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    y = [R.raw_feature(model, raw, 3, 0, R.n_vector(model, " she", " he")), np.ones(model.config.d_model)]
    scores = ex.head_input_scores(model, ids, 3, y)
    assert scores.shape == (2, ids.size)
    _, trace = model.run_with_trace(ids, names=["blocks.3.ln1.hook_normalized"])
    x = trace["blocks.3.ln1.hook_normalized"]  # [B, T, d]
    assert np.abs(scores[1] - x.sum(-1).ravel()).max() <= SAME * np.abs(x).sum(-1).max()


def test_best_fit_is_least_squares():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.7 * x + 2 + 0.1 * rng.normal(size=50)
    slope, intercept, r2 = ex.best_fit(x, y)
    line = Polynomial.fit(x, y, 1).convert()
    assert abs(slope - line.coef[1]) <= SAME and abs(intercept - line.coef[0]) <= SAME * 2
    assert abs(r2 - (1 - ((y - line(x)) ** 2).sum() / (50 * y.var()))) <= SAME


# ------------------------------------------------------------------ path patching (Figure 2)
@pytest.mark.parametrize("name", ["subj", "obj"])
def test_path_patching_every_head_equals_an_edited_forward(model, name):
    """For every head: add (corrupted - clean) of that head's output to the final residual of the clean run
    (an edit of ln_final's input) and score clean - patched, averaged over pairs."""
    plus, minus, key = R.PRESET[name]
    female, male = R.female_male(model, key)
    effects = ex.path_patch_heads(model, female, male, preset(model, name))
    n = R.n_vector(model, plus, minus)
    cfg = model.config
    scale = np.abs(model.forward(female)[:, -1] @ n).max()  # the effect is a difference of two observables this size
    assert effects.shape == (cfg.n_layers, cfg.n_heads)
    assert np.abs(effects - R.path_patching(model, female, male, n)).max() <= SAME * scale
    assert np.abs(effects).max() > 0.01 * scale  # some head matters: the comparison is not between zeros


# ------------------------------------------------------------------ steering (Table 2)
class Spy:
    """The model, recording the edits every run receives."""

    def __init__(self, model):
        self._model, self.edits = model, []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, ids, edits=None, **kwargs):
        self.edits.append(edits or {})
        return self._model.forward(ids, edits=edits, **kwargs)

    def run_with_trace(self, ids, names=None, edits=None, **kwargs):
        self.edits.append(edits or {})
        return self._model.run_with_trace(ids, names=names, edits=edits, **kwargs)


@pytest.mark.parametrize("layer, position", [(0, 3), (2, 5), (3, -1)])
def test_steering_equals_an_edit_of_the_previous_residual(model, raw, layer, position):
    """Adding k v to resid_pre of ``layer`` at one position = adding it to the previous block's output
    (or to the embedding for layer 0); several nonzero multipliers, two observables."""
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    v = R.raw_feature(model, raw, layer, 1, R.n_vector(model, " she", " he"))
    ks = [-3.0, 0.5, 7.0]
    table = ex.steer(model, ids, {"subj": preset(model, "subj"), "obj": preset(model, "obj")},
                     f"blocks.{layer}.hook_resid_pre", position, v, ks)
    clean = model.forward(ids)[:, -1]
    for row, k in zip(table, ks):
        assert row["multiplier"] == k and row["position"] == position
        for obs, (plus, minus, _) in (("subj", R.PRESET["subj"]), ("obj", R.PRESET["obj"])):
            n = R.n_vector(model, plus, minus)
            expected = R.steering_effect(model, ids, layer, position, v, k, n)
            scale = np.abs(clean @ n).max() + abs(expected)  # both observables the effect is a difference of
            assert abs(row[f"{obs}_effect"] - expected) <= SAME * scale, (k, obs)
            assert abs(expected) > 1e-6 * scale  # a real effect, not a comparison of zeros


def test_steering_changes_only_the_named_position(model):
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    name, position, k = "blocks.2.hook_resid_pre", 4, 2.5
    v = np.random.default_rng(1).normal(size=model.config.d_model)
    spy = Spy(model)
    ex.steer(spy, ids, {"subj": preset(model, "subj")}, name, position, v, [k])
    steering = [e[name] for e in spy.edits if name in e]
    assert len(steering) == 1 and all(set(e) <= {name} for e in spy.edits)
    _, trace = model.run_with_trace(ids, names=[name])
    before = np.array(trace[name])
    after = steering[0](before.copy())
    changed = np.abs(after - before).max(axis=(0, 2)) > 0
    assert changed.tolist() == [t == position for t in range(ids.shape[1])]
    assert np.abs(after[:, position] - before[:, position] - k * v).max() <= SAME * np.abs(before).max()


def test_activation_scale(model):
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    v = np.arange(model.config.d_model, dtype=np.float64)
    _, trace = model.run_with_trace(ids, names=["blocks.1.hook_resid_post"])  # = resid_pre of block 2
    expected = np.sqrt((trace["blocks.1.hook_resid_post"][:, 6] ** 2).sum(-1)).mean() / np.sqrt(v @ v)
    assert abs(ex.activation_scale(model, ids, 2, 6, v) - expected) <= SAME * expected


# ------------------------------------------------------------------ direct logit attribution
def test_direct_logit_attribution_against_value_ablation_and_final_residual(model, raw):
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female[:3], male[:3]])
    n = R.n_vector(model, " she", " he")
    per_head, per_position = ex.direct_logit_attribution(model, ids, preset(model, "subj"))
    expected = R.direct_attribution(model, raw, ids, n)
    scale = np.abs(model.forward(ids)[:, -1] @ n).max()
    assert np.abs(per_position - expected).max() <= SAME * scale
    assert np.abs(per_head - expected.sum(-1)).max() <= SAME * scale
    # completeness: with ln_final's scale frozen, n . logits = sum of every component's direct effect + u . b
    cfg = model.config
    names = ["hook_embed", "hook_pos_embed"] + [f"blocks.{l}.{a}" for l in range(cfg.n_layers)
                                                for a in ("attn.hook_result", "hook_mlp_out")]
    final = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    logits, trace = model.run_with_trace(ids, names=names + [final])
    x = trace[final][:, -1]
    scale_f = np.sqrt(((x - x.mean(-1, keepdims=True)) ** 2).mean(-1) + cfg.eps)
    u = raw["transformer.wte.weight"].T @ n
    g = raw["transformer.ln_f.weight"] * u
    g = g - g.mean()
    others = sum((trace[k][:, -1] @ g) / scale_f for k in names if "result" not in k)
    biases = sum(raw_heads.attention_output_bias(raw, l) @ g for l in range(cfg.n_layers)) / scale_f
    total = per_head.sum() + (others + biases + raw["transformer.ln_f.bias"] @ u).mean()
    assert abs(total - (logits[:, -1] @ n).mean()) <= SAME * scale


# ------------------------------------------------------------------ bias mitigation (Section 7)
def test_bias_mitigation_search_against_brute_force(model, raw):
    female, male = R.female_male(model, "occupation")
    ids = np.concatenate([female, male])
    diff, same = preset(model, "diff"), preset(model, "same")
    n_diff, n_same = R.n_vector(model, " nurse", " programmer"), R.n_vector(model, " actress", " actor")
    cfg = model.config
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    features = {lh: R.raw_feature(model, raw, *lh, n_diff) for lh in heads}
    couplings = {lh: features[lh] @ R.raw_feature(model, raw, *lh, n_same) / (features[lh] @ features[lh])
                 for lh in heads}
    chosen = sorted(heads, key=lambda lh: couplings[lh])[:3]  # brute force: the three lowest couplings
    multipliers = (-0.5, -1.0)
    table = ex.bias_mitigation_search(model, ids, diff, same, top=3, multipliers=multipliers, relative=True)
    assert [r["head"] for r in table] == [f"{l}.{h}" for l, h in chosen for _ in multipliers]
    dla = R.direct_attribution(model, raw, ids, n_diff)
    clean = model.forward(ids)[:, -1]
    rows = iter(table)
    for l, h in chosen:
        token = int(np.argmax(np.abs(dla[l, h])))
        hook = "hook_embed" if l == 0 else f"blocks.{l - 1}.hook_resid_post"
        _, trace = model.run_with_trace(ids, names=[hook, "hook_pos_embed"])
        into = trace[hook] + (trace["hook_pos_embed"] if l == 0 else 0)  # what block l reads
        unit = np.linalg.norm(into[:, token], axis=-1).mean() / np.linalg.norm(features[(l, h)])
        for m in multipliers:
            row = next(rows)
            k = m * unit
            assert row["token"] == token and abs(row["coupling"] - couplings[(l, h)]) <= SAME * 10
            assert row["relative_multiplier"] == m and abs(row["k"] - k) <= SAME * abs(k)

            def add(x, k=k, token=token, v=features[(l, h)]):
                x[:, token] += k * v
                return x

            steered = model.forward(ids, edits={hook: add})[:, -1]
            for key, n in (("n_diff_effect", n_diff), ("n_same_effect", n_same)):
                scale = max(np.abs(clean @ n).max(), np.abs(steered @ n).max())
                assert abs(row[key] - ((steered - clean) @ n).mean()) <= SAME * scale, (l, h, m, key)


# ------------------------------------------------------------------ LayerNorm studies (Appendix A)
def test_layer_norm_input_norms_and_gain_variance(model, raw):
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    L = model.config.n_layers
    table = {r["layernorm"]: r["mean_input_norm"] for r in ex.layer_norm_input_norms(model, ids)}
    gains = {r["layernorm"]: r for r in ex.layer_norm_gain_variance(model, ids)}
    inputs = {"ln_final": R.final_inputs(model, ids)}
    for l in range(L):  # ln_1 reads the block's input, ln_2 the residual after attention
        names = [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_resid_mid"]
        _, t = model.run_with_trace(ids, names=names)
        inputs[f"blocks.{l}.ln1"], inputs[f"blocks.{l}.ln2"] = t[names[0]], t[names[1]]
    stored = {"ln_final": "transformer.ln_f.weight",
              **{f"blocks.{l}.ln{i}": f"transformer.h.{l}.ln_{i}.weight" for l in range(L) for i in (1, 2)}}
    assert set(table) == set(inputs) == set(gains)
    for ln, x in inputs.items():
        norms = np.sqrt((x * x).sum(-1))
        assert norms.size == ids.size
        assert abs(table[ln] - norms.mean()) <= SAME * norms.mean()
        w = raw[stored[ln]]
        assert abs(gains[ln]["gain_variance"] - ((w - w.mean()) ** 2).mean()) <= SAME * (w * w).mean()
        assert abs(gains[ln]["mean_abs_input"] - np.abs(x).mean()) <= SAME * np.abs(x).mean()


def test_table4_entry_by_entry_with_its_orientation(model, raw):
    """Row i = source group (the linearisation point from group i), column j = target group."""
    keys = ("subj_friend", "subj_funny", "subj_hard")
    groups = [R.female_male(model, k) for k in keys]
    mae = ex.ln_final_approximation_error(model, groups, preset(model, "subj"))
    expected = R.table4(model, raw, groups, R.n_vector(model, " she", " he"))
    assert np.abs(mae - expected).max() <= PIPELINE * np.abs(expected).max()
    # the orientation is observable: the table is far from symmetric on this model
    assert np.abs(expected - expected.T).max() > 0.1 * np.abs(expected).max()


# ------------------------------------------------------------------ the MLP along a segment (Figure 4)
def test_mlp_segment_boundary_row_and_linearisation(model, raw):
    female, male = R.female_male(model, "subj_friend")
    layer = 2
    name = f"blocks.{layer}.ln2.hook_normalized"
    _, trace = model.run_with_trace(np.stack([male[0], female[0]]), names=[name])
    x_neg, x_pos = np.array(trace[name][:, -1])
    y = R.raw_feature(model, raw, 3, 0, R.n_vector(model, " she", " he"))
    W_fc, b_fc, W_proj, b_proj = raw_heads.mlp_weights(raw, layer)

    def f(x):
        hidden = R.gelu(x @ W_fc.T + b_fc)
        return (hidden @ W_proj.T + b_proj) @ y

    table = ex.mlp_segment(model, layer, y, x_neg, x_pos, points=11)
    f_neg, f_pos = f(x_neg), f(x_pos)
    target = 0.0 if f_neg * f_pos < 0 else 0.5 * (f_neg + f_pos)
    t0 = R.bisect_segment(lambda s: f((1 - s) * x_neg + s * x_pos) - target)
    x0 = (1 - t0) * x_neg + t0 * x_pos
    boundary = [r for r in table if r["is_boundary"]]
    assert len(boundary) == 1 and len(table) == 12
    row = boundary[0]
    size = abs(f_neg) + abs(f_pos)
    assert abs(row["t"] - t0) <= ROOT and abs(row["boundary_target"] - target) <= SAME * size
    assert abs(row["actual"] - target) <= ROOT * size  # f = target at the boundary row
    assert abs(row["linear_at_boundary"] - row["actual"]) <= ROOT * size
    anchors = {"boundary": x0, "x_neg": x_neg, "x_pos": x_pos}
    grads = {key: R.complex_step_gradient(f, x) for key, x in anchors.items()}
    for r in table:
        x = (1 - r["t"]) * x_neg + r["t"] * x_pos
        assert abs(r["actual"] - f(x)) <= SAME * size
        for key, x_a in anchors.items():
            assert abs(r[f"linear_at_{key}"] - (f(x_a) + (x - x_a) @ grads[key])) <= PIPELINE * size, (r["t"], key)
    assert table.column("t") == sorted(table.column("t"))


# ------------------------------------------------------------------ what the demo prints
@pytest.fixture(scope="module")
def demo(model, tmp_path_factory):
    """``obsprop demo`` as a user runs it (float32, on this module's organism), without figures."""
    import json

    from refimpl.commands import cli

    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--model", model.source, "--out", str(out), "--no-figures"]) == 0
    return json.loads((out / "results.json").read_text()), out


def test_demo_table1_equals_an_independent_computation(model, raw, demo):
    results, out = demo
    female, male = R.female_male(model, "subj_friend")
    ids = np.concatenate([female, male])
    n1, n2 = R.n_vector(model, " she", " he"), R.n_vector(model, " her", " him")
    norms = {(l, h): np.linalg.norm(R.raw_feature(model, raw, l, h, n1))
             for l in range(model.config.n_layers) for h in range(model.config.n_heads)}
    top = sorted(norms, key=lambda lh: -norms[lh])[:len(results["table1"])]
    assert [r["head"] for r in results["table1"]] == [f"{l}.{h}" for l, h in top]
    assert results["top_heads_by_norm_subj"] == [f"{l}.{h}" for l, h in top]
    float32 = tolerance("identity", "float32")
    for row, (l, h) in zip(results["table1"], top):
        expected = R.table1_row(model, raw, ids, l, h, n1, n2)
        assert expected["points"] == ids.size == 240
        for key in ("coupling", "cosine", "best_fit_slope", "r2"):
            assert abs(row[key] - expected[key]) <= 10 * float32 * max(1.0, abs(expected[key])), (l, h, key)
    for row in results["steering"]:  # the token each steering row names, read from the prompts themselves
        prompts = np.concatenate(R.female_male(model, R.PRESET[row["observable"]][2]))
        column = prompts[:, row["token"]]
        assert row["token_text"] == ("[name]" if len(set(column)) > 1 else repr(model.tokenizer.decode([column[0]])))
    summary = (out / "summary.md").read_text()
    first = results["table1"][0]
    assert f"| {first['head']} | {first['coupling']:.4f} | {first['cosine']:.4f} | {first['best_fit_slope']:.4f} |" \
        in summary


def test_case_study_uses_the_papers_prompts(model):
    built = case_study.paper_prompts(model)
    for key in R.TEMPLATE:
        female, male = R.female_male(model, key)
        np.testing.assert_array_equal(built[key][0], female)
        np.testing.assert_array_equal(built[key][1], male)


# ------------------------------------------------------------------ activation patching (full effect)
def test_activation_patching_every_head_equals_an_edited_forward(model):
    """Each head's z replaced by its value on the corrupted prompts (an edit of hook_z), full downstream effect."""
    female, male = R.female_male(model, "subj_friend")
    female, male = female[:4], male[:4]
    n = R.n_vector(model, " she", " he")
    cfg = model.config
    effects = ex.activation_patch_heads(model, female, male, preset(model, "subj"), chunk=5)
    clean = model.forward(female)[:, -1] @ n
    scale = np.abs(clean).max()
    assert effects.shape == (cfg.n_layers, cfg.n_heads)
    for l in range(cfg.n_layers):
        name = f"blocks.{l}.attn.hook_z"
        _, corrupt = model.run_with_trace(male, names=[name])
        for h in range(cfg.n_heads):
            def swap(z, h=h, value=corrupt[name]):
                z[:, :, h] = value[:, :, h]
                return z

            patched = model.forward(female, edits={name: swap})[:, -1] @ n
            assert abs(effects[l, h] - (clean - patched).mean()) <= SAME * scale, (l, h)
    assert np.abs(effects).max() > 0.01 * scale
    # the direct-path patching is the first-order part of it: they differ where later layers react
    assert np.abs(effects - ex.path_patch_heads(model, female, male, preset(model, "subj"))).max() > 1e-6 * scale


def test_activation_patching_per_position(model):
    female, male = R.female_male(model, "subj_friend")
    female, male = female[:2], male[:2]
    n = R.n_vector(model, " she", " he")
    effects = ex.activation_patch_heads(model, female, male, preset(model, "subj"), per_position=True)
    assert effects.shape == (model.config.n_layers, model.config.n_heads, female.shape[1])
    clean = model.forward(female)[:, -1] @ n
    for l, h, t in ((0, 1, 3), (2, 0, 3), (3, 2, 11), (1, 3, 0)):
        name = f"blocks.{l}.attn.hook_z"
        _, corrupt = model.run_with_trace(male, names=[name])

        def swap(z, h=h, t=t, value=corrupt[name]):
            z[:, t, h] = value[:, t, h]
            return z

        patched = model.forward(female, edits={name: swap})[:, -1] @ n
        assert abs(effects[l, h, t] - (clean - patched).mean()) <= SAME * np.abs(clean).max(), (l, h, t)
    # the prompts first differ at the name (token 3): a head's output before it is the same on both
    assert np.abs(effects[:, :, :3]).max() <= SAME * np.abs(clean).max()
    assert np.abs(effects[:, :, 3:]).max() > 0.01 * np.abs(clean).max()


def test_clean_runs_are_shared_only_by_equal_prompts(model):
    """The shared clean run is keyed by the ids themselves: equal prompts reuse it, other prompts of the
    same shape get their own (and the model's own forward agrees with both)."""
    female, male = R.female_male(model, "subj_friend")
    first = ex.clean_run(model, female)
    assert ex.clean_run(model, female.copy())[1] is first[1]
    other = ex.clean_run(model, male)
    assert other[1] is not first[1]
    for ids, (logits, trace) in ((female, first), (male, other)):
        assert relative_error(logits, model.forward(ids)[:, -1]) <= SAME
        assert np.array_equal(trace.ids, ids)


@pytest.mark.parametrize("position", [-1, 5, -3])
def test_observable_values_at_any_position(model, position):
    female, male = R.female_male(model, "obj_love")
    ids = np.concatenate([female, male])
    n = R.n_vector(model, " her", " him")
    expected = model.forward(ids)[:, position] @ n
    got = ex.observable_values(model, ids, preset(model, "obj"), position)
    assert np.abs(got - expected).max() <= SAME * np.abs(model.forward(ids)[:, position]).max()
