"""The paper's case study (Sections 6-7, Appendix A) as one pipeline: prompts, observables, every
experiment, tables, figures and a Markdown summary. ``obsprop demo`` runs it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import experiments as ex
from . import organism as world
from .analysis import compare_features, cosine, coupling, feature_norms
from .observables import observable
from .propagation import head_features, ln_input_norms
from .records import Table, head_label, head_table
from .scan import scan_virtual_heads

OBSERVABLES = {
    "subj": {" she": 1, " he": -1},
    "obj": {" her": 1, " him": -1},
    "same": {" actress": 1, " actor": -1},
    "diff": {" nurse": 1, " programmer": -1},
}


def prompt_ids(model, template_key: str, names) -> np.ndarray:
    """Token ids [len(names), seq] of one template filled with each name (all names are one token)."""
    template = world.TEMPLATES[template_key]
    ids = [model.tokenizer.encode(template.prompt(n)) for n in names]
    if len({len(i) for i in ids}) != 1:
        raise ValueError(f"prompts of {template_key} have different lengths; use one-token names")
    return np.array(ids)


def paper_prompts(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(female ids, male ids) per template, with the paper's 10 + 10 names (Section 6.3)."""
    return {key: (prompt_ids(model, key, world.PAPER_FEMALE), prompt_ids(model, key, world.PAPER_MALE))
            for key in world.TEMPLATES}


def top_heads(values: np.ndarray, k: int) -> list[tuple[int, int]]:
    order = np.argsort(-values, axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(o, values.shape)) for o in order]


class Progress:
    def __init__(self, quiet: bool = False):
        self.start, self.quiet = time.perf_counter(), quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", flush=True)


