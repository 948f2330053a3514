"""The paper's case study (Sections 6-7, Appendix A) as one pipeline: prompts, observables, every
experiment (``compute``), the verdicts on the paper's claims (``refimpl.verdicts``), and tables, figures
and a Markdown summary (``write``). ``obsprop demo`` runs ``run_demo``; ``scripts/organism_check.py``
prints the same verdicts from ``compute``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import experiments as ex
from . import organism as world
from . import verdicts
from .analysis import compare_features, cosine, coupling, feature_norms
from .errors import InputError
from .observables import observable
from .propagation import final_ln_boundary, head_features, ln_input_norms, ln_input_points, mlp_inputs
from .records import Table, head_label, head_table

OBSERVABLES = {
    "subj": {" she": 1, " he": -1},
    "obj": {" her": 1, " him": -1},
    "same": {" actress": 1, " actor": -1},
    "diff": {" nurse": 1, " programmer": -1},
}
TASK_TEMPLATE = {"subj": "subj_friend", "obj": "obj_love", "same": "occupation", "diff": "occupation"}
LN_GROUPS = ("subj_friend", "subj_funny", "subj_hard")  # Appendix A.3's prompt groups 1, 2, 3
top_heads = verdicts.top_heads


def prompt_ids(model, template_key: str, names) -> np.ndarray:
    """Token ids [len(names), seq] of one template filled with each name (all names are one token)."""
    if template_key not in world.TEMPLATES:
        raise InputError(f"unknown template {template_key!r}; choose from {sorted(world.TEMPLATES)}")
    template = world.TEMPLATES[template_key]
    ids = [model.tokenizer.encode(template.prompt(n)) for n in names]
    if len({len(i) for i in ids}) != 1:
        raise InputError(f"prompts of {template_key} have different lengths; use one-token names")
    return np.array(ids)


def paper_prompts(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(female ids, male ids) per template, with the paper's 10 + 10 names (Section 6.3)."""
    return {key: (prompt_ids(model, key, world.PAPER_FEMALE), prompt_ids(model, key, world.PAPER_MALE))
            for key in world.TEMPLATES}


def token_text(model, ids: np.ndarray, position: int) -> str:
    """What sits at ``position`` of a batch of prompts of one template: the token's text, or "[name]"
    where the prompts differ (the name slot)."""
    column = np.asarray(ids)[:, position]
    return "[name]" if len(set(column.tolist())) > 1 else repr(model.tokenizer.decode([int(column[0])]))


def token_label(model, ids: np.ndarray, position: int) -> str:
    """``position`` (counted from 0) with its text, e.g. "3 [name]" or "11 ' isn'"."""
    index = position % np.asarray(ids).shape[1]
    return f"{index} {token_text(model, ids, index)}"


def exact_layernorm_points(model, obs, female: np.ndarray, male: np.ndarray) -> dict[str, np.ndarray]:
    """Points for layernorm="exact" from the paper's prompts: every block LayerNorm's input at the last
    token of the first female prompt, and for ln_final a point on the decision boundary between the mean
    last-token ln_final inputs of the male and the female prompts (the authors' fallback, the mean of the
    two values, when they have one sign)."""
    points = ln_input_points(model, female[:1])
    final = f"blocks.{model.config.n_layers - 1}.hook_resid_post"
    _, tf = model.run_with_trace(female, names=[final])
    _, tm = model.run_with_trace(male, names=[final])
    boundary = final_ln_boundary(model, obs, tm[final][:, -1].mean(0), tf[final][:, -1].mean(0), fallback="mean")
    points["ln_final"] = boundary.point.astype(model.dtype)
    return points


class Progress:
    """Prints "[  12.3 s] message" lines (nothing when quiet)."""

    def __init__(self, quiet: bool = False):
        self.start, self.quiet = time.perf_counter(), quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", flush=True)


