"""Writing the case study's results: every table as CSV and JSON, the figures, the summary, ``results.json``."""

from __future__ import annotations
import json
from pathlib import Path
import numpy as np
from refimpl.errors import InputError
from refimpl.records import Table, head_label, head_table
from refimpl.case_study.summary import summary
from refimpl.case_study.verdicts import top_heads
from refimpl.case_study.prompts import LN_GROUPS


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
    from refimpl.case_study import figures as fig

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