def run_demo(model, out: str | Path, figures: bool = True, quiet: bool = False) -> dict:
    """Run the whole case study on ``model`` and write tables, figures and summary.md into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = Progress(quiet)
    obs = {name: observable(model, spec, name) for name, spec in OBSERVABLES.items()}
    prompts = paper_prompts(model)
    subj_f, subj_m = prompts["subj_friend"]
    obj_f, obj_m = prompts["obj_love"]
    results: dict = {"model": model.source, "config": {k: getattr(model.config, k) for k in
                                                       ("d_model", "n_layers", "n_heads", "d_mlp", "window_size")}}

    def save(table: Table, name: str) -> Table:
        table.to_csv(out / f"{name}.csv")
        table.to_json(out / f"{name}.json")
        return table

    say("feature vectors and norms (Section 6.5)")
    F = {name: head_features(model, o) for name, o in obs.items()}
    norms = {name: feature_norms(f) for name, f in F.items()}
    norms_ln = {}
    for name, ids in (("subj", np.concatenate([subj_f, subj_m])), ("obj", np.concatenate([obj_f, obj_m]))):
        F_ln = head_features(model, obs[name], layernorm="estimate", norms=ln_input_norms(model, ids))
        norms_ln[name] = feature_norms(F_ln)
    for name in ("subj", "obj"):
        save(head_table(norms[name], "norm"), f"norms_{name}")
        save(head_table(norms_ln[name], "norm_with_ln"), f"norms_with_ln_{name}")

    say("path patching per head (Figure 2)")
    patch = {"subj": ex.path_patch_heads(model, subj_f, subj_m, obs["subj"]),
             "obj": ex.path_patch_heads(model, obj_f, obj_m, obs["obj"])}
    for name in patch:
        save(head_table(patch[name], "clean_minus_patched"), f"patching_{name}")

    say("direct logit attribution")
    dla = {name: ex.direct_logit_attribution(model, np.concatenate([f, m]), obs[name])
           for name, (f, m) in (("subj", (subj_f, subj_m)), ("obj", (obj_f, obj_m)))}

    say("cosines and couplings between observables (Sections 6.6-6.7)")
    compare = save(compare_features(F["subj"], F["obj"]), "compare_subj_obj")
    cos_so, c_so, c_os = cosine(F["subj"], F["obj"]), coupling(F["subj"], F["obj"]), coupling(F["obj"], F["subj"])
    residual_cos = float(cosine(obs["subj"].residual, obs["obj"].residual))

    k = min(3, model.config.n_layers * model.config.n_heads)
    heads = top_heads(norms["subj"], k)
    say("coupling coefficients vs best-fit slopes (Table 1)")
    table1 = save(ex.coupling_vs_fit(model, np.concatenate([subj_f, subj_m]), heads, obs["subj"], obs["obj"]), "table1")

    say("activation steering along head features (Table 2)")
    steering_rows = []
    for name, ids in (("subj", np.concatenate([subj_f, subj_m])), ("obj", np.concatenate([obj_f, obj_m]))):
        for (l, h) in heads:
            token = int(np.argmax(np.abs(dla[name][1][l, h])))
            v = F[name][l, h]
            scale = ex.activation_scale(model, ids, l, token, v)
            table = ex.steer(model, ids, {name: obs[name]}, f"blocks.{l}.hook_resid_pre", token, v, [-scale, scale])
            steering_rows.append({"head": head_label(l, h), "observable": name, "token": token,
                                  "multiplier": round(scale, 4), "minus_effect": table[0][f"{name}_effect"],
                                  "plus_effect": table[1][f"{name}_effect"]})
    steering = save(Table(steering_rows), "table2_steering")

    say("gender bias setting (Section 7)")
    occ_f, occ_m = prompts["occupation"]
    bias = {}
    for name in ("same", "diff"):
        female, male = ex.observable_values(model, occ_f, obs[name]), ex.observable_values(model, occ_m, obs[name])
        bias[name] = {"mean_female": float(female.mean()), "mean_male": float(male.mean()),
                      "paper_style_mean": float(np.concatenate([female, -male]).mean()),
                      "female_minus_male": float(female.mean() - male.mean())}
    save(compare_features(F["diff"], F["same"]), "compare_diff_same")
    mitigation = save(ex.bias_mitigation_search(model, np.concatenate([occ_f, occ_m]), obs["diff"], obs["same"],
                                                top=min(4, k + 1), multipliers=(-0.5, -1.0), relative=True),
                      "table3_bias_mitigation")

    say("LayerNorm studies (Appendix A)")
    ln_norms_table = save(ex.layer_norm_input_norms(model, np.concatenate([subj_f, subj_m])), "fig6_layernorm_input_norms")
    gain = save(ex.layer_norm_gain_variance(model, np.concatenate([subj_f, subj_m])), "fig7_gain_variance")
    groups = [prompts[key] for key in ("subj_friend", "subj_funny", "subj_hard")]
    mae = ex.ln_final_approximation_error(model, groups, obs["subj"])
    save(Table([{"source_group": i + 1, **{f"group_{j + 1}": float(mae[i, j]) for j in range(3)}} for i in range(3)]),
         "table4_ln_final_mae")

    say("the MLP along x- -> x+ (Figure 4)")
    l_top, h_top = heads[0]
    mlp_layer = max(0, l_top - 1)
    _, t2 = model.run_with_trace(np.stack([subj_m[0], subj_f[0]]), names=[f"blocks.{mlp_layer}.ln2.hook_normalized"])
    x_neg, x_pos = t2[f"blocks.{mlp_layer}.ln2.hook_normalized"][:, -1]
    segment = save(ex.mlp_segment(model, mlp_layer, F["subj"][l_top, h_top], x_neg, x_pos), "fig4_mlp_segment")

    say("virtual-head scan (beyond the paper)")
    scan = save(scan_virtual_heads(model, obs["subj"], top_k=10), "scan_virtual_heads_subj")

    if figures:
        say("figures")
        from . import figures as fig

        fig.heatmap(norms["subj"], "Figure 1: feature norms, n_subj (no LayerNorm)", out / "fig1_norms_subj.png")
        fig.heatmap(norms["obj"], "Figure 1: feature norms, n_obj (no LayerNorm)", out / "fig1_norms_obj.png")
        fig.heatmap(patch["subj"], "Figure 2: path patching, n_subj (clean - patched)", out / "fig2_patching_subj.png",
                    centred=True)
        fig.heatmap(patch["obj"], "Figure 2: path patching, n_obj", out / "fig2_patching_obj.png", centred=True)
        fig.heatmap(cos_so, "Figure 3a: cosine(subj, obj)", out / "fig3a_cosine.png", centred=True)
        fig.heatmap(c_so, "Figure 3b: coupling subj -> obj", out / "fig3b_coupling_subj_obj.png", centred=True)
        fig.heatmap(c_os, "Figure 3c: coupling obj -> subj", out / "fig3c_coupling_obj_subj.png", centred=True)
        fig.heatmap(cosine(F["same"], F["diff"]), "Figure 5a: cosine(same, diff)", out / "fig5a_cosine.png", centred=True)
        fig.heatmap(coupling(F["same"], F["diff"]), "Figure 5b: coupling same -> diff", out / "fig5b_coupling.png",
                    centred=True)
        l1, h1 = heads[0]
        scores = ex.head_input_scores(model, np.concatenate([subj_f, subj_m]), l1, [F["subj"][l1, h1], F["obj"][l1, h1]])
        slope, intercept, _ = ex.best_fit(scores[0], scores[1])
        fig.scatter_fit(scores[0], scores[1], slope, intercept, f"Table 1: head {head_label(l1, h1)} input scores",
                        "n_subj feature score", "n_obj feature score", out / "table1_scatter.png")
        fig.mlp_curve(segment, f"Figure 4: MLP{mlp_layer} along x- -> x+ (feature of {head_label(l_top, h_top)})",
                      out / "fig4_mlp.png")

    results.update({
        "top_heads_by_norm_subj": [head_label(*h) for h in heads],
        "top_heads_by_patching_subj": [head_label(*h) for h in top_heads(patch["subj"], k)],
        "residual_cosine_subj_obj": residual_cos, "bias": bias,
        "table1": table1.rows, "steering": steering.rows, "mitigation": mitigation.rows,
        "ln_final_mae": mae.tolist(), "scan_top": scan.rows[:5],
    })
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (out / "summary.md").write_text(summary(model, results, norms, norms_ln, patch, compare, ln_norms_table, gain,
                                            segment, figures))
    say(f"done: {out / 'summary.md'}")
    return results


def summary(model, r: dict, norms, norms_ln, patch, compare: Table, ln_norms: Table, gain: Table, segment: Table,
            figures: bool) -> str:
    """The Markdown summary: the paper's Section 6 and 7, for this model."""
    cfg = model.config
    k = len(r["top_heads_by_norm_subj"])
    overlap = set(r["top_heads_by_norm_subj"]) & set(r["top_heads_by_patching_subj"])
    fmt_heads = lambda values: ", ".join(f"{head_label(*h)} ({values[h]:.3f})" for h in top_heads(values, k))  # noqa
    by_cos = compare.rows[:k]
    planted = world.PLANTED_LOG_ODDS_GAP
    lines = [
        f"# Observable propagation on {model.source}",
        "",
        f"{cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}. Prompts: the paper's templates "
        "(Section 6.3, Appendix A.3, Section 7) with its 10 female and 10 male names. Observables: "
        "n_subj = ' she' - ' he', n_obj = ' her' - ' him', n_same = ' actress' - ' actor', "
        "n_diff = ' nurse' - ' programmer'.",
        "",
        "## Feature norms (Section 6.5, Figure 1)",
        f"Without LayerNorm, the largest n_subj feature norms: {fmt_heads(norms['subj'])}; n_obj: "
        f"{fmt_heads(norms['obj'])}. With LayerNorm factors (sqrt(d) gamma, ln_final estimated from the prompts): "
        f"n_subj {fmt_heads(norms_ln['subj'])}.",
        "",
        "## Path patching (Figure 2)",
        f"Largest clean - patched effects for n_subj: {fmt_heads(patch['subj'])}; n_obj: {fmt_heads(patch['obj'])}. "
        f"Of the top {k} heads by feature norm, {len(overlap)} are among the top {k} by patching "
        f"({', '.join(sorted(overlap)) or 'none'})"
        + (" — the data-free ranking predicts the data-dependent one here." if len(overlap) >= max(1, k - 1) else
           " — on this model the norm ranking and the patching ranking differ (QK effects, Section 5.1.2)."),
        "",
        "## Cosines and couplings (Sections 6.6-6.7, Figure 3, Table 1)",
        "Heads with the highest cosine between their n_subj and n_obj features: "
        + ", ".join(f"{row['label']} ({row['cosine']:.4f})" for row in by_cos)
        + f". For comparison, cos(W_U^T n_subj, W_U^T n_obj) = {r['residual_cosine_subj_obj']:.4f}.",
        "",
        "| head | coupling subj -> obj | cosine | best-fit slope | r^2 |",
        "|---|---|---|---|---|",
        *[f"| {row['head']} | {row['coupling']:.4f} | {row['cosine']:.4f} | {row['best_fit_slope']:.4f} | "
          f"{row['r2']:.4f} |" for row in r["table1"]],
        "",
        "Theorem 2 predicts the slope from the coupling when the cosine is high; the gap is reported as measured.",
        "",
        "## Activation steering (Section 6.9, Table 2)",
        "Each head's feature v added as -k v and +k v to the residual before that head's layer at the token "
        "with the largest direct attribution (k scales v to the mean norm of that activation).",
        "",
        "| head | observable | token | k | -k v effect | +k v effect |",
        "|---|---|---|---|---|---|",
        *[f"| {s['head']} | {s['observable']} | {s['token']} | {s['multiplier']:.3g} | {s['minus_effect']:.4f} | "
          f"{s['plus_effect']:.4f} |" for s in r["steering"]],
        "",
        "## Gender bias (Section 7)",
        f"Mean n_same over female prompts minus male prompts: {r['bias']['same']['female_minus_male']:.4f} "
        f"(paper-style symmetric mean {r['bias']['same']['paper_style_mean']:.4f}); n_diff: "
        f"{r['bias']['diff']['female_minus_male']:.4f} (symmetric mean {r['bias']['diff']['paper_style_mean']:.4f})."
        + (f" The organism's planted nurse/programmer log-odds gap is {planted:.4f}." if "organism" in str(model.source)
           else ""),
        "",
        "Steering: k = multiplier x (mean norm of the activation) / |feature|, so -1 adds the negated feature "
        "scaled to the activation's own norm.",
        "",
        "| head | token | coupling diff -> same | multiplier | n_diff effect | n_same effect |",
        "|---|---|---|---|---|---|",
        *[f"| {m['head']} | {m['token']} | {m['coupling']:.4f} | {m['multiplier']:g} | {m['n_diff_effect']:.4f} | "
          f"{m['n_same_effect']:.4f} |" for m in r["mitigation"]],
        "",
        "## LayerNorm (Appendix A)",
        "Mean input norms: " + ", ".join(f"{row['layernorm']} {row['mean_input_norm']:.2f}" for row in ln_norms) + ".",
        f"Mean variance of the LayerNorm gains: {np.mean(gain.column('gain_variance')):.6f} (the paper's A.2 ratio "
        "divides it by a mean absolute value: different units, erratum 5).",
        "",
        "ln_final linear approximation, mean absolute error (rows: source prompt group, columns: target group):",
        "",
        "| source | group 1 | group 2 | group 3 |",
        "|---|---|---|---|",
        *[f"| {i + 1} | " + " | ".join(f"{v:.4f}" for v in row) + " |" for i, row in enumerate(r["ln_final_mae"])],
        "",
        "## MLP linearisation (Figure 4)",
        ("y . MLP changes sign between x- (a male prompt) and x+ (a female prompt); the linearisation point is "
         f"the root at t = {segment[0]['boundary_t']:.3f}." if segment[0]["boundary_target"] == 0 else
         "y . MLP does NOT change sign between x- (a male prompt) and x+ (a female prompt) on this model; the "
         f"linearisation point is where it equals the mean of its end values (t = {segment[0]['boundary_t']:.3f}, "
         "the authors' fallback)."),
        f"Along the segment, the largest |error| of the linearisation at that point is "
        f"{max(abs(a - b) for a, b in zip(segment.column('actual'), segment.column('linear_at_boundary'))):.4f}, at "
        f"x- {max(abs(a - b) for a, b in zip(segment.column('actual'), segment.column('linear_at_x_neg'))):.4f}, at x+ "
        f"{max(abs(a - b) for a, b in zip(segment.column('actual'), segment.column('linear_at_x_pos'))):.4f}.",
        "",
        "## Virtual heads (beyond the paper)",
        "Largest length-2 virtual-head feature norms for n_subj: "
        + ", ".join(f"{row['path']} ({row['norm']:.3f})" for row in r["scan_top"]) + ".",
        "",
        "Tables are in this folder as CSV and JSON" + (", figures as PNG." if figures else "."),
    ]
    return "\n".join(lines) + "\n"