def compute(model, say=None) -> dict:
    """Every experiment of the case study on ``model``: a dict of arrays and ``Table`` records."""
    say = say or (lambda message: None)
    obs = {name: observable(model, spec, name) for name, spec in OBSERVABLES.items()}
    prompts = paper_prompts(model)
    task = {name: prompts[TASK_TEMPLATE[name]] for name in OBSERVABLES}
    both = {name: np.concatenate(task[name]) for name in OBSERVABLES}
    cfg = model.config
    r: dict = {"model": model.source, "dtype": str(model.dtype), "observables": obs, "prompts": prompts,
               "config": {k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "d_mlp", "window_size")}}
    k = r["k"] = min(3, cfg.n_layers * cfg.n_heads)

    say("feature vectors and norms (Section 6.5)")
    F = r["features"] = {name: head_features(model, o) for name, o in obs.items()}
    r["norms"] = {name: feature_norms(f) for name, f in F.items()}
    r["norms_ln"] = {name: feature_norms(head_features(model, obs[name], "estimate",
                                                       norms=ln_input_norms(model, both[name],
                                                                            trace=ex.clean_run(model, both[name])[1])))
                     for name in ("subj", "obj")}

    say("path patching per head (Figure 2)")
    r["patch"] = {name: ex.path_patch_heads(model, *task[name], obs[name]) for name in ("subj", "obj")}
    say("activation patching per head, full downstream effect (beside Figure 2)")
    r["patch_full"] = {name: ex.activation_patch_heads(model, *task[name], obs[name]) for name in ("subj", "obj")}

    say("direct logit attribution")
    r["dla"] = {name: ex.direct_logit_attribution(model, both[name], obs[name]) for name in ("subj", "obj")}

    say("cosines and couplings between observables (Sections 6.6-6.7)")
    r["compare_subj_obj"] = compare_features(F["subj"], F["obj"])
    r["cos_so"], r["c_so"], r["c_os"] = (cosine(F["subj"], F["obj"]), coupling(F["subj"], F["obj"]),
                                          coupling(F["obj"], F["subj"]))
    r["residual_cos"] = float(cosine(obs["subj"].residual, obs["obj"].residual))
    heads = r["heads"] = top_heads(r["norms"]["subj"], k)

    say("coupling coefficients vs best-fit slopes over every token (Table 1)")
    r["table1"] = ex.coupling_vs_fit(model, both["subj"], heads, obs["subj"], obs["obj"])
    l1, h1 = heads[0]
    scores = ex.head_input_scores(model, both["subj"], l1, [F["subj"][l1, h1], F["obj"][l1, h1]])
    slope, intercept, _ = ex.best_fit(scores[0], scores[1])
    r["table1_points"] = {"head": heads[0], "x": scores[0], "y": scores[1], "slope": slope, "intercept": intercept,
                          "coupling": float(r["table1"][0]["coupling"])}

    say("activation steering along head features (Table 2)")
    rows = []
    for name in ("subj", "obj"):
        for l, h in heads:
            token = int(np.argmax(np.abs(r["dla"][name][1][l, h])))
            scale = ex.activation_scale(model, both[name], l, token, F[name][l, h])
            table = ex.steer(model, both[name], {name: obs[name]}, f"blocks.{l}.hook_resid_pre", token,
                             F[name][l, h], [-scale, scale])
            rows.append({"head": head_label(l, h), "observable": name, "token": token,
                         "token_text": token_text(model, both[name], token), "k": scale,
                         "minus_effect": table[0][f"{name}_effect"], "plus_effect": table[1][f"{name}_effect"]})
    r["steering"] = Table(rows)

    say("gender bias setting (Section 7)")
    occ_f, occ_m = task["diff"]
    r["bias"] = {}
    for name in ("same", "diff"):
        values = ex.observable_values(model, both["diff"], obs[name])  # the occupation prompts, one shared run
        female, male = values[:len(occ_f)], values[len(occ_f):]
        r["bias"][name] = {"mean_female": float(female.mean()), "mean_male": float(male.mean()),
                           "paper_style_mean": float(np.concatenate([female, -male]).mean()),
                           "female_minus_male": float(female.mean() - male.mean())}
    r["compare_diff_same"] = compare_features(F["diff"], F["same"])
    r["cos_ds"], r["c_ds"] = cosine(F["diff"], F["same"]), coupling(F["diff"], F["same"])
    mitigation = ex.bias_mitigation_search(model, both["diff"], obs["diff"], obs["same"], top=min(4, k + 1),
                                           multipliers=(-0.5, -1.0), relative=True)
    for row in mitigation.rows:
        row["token_text"] = token_text(model, both["diff"], row["token"])
    r["mitigation"] = mitigation

    say("LayerNorm studies (Appendix A)")
    r["ln_norms"] = ex.layer_norm_input_norms(model, both["subj"])
    r["gain"] = ex.layer_norm_gain_variance(model, both["subj"])
    groups = [prompts[key] for key in LN_GROUPS]
    r["mae"] = ex.ln_final_approximation_error(model, groups, obs["subj"])
    r["ln_logit_scale"] = float(np.mean([np.abs(ex.observable_values(model, np.concatenate(g), obs["subj"])).mean()
                                         for g in groups]))

    say("the MLP along x- -> x+ (Figure 4)")
    l_top, h_top = heads[0]
    r["mlp_layer"], r["mlp_head"] = max(0, l_top - 1), head_label(l_top, h_top)
    # as in the paper's 6.10: one male and one female prompt, at the token the head's attribution comes from
    r["mlp_token"] = int(np.argmax(np.abs(r["dla"]["subj"][1][l_top, h_top])))
    r["mlp_token_text"] = token_text(model, both["subj"], r["mlp_token"])
    x_neg, x_pos = mlp_inputs(model, r["mlp_layer"], task["subj"][1][0], task["subj"][0][0], r["mlp_token"])
    r["segment"] = ex.mlp_segment(model, r["mlp_layer"], F["subj"][l_top, h_top], x_neg, x_pos)

    say("virtual-head scan (beyond the paper)")
    from .scan import scan_virtual_heads

    r["scan"] = scan_virtual_heads(model, obs["subj"], top_k=10)
    r["claims"] = verdicts.claims(r)
    return r


