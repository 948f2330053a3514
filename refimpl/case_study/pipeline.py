"""The paper's case study (Sections 6-7, Appendix A) as one pipeline: prompts, observables, every
experiment (``compute``), the verdicts on the paper's claims (``refimpl.case_study.verdicts``), and tables, figures
and a Markdown summary (``write``). ``obsprop demo`` runs ``run_demo``; ``scripts/organism_check.py``
prints the same verdicts from ``compute``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from refimpl import experiments as ex
from refimpl.case_study import verdicts
from refimpl.propagation.analysis import compare_features, cosine, coupling, feature_norms
from refimpl.propagation.observables import observable
from refimpl.propagation.boundaries import final_ln_boundary, mlp_inputs
from refimpl.propagation.layernorms import ln_input_norms, ln_input_points
from refimpl.propagation.propagate import head_features
from refimpl.records import Table, head_label
from refimpl.case_study.writing import write
from refimpl.case_study.prompts import LN_GROUPS, OBSERVABLES, TASK_TEMPLATE, paper_prompts, token_text

top_heads = verdicts.top_heads


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
    from refimpl.propagation.scan import scan_virtual_heads

    r["scan"] = scan_virtual_heads(model, obs["subj"], top_k=10)
    r["claims"] = verdicts.claims(r)
    return r


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


