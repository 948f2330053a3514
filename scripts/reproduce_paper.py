"""Reproduce the paper's tables (Sections 6-7, Appendix A) on GPT-Neo-1.3B, next to the printed values.

    python scripts/reproduce_paper.py --model EleutherAI/gpt-neo-1.3B      # needs the real weights
    python scripts/reproduce_paper.py --model bench-cache/gpt-neo-1.3B-random   # runs anywhere; numbers mean nothing

Columns: "oracle" is this project's value with the correct conventions; "authors' conv." recomputes it
with the authors' code conventions where those differ (LayerNorm factors, couplings of ln_f-scaled
features); "paper" is the printed number. Ends with the run's time and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import refimpl  # noqa: E402
from refimpl.case_study import pipeline as case_study  # noqa: E402
from refimpl import experiments as ex
from refimpl.case_study import paper

PAPER = {  # the printed numbers, from refimpl/case_study/paper.py (one place for the whole project)
    "norms_subj": paper.NORMS_SUBJ, "norms_obj": paper.NORMS_OBJ, "norms_ln_subj": paper.NORMS_LN_SUBJ,
    "norms_ln_obj": paper.NORMS_LN_OBJ, "cosine": paper.COSINE_SUBJ_OBJ, "patch_subj": paper.PATCH_SUBJ,
    "patch_obj": paper.PATCH_OBJ, "table1": paper.TABLE1, "svd_17.14_subj": paper.SVD_17_14_SUBJ,
    "table2": paper.TABLE2, "bias": paper.BIAS, "table3": paper.TABLE3, "ln_gain_variance": paper.LN_GAIN_VARIANCE,
    "table4": paper.TABLE4, "residual_cosine": paper.RESIDUAL_COSINE, "virtual": paper.VIRTUAL,
}


def head(label: str) -> tuple[int, int]:
    layer, h = label.split(".")
    return int(layer), int(h)


START = time.perf_counter()


def show(title: str, rows: list[tuple], header: tuple) -> None:
    print(f"\n## {title}   [{time.perf_counter() - START:.1f} s]", flush=True)
    print(" | ".join(f"{h:>14}" for h in header))
    for row in rows:
        print(" | ".join(f"{v:>14.4f}" if isinstance(v, float) else f"{str(v):>14}" for v in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="EleutherAI/gpt-neo-1.3B")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    start = time.perf_counter()
    model = refimpl.load(args.model, dtype=args.dtype)
    cfg = model.config
    if (cfg.n_layers, cfg.n_heads) != (24, 16):
        print(f"reproduce_paper: error: {args.model} has {cfg.n_layers} layers x {cfg.n_heads} heads; the paper's "
              "tables name heads of GPT-Neo-1.3B (24 x 16): use it or its random-weight shape "
              "(python scripts/bench_forward.py --shape 1.3B creates bench-cache/gpt-neo-1.3B-random)", file=sys.stderr)
        raise SystemExit(2)
    obs = {k: refimpl.observable(model, v, k) for k, v in case_study.OBSERVABLES.items()}
    prompts = case_study.paper_prompts(model)
    (sf, sm), (of, om), (cf, cm) = prompts["subj_friend"], prompts["obj_love"], prompts["occupation"]
    subj_ids, obj_ids = np.concatenate([sf, sm]), np.concatenate([of, om])
    F = {k: refimpl.head_features(model, o) for k, o in obs.items()}
    d = cfg.d_model

    # Section 6.5: norms without and with LayerNorm
    ln_norms = {}
    for name, ids in (("subj", subj_ids), ("obj", obj_ids)):
        norms = refimpl.feature_norms(F[name])
        show(f"6.5 feature norms, n_{name}, no LayerNorm (Figure 1)",
             [(h, float(norms[head(h)]), v) for h, v in PAPER[f"norms_{name}"].items()], ("head", "oracle", "paper"))
        ln = ln_norms[name] = refimpl.ln_input_norms(model, ids, trace=ex.clean_run(model, ids)[1])  # shared run
        with_ln = refimpl.feature_norms(refimpl.head_features(model, obs[name], "estimate", norms=ln))
        # the authors' convention: ln_2's gain on attention nodes, ln_f's gain applied on the input side
        u = obs[name].residual / ln["ln_final"]
        authors = np.stack([np.linalg.norm(np.sqrt(d) * model.weights[f"blocks.{l}.ln2.w"] * model.weights["ln_final.w"]
                                           * np.sqrt(d) * refimpl.propagation.propagate.head_feature_layer(model, l, u), axis=-1)
                            for l in range(cfg.n_layers)])
        show(f"6.5 feature norms, n_{name}, with LayerNorm", [(h, float(with_ln[head(h)]), float(authors[head(h)]), v)
                                                             for h, v in PAPER[f"norms_ln_{name}"].items()],
             ("head", "oracle", "authors' conv.", "paper"))

    # Figure 2: path patching
    for name, (f, m) in (("subj", (sf, sm)), ("obj", (of, om))):
        patch = ex.path_patch_heads(model, f, m, obs[name])
        show(f"6.5 path patching, n_{name} (clean - patched; paper says corrupted - clean, erratum 6)",
             [(h, float(patch[head(h)]), v) for h, v in PAPER[f"patch_{name}"].items()], ("head", "oracle", "paper"))

    # 6.6-6.7 and Table 1
    cos = refimpl.cosine(F["subj"], F["obj"])
    show("6.6 cosine(subj, obj)", [(h, float(cos[head(h)]), v) for h, v in PAPER["cosine"].items()],
         ("head", "oracle", "paper"))
    show("6.6 cosine of the observables' residual images", [("W_U^T n", float(refimpl.cosine(obs["subj"].residual,
                                                                                              obs["obj"].residual)),
                                                             PAPER["residual_cosine"])], ("", "oracle", "paper"))
    ln_s, ln_o = ln_norms["subj"]["ln_final"], ln_norms["obj"]["ln_final"]
    heads = [head(h) for h in PAPER["table1"]]
    table1 = ex.coupling_vs_fit(model, subj_ids, heads, obs["subj"], obs["obj"])
    rows = []
    for row, (h, printed) in zip(table1, PAPER["table1"].items()):
        scaled = float(refimpl.coupling(F["subj"][head(h)] / ln_s, F["obj"][head(h)] / ln_o))
        rows.append((h, row["coupling"], scaled, printed[0], row["cosine"], printed[1], row["best_fit_slope"], printed[2],
                     row["r2"], printed[3]))
    show("Table 1 (coupling: raw features; authors' conv.: ln_f-scaled features, erratum 2)", rows,
         ("head", "coupling", "authors' conv.", "paper", "cosine", "paper", "slope", "paper", "r^2", "paper"))

    # 6.8 SVD
    l, h = head("17.14")
    table = refimpl.svd_alignment(model, l, h, F["subj"][l, h], k=5)
    show("6.8 right singular vectors of W_OV 17.14 best aligned with the n_subj feature",
         [(r["index"], r["abs_cosine"], pi, pc) for r, pi, pc in zip(table, *PAPER["svd_17.14_subj"])],
         ("index", "|cosine|", "paper index", "paper cosine"))

    # 6.9 Table 2: +-50 v at the paper's token (when it exists) of the pre-LayerNorm residual
    rows = []
    for label, name, token, minus, plus in PAPER["table2"]:
        l, h = head(label)
        ids = subj_ids if name == "subj" else obj_ids
        position = token if token < ids.shape[1] else ids.shape[1] - 1
        t = ex.steer(model, ids, {name: obs[name]}, f"blocks.{l}.hook_resid_pre", position, F[name][l, h], [-50, 50])
        rows.append((label, name, position, t[0][f"{name}_effect"], minus, t[1][f"{name}_effect"], plus))
    show("Table 2: steering +-50 v", rows, ("head", "obs", "token", "-50v", "paper", "+50v", "paper"))

    # 6.10 and 7.3: virtual heads and an MLP node (MLP16 linearised between one male and one female prompt,
    # at the token where 17.14's direct attribution is largest)
    def mlp_points(ids_f, ids_m, name):
        _, per_position = ex.direct_logit_attribution(model, np.concatenate([ids_f, ids_m]), obs[name])
        token = int(np.argmax(np.abs(per_position[17, 14])))
        key = "blocks.16.ln2.hook_normalized"
        _, t = model.run_with_trace(np.stack([ids_m[0], ids_f[0]]), names=[key], logits_at=-1)
        return {16: (t[key][0, token], t[key][1, token])}

    cos = refimpl.cosine
    paths = {}
    for name, (f, m) in (("subj", (sf, sm)), ("obj", (of, om))):
        paths[name] = {
            "13.3": F[name][13, 3],
            "13.3->17.14": refimpl.path_feature(model, obs[name], ["13.3", "17.14"]),
            "13.3->MLP16->17.14": refimpl.path_feature(model, obs[name], ["13.3", "MLP16", "17.14"],
                                                       mlp_points=mlp_points(f, m, name), mlp_fallback="mean"),
        }
    ours = {
        "cos 13.3 subj/obj": cos(paths["subj"]["13.3"], paths["obj"]["13.3"]),
        "cos 13.3->17.14 subj/obj": cos(paths["subj"]["13.3->17.14"], paths["obj"]["13.3->17.14"]),
        "cos 13.3->17.14 vs 13.3->MLP16->17.14, subj": cos(paths["subj"]["13.3->17.14"], paths["subj"]["13.3->MLP16->17.14"]),
        "cos 13.3->17.14 vs 13.3->MLP16->17.14, obj": cos(paths["obj"]["13.3->17.14"], paths["obj"]["13.3->MLP16->17.14"]),
        "cos 13.3->MLP16->17.14 subj/obj": cos(paths["subj"]["13.3->MLP16->17.14"], paths["obj"]["13.3->MLP16->17.14"]),
        "cos 6.6->15.13->17.14 (same) vs 6.6->15.13->21.13 (diff)": cos(
            refimpl.path_feature(model, obs["same"], ["6.6", "15.13", "17.14"]),
            refimpl.path_feature(model, obs["diff"], ["6.6", "15.13", "21.13"])),
        "cos 6.6 same/diff": cos(F["same"][6, 6], F["diff"][6, 6]),
    }
    show("6.10 / 7.3 virtual heads and MLP16 (layernorm ignored)",
         [(k, float(ours[k]), v) for k, v in PAPER["virtual"].items()], ("quantity", "oracle", "paper"))

    # Section 7
    rows = []
    for name in ("same", "diff"):
        values = ex.observable_values(model, np.concatenate([cf, cm]), obs[name])  # one run for both
        female, male = values[:len(cf)], values[len(cf):]
        rows.append((name, float(np.concatenate([female, -male]).mean()), PAPER["bias"][name]))
    show("7.2 mean logit difference (female with n, male with -n)", rows, ("observable", "oracle", "paper"))
    occ = np.concatenate([cf, cm])
    C = refimpl.coupling(F["diff"], F["same"])
    rows = []
    for label, token, k, diff_effect, same_effect in PAPER["table3"]:
        l, h = head(label)
        t = ex.steer(model, occ, {"diff": obs["diff"], "same": obs["same"]}, f"blocks.{l}.hook_resid_pre",
                     min(token, occ.shape[1] - 1), F["diff"][l, h], [k])
        rows.append((label, float(C[l, h]), t[0]["diff_effect"], diff_effect, t[0]["same_effect"], same_effect))
    show("Table 3: bias-mitigation steering", rows, ("head", "coupling", "n_diff eff.", "paper", "n_same eff.", "paper"))

    # Appendix A
    gain = ex.layer_norm_gain_variance(model, subj_ids)
    show("A.2 mean variance of LayerNorm gains", [("all LNs", float(np.mean(gain.column("gain_variance"))),
                                                   PAPER["ln_gain_variance"])], ("", "oracle", "paper"))
    groups = [prompts[k] for k in ("subj_friend", "subj_funny", "subj_hard")]
    mae = ex.ln_final_approximation_error(model, groups, obs["subj"])
    show("Table 4: ln_final linearisation MAE", [(i + 1, *map(float, mae[i]), *PAPER["table4"][i]) for i in range(3)],
         ("source", "g1", "g2", "g3", "paper g1", "paper g2", "paper g3"))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\nran in {time.perf_counter() - start:.1f} s, peak RSS {peak / 1e9:.2f} GB")


if __name__ == "__main__":
    try:
        main()
    except refimpl.RefimplError as exc:
        print(f"reproduce_paper: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