def _renamed(table: Table, first: str, second: str) -> Table:
    """compare_features' generic columns named after the two observables."""
    names = {"norm_1": f"norm_{first}", "norm_2": f"norm_{second}", "coupling_1_to_2": f"coupling_{first}_to_{second}",
             "coupling_2_to_1": f"coupling_{second}_to_{first}"}
    return Table([{names.get(k, k): v for k, v in row.items()} for row in table])


def write(model, r: dict, out: str | Path, figures: bool = True, say=None) -> dict:
    """Write every table (CSV + JSON), the figures (PNG), results.json and summary.md into ``out``."""
    say = say or (lambda message: None)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"--out {str(out)!r} exists and is not a folder") from None
    except OSError as exc:
        raise InputError(f"cannot create the output folder {str(out)!r}: {exc.strerror}") from None

    def save(table: Table, name: str) -> Table:
        table.to_csv(out / f"{name}.csv")
        table.to_json(out / f"{name}.json")
        return table

    for name in ("subj", "obj"):
        save(head_table(r["norms"][name], "norm"), f"norms_{name}")
        save(head_table(r["norms_ln"][name], "norm_with_ln"), f"norms_with_ln_{name}")
        save(head_table(r["patch"][name], "clean_minus_patched"), f"patching_{name}")
        save(head_table(r["patch_full"][name], "clean_minus_patched"), f"activation_patching_{name}")
    save(_renamed(r["compare_subj_obj"], "subj", "obj"), "compare_subj_obj")
    save(_renamed(r["compare_diff_same"], "diff", "same"), "compare_diff_same")
    save(r["table1"], "table1")
    save(r["steering"], "table2_steering")
    save(r["mitigation"], "table3_bias_mitigation")
    save(r["ln_norms"], "fig6_layernorm_input_norms")
    save(r["gain"], "fig7_gain_variance")
    save(Table([{"source_group": i + 1, "template": LN_GROUPS[i],
                 **{f"group_{j + 1}": float(r["mae"][i, j]) for j in range(3)}} for i in range(3)]),
         "table4_ln_final_mae")
    save(r["segment"], "fig4_mlp_segment")
    save(r["scan"], "scan_virtual_heads_subj")
    save(r["claims"], "claims")
    if figures:
        say("figures")
        write_figures(r, out)
    results = {
        "model": r["model"], "dtype": r["dtype"], "config": r["config"],
        "top_heads_by_norm_subj": [head_label(*h) for h in r["heads"]],
        "top_heads_by_patching_subj": [head_label(*h) for h in top_heads(np.abs(r["patch"]["subj"]), r["k"])],
        "residual_cosine_subj_obj": r["residual_cos"], "bias": r["bias"], "table1": r["table1"].rows,
        "steering": r["steering"].rows, "mitigation": r["mitigation"].rows, "ln_final_mae": r["mae"].tolist(),
        "scan_top": r["scan"].rows[:5], "claims": r["claims"].rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (out / "summary.md").write_text(summary(model, r, figures))
    return results


def write_figures(r: dict, out: Path) -> None:
    from . import figures as fig

    for name, observable_text in (("subj", "n_subj = ' she' - ' he'"), ("obj", "n_obj = ' her' - ' him'")):
        fig.heatmap(r["norms"][name], f"Figure 1: feature norms |W_OV^T W_U^T n|, {observable_text}",
                    out / f"fig1_norms_{name}.png", label="feature norm (no LayerNorm)")
        fig.heatmap(r["patch"][name], f"Figure 2: path patching, {observable_text}", out / f"fig2_patching_{name}.png",
                    centred=True, label="clean - patched (logits)")
        fig.heatmap(r["patch_full"][name], f"Activation patching (full downstream effect), {observable_text}",
                    out / f"fig2b_activation_patching_{name}.png", centred=True, label="clean - patched (logits)")
    fig.heatmap(r["cos_so"], "Figure 3a: cosine(subj feature, obj feature)", out / "fig3a_cosine.png", centred=True,
                label="cosine")
    fig.heatmap(r["c_so"], "Figure 3b: coupling subj -> obj", out / "fig3b_coupling_subj_obj.png", centred=True,
                label="C(subj -> obj) = y_subj.y_obj / |y_subj|^2")
    fig.heatmap(r["c_os"], "Figure 3c: coupling obj -> subj", out / "fig3c_coupling_obj_subj.png", centred=True,
                label="C(obj -> subj) = y_subj.y_obj / |y_obj|^2")
    fig.heatmap(r["cos_ds"], "Figure 5a: cosine(diff feature, same feature)", out / "fig5a_cosine.png", centred=True,
                label="cosine")
    fig.heatmap(r["c_ds"], "Figure 5b: coupling diff -> same", out / "fig5b_coupling.png", centred=True,
                label="C(diff -> same) = y_diff.y_same / |y_diff|^2")
    p = r["table1_points"]
    fig.scatter_fit(p["x"], p["y"], p["slope"], p["intercept"], p["coupling"],
                    f"Table 1: head {head_label(*p['head'])}, every token of the n_subj prompts ({len(p['x'])} points)",
                    "score on the n_subj feature (x . y_subj)", "score on the n_obj feature (x . y_obj)",
                    out / "table1_scatter.png")
    fig.mlp_curve(r["segment"], f"Figure 4: MLP{r['mlp_layer']} along x- -> x+ (feature of {r['mlp_head']}, n_subj)",
                  out / "fig4_mlp.png")
    fig.bars(r["ln_norms"].column("layernorm"), {"mean input norm": r["ln_norms"].column("mean_input_norm")},
             "Figure 6: mean norm of each LayerNorm's input (n_subj prompts)", "mean |x|", out / "fig6_ln_input_norms.png")
    fig.bars(r["gain"].column("layernorm"), {"variance of the gain": r["gain"].column("gain_variance")},
             "Figure 7: variance of each LayerNorm's gain", "var(gamma)", out / "fig7_gain_variance.png")
    steer = r["steering"]
    fig.bars([f"{s['head']} {s['observable']}" for s in steer],
             {"-k v": steer.column("minus_effect"), "+k v": steer.column("plus_effect")},
             "Table 2: steering along head features (k = activation norm / |v|)", "change of the observable (logits)",
             out / "table2_steering.png")
    mit = r["mitigation"]
    fig.bars([f"{m['head']} m={m['relative_multiplier']:g}" for m in mit],
             {"n_diff effect": mit.column("n_diff_effect"), "n_same effect": mit.column("n_same_effect")},
             "Table 3: bias mitigation (want n_diff < 0 < n_same)", "change of the observable (logits)",
             out / "table3_bias_mitigation.png")


def run_demo(model, out: str | Path, figures: bool = True, quiet: bool = False) -> dict:
    """Run the whole case study on ``model``, write it into ``out`` and print the claims at a glance."""
    say = Progress(quiet)
    r = compute(model, say)
    results = write(model, r, out, figures, say)
    if not quiet:
        print(f"\nClaims at a glance ({model.source}; details in {Path(out) / 'summary.md'}):")
        print(verdicts.console(r["claims"]))
    say(f"done: {Path(out) / 'summary.md'}")
    return results


def _heads(values, k) -> str:
    return ", ".join(f"{head_label(*h)} ({values[h]:.3f})" for h in top_heads(values, k))


def _are(count: int) -> str:
    return "is" if count == 1 else "are"


def summary(model, r: dict, figures: bool) -> str:
    """The Markdown summary: claims at a glance, then the paper's Section 6 and 7 on this model."""
    cfg = model.config
    k = r["k"]
    organism = model.source in (None, "organism", "organism-gpt2")
    folder = "organism" if model.source in (None, "organism") else model.source
    what = (f"the bundled model organism `{folder}`: a {model.config.n_layers}-layer synthetic {model.family.title} "
            "trained on a known world of gendered names, pronouns and a planted nurse/programmer bias (see "
            f"`refimpl/models/{folder}/README.md`, its model card)" if organism else f"`{model.source}`")
    subj_f, subj_m = r["prompts"]["subj_friend"]
    norm_top, patch_top = r["heads"], top_heads(np.abs(r["patch"]["subj"]), k)
    overlap = sorted(set(head_label(*h) for h in norm_top) & set(head_label(*h) for h in patch_top))
    by_cos = r["compare_subj_obj"].rows[:k]
    seg = r["segment"]
    mae = r["mae"]
    lines = [
        f"# Observable propagation on {model.source}",
        "",
        f"Model: {what}; {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, computed in {r['dtype']}.",
        "Prompts: the paper's templates (Section 6.3, Appendix A.3, Section 7) filled with its 10 female and 10 "
        "male names, e.g. " + repr(model.tokenizer.decode(subj_f[0].tolist())) + ". Observables: n_subj = ' she' - "
        "' he', n_obj = ' her' - ' him', n_same = ' actress' - ' actor', n_diff = ' nurse' - ' programmer' "
        "(positive means the female answer). Token positions count from 0 and are shown with their text; "
        "'[name]' is the position of the name.",
        "",
        "## Claims at a glance",
        "",
        verdicts.markdown(r["claims"]),
        "",
        "## Feature norms (Section 6.5, Figure 1)",
        f"Without LayerNorm, the largest n_subj feature norms: {_heads(r['norms']['subj'], k)}; n_obj: "
        f"{_heads(r['norms']['obj'], k)}. With LayerNorm factors (sqrt(d) gamma of ln_1, ln_final estimated from "
        f"the prompts' input norms): n_subj {_heads(r['norms_ln']['subj'], k)}.",
        "",
        "## Path patching (Figure 2)",
        f"Largest clean - patched effects for n_subj: {_heads(r['patch']['subj'], k)}; n_obj: "
        f"{_heads(r['patch']['obj'], k)}. Of the top {k} heads by feature norm, {len(overlap)} {_are(len(overlap))} "
        f"among the top {k} by |patching| ({', '.join(overlap) or 'none'}).",
        "",
        "Activation patching (beyond the paper): the head's output replaced by its value on the male prompt and "
        "every later layer recomputed, so indirect effects count too. Largest clean - patched effects for n_subj: "
        f"{_heads(r['patch_full']['subj'], k)}; n_obj: {_heads(r['patch_full']['obj'], k)}.",
        "",
        "## Cosines and couplings (Sections 6.6-6.7, Figure 3, Table 1)",
        "Heads with the highest cosine between their n_subj and n_obj features: "
        + ", ".join(f"{row['label']} ({row['cosine']:.4f})" for row in by_cos)
        + f". For comparison, cos(W_U^T n_subj, W_U^T n_obj) = {r['residual_cos']:.4f}.",
        "",
        "Table 1: for each of the top heads by n_subj norm, the head's input (its ln_1 output) at every token of "
        f"the n_subj prompts ({r['table1'][0]['points']} points) scored on both features, with the least-squares "
        "slope of the n_obj scores against the n_subj scores.",
        "",
        "| head | coupling subj -> obj | cosine | best-fit slope | r^2 | points |",
        "|---|---|---|---|---|---|",
        *[f"| {row['head']} | {row['coupling']:.4f} | {row['cosine']:.4f} | {row['best_fit_slope']:.4f} | "
          f"{row['r2']:.4f} | {row['points']} |" for row in r["table1"]],
        "",
        "## Activation steering (Section 6.9, Table 2)",
        "Each head's feature v added as -k v and +k v to the residual before that head's layer (hook_resid_pre), at "
        "the token with the largest direct attribution, over all prompts of the task; k scales v to the mean norm "
        "of that activation. The effect is the mean change of the observable at the last token.",
        "",
        "| head | observable | token | k | -k v effect | +k v effect |",
        "|---|---|---|---|---|---|",
        *[f"| {s['head']} | n_{s['observable']} | {s['token']} {s['token_text']} | {s['k']:.3g} | "
          f"{s['minus_effect']:.4f} | {s['plus_effect']:.4f} |" for s in r["steering"]],
        "",
        "## Gender bias (Section 7)",
        f"Mean n_same over female prompts minus male prompts: {r['bias']['same']['female_minus_male']:.4f} "
        f"(paper-style symmetric mean {r['bias']['same']['paper_style_mean']:.4f}); n_diff: "
        f"{r['bias']['diff']['female_minus_male']:.4f} (symmetric mean {r['bias']['diff']['paper_style_mean']:.4f})."
        + (f" The organism's planted nurse/programmer log-odds gap is {world.PLANTED_LOG_ODDS_GAP:.4f}."
           if organism else ""),
        "",
        f"Bias mitigation: the {len({m['head'] for m in r['mitigation']})} heads with the lowest coupling "
        "C(diff -> same) = y_diff.y_same / |y_diff|^2 (Section 7 uses the most negative ones; a positive coupling "
        "below means this model has too few negative ones), each steered with k y_diff at the input of its layer, "
        "at the token with the largest direct attribution. The relative multiplier m gives k = m x (mean norm of "
        "the activation) / |y_diff|, so m = -1 adds the negated feature scaled to the activation's own norm. "
        "Wanted: n_diff effect < 0 (less bias) and n_same effect > 0.",
        "",
        "| head | token | coupling diff -> same | relative multiplier m | k | n_diff effect | n_same effect |",
        "|---|---|---|---|---|---|---|",
        *[f"| {m['head']} | {m['token']} {m['token_text']} | {m['coupling']:.4f} | {m['relative_multiplier']:g} | "
          f"{m['k']:.4g} | {m['n_diff_effect']:.4f} | {m['n_same_effect']:.4f} |" for m in r["mitigation"]],
        "",
        "## LayerNorm (Appendix A)",
        "Mean input norms: " + ", ".join(f"{row['layernorm']} {row['mean_input_norm']:.2f}" for row in r["ln_norms"])
        + ".",
        f"Mean variance of the LayerNorm gains: {np.mean(r['gain'].column('gain_variance')):.6f} (the paper's A.2 "
        "ratio divides it by a mean absolute value: different units, erratum 5).",
        "",
        "ln_final linear approximation (Table 4), mean absolute error in logits. Prompt groups 1, 2, 3 are the three "
        "n_subj templates of Appendix A.3 (" + ", ".join(f"{i + 1}: {world.TEMPLATES[key].text!r}"
                                                        for i, key in enumerate(LN_GROUPS))
        + "), 10 female and 10 male names each. Row: the group whose mean male and female ln_final inputs define "
        "the linearisation point; column: the group whose prompts are approximated.",
        "",
        "| source group | group 1 | group 2 | group 3 |",
        "|---|---|---|---|",
        *[f"| {i + 1} | " + " | ".join(f"{v:.4f}" for v in row) + " |" for i, row in enumerate(mae)],
        "",
        "## MLP linearisation (Figure 4)",
        f"MLP inputs at token {r['mlp_token']} {r['mlp_token_text']} (where {r['mlp_head']}'s direct attribution "
        "comes from) of the first male (x-) and the first female (x+) n_subj prompt. " +
        (f"y . MLP{r['mlp_layer']} (y: the n_subj feature of {r['mlp_head']}) changes sign between x- and x+; the "
         f"linearisation point is the root at t = "
         f"{seg[0]['boundary_t']:.3f}." if seg[0]["boundary_target"] == 0 else
         f"y . MLP{r['mlp_layer']} does NOT change sign between x- (a male prompt) and x+ (a female prompt) on this "
         f"model; the linearisation point is where it equals the mean of its end values (t = "
         f"{seg[0]['boundary_t']:.3f}, the authors' fallback)."),
        "Along the segment, the largest |error| of the linearisation at that point is "
        f"{max(abs(a - b) for a, b in zip(seg.column('actual'), seg.column('linear_at_boundary'))):.4f}; at x- "
        f"{max(abs(a - b) for a, b in zip(seg.column('actual'), seg.column('linear_at_x_neg'))):.4f}; at x+ "
        f"{max(abs(a - b) for a, b in zip(seg.column('actual'), seg.column('linear_at_x_pos'))):.4f}.",
        "",
        "## Virtual heads (beyond the paper)",
        "Largest length-2 virtual-head feature norms for n_subj: "
        + ", ".join(f"{row['path']} ({row['norm']:.3f})" for row in r["scan"].rows[:5]) + ".",
        "",
        "Tables are in this folder as CSV and JSON" + (", figures as PNG." if figures else "."),
    ]
    return "\n".join(lines) + "\n"
