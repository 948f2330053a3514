"""The case study's Markdown summary (``summary.md``): what was run, on which model, the claims at a glance and where each table and figure is."""

from __future__ import annotations
import numpy as np
from refimpl.organism import world as world
from refimpl.case_study import verdicts
from refimpl.records import head_label
from refimpl.case_study.verdicts import top_heads
from refimpl.case_study.prompts import LN_GROUPS
from refimpl.records import markdown_table


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
        *markdown_table(["head", "coupling subj -> obj", "cosine", "best-fit slope", "r^2", "points"],
                        [[row["head"], f"{row['coupling']:.4f}", f"{row['cosine']:.4f}", f"{row['best_fit_slope']:.4f}",
                          f"{row['r2']:.4f}", row["points"]] for row in r["table1"]]).splitlines(),
        "",
        "## Activation steering (Section 6.9, Table 2)",
        "Each head's feature v added as -k v and +k v to the residual before that head's layer (hook_resid_pre), at "
        "the token with the largest direct attribution, over all prompts of the task; k scales v to the mean norm "
        "of that activation. The effect is the mean change of the observable at the last token.",
        "",
        *markdown_table(["head", "observable", "token", "k", "-k v effect", "+k v effect"],
                        [[s["head"], f"n_{s['observable']}", f"{s['token']} {s['token_text']}", f"{s['k']:.3g}",
                          f"{s['minus_effect']:.4f}", f"{s['plus_effect']:.4f}"] for s in r["steering"]]).splitlines(),
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
        *markdown_table(["head", "token", "coupling diff -> same", "relative multiplier m", "k", "n_diff effect",
                         "n_same effect"],
                        [[m["head"], f"{m['token']} {m['token_text']}", f"{m['coupling']:.4f}",
                          f"{m['relative_multiplier']:g}", f"{m['k']:.4g}", f"{m['n_diff_effect']:.4f}",
                          f"{m['n_same_effect']:.4f}"] for m in r["mitigation"]]).splitlines(),
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
        *markdown_table(["source group", "group 1", "group 2", "group 3"],
                        [[i + 1, *(f"{v:.4f}" for v in row)] for i, row in enumerate(mae)]).splitlines(),
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
