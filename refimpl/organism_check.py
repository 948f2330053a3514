"""What the model organism says about the paper's claims (used by scripts/organism_check.py and tests)."""

from __future__ import annotations

import numpy as np

from . import case_study
from . import experiments as ex
from .analysis import cosine, coupling, feature_norms
from .observables import observable
from .propagation import head_features
from .records import head_label


def check(model, k: int = 3) -> dict:
    """Top-k overlap of norm vs patching rankings, coupling vs slope for cos > 0.9, steering along the
    top head's feature (+-1 times the activation's norm)."""
    prompts = case_study.paper_prompts(model)
    out = {"k": k, "tasks": {}}
    for name, key in (("subj", "subj_friend"), ("obj", "obj_love")):
        obs = observable(model, case_study.OBSERVABLES[name], name)
        female, male = prompts[key]
        ids = np.concatenate([female, male])
        F = head_features(model, obs)
        norms = feature_norms(F)
        patch = ex.path_patch_heads(model, female, male, obs)
        by_norm = case_study.top_heads(norms, k)
        by_patch = case_study.top_heads(np.abs(patch), k)
        top = by_norm[0]
        _, per_position = ex.direct_logit_attribution(model, ids, obs)
        token = int(np.argmax(np.abs(per_position[top])))
        scale = ex.activation_scale(model, ids, top[0], token, F[top])
        steer = ex.steer(model, ids, {name: obs}, f"blocks.{top[0]}.hook_resid_pre", token, F[top], [-scale, scale])
        out["tasks"][name] = {
            "top_by_norm": [head_label(*h) for h in by_norm],
            "top_by_patching": [head_label(*h) for h in by_patch],
            "overlap": len(set(by_norm) & set(by_patch)),
            "top_head": head_label(*top), "top_head_patching": float(patch[top]),
            "steer_token": token, "steer_multiplier": scale,
            "steer_minus": steer[0][f"{name}_effect"], "steer_plus": steer[1][f"{name}_effect"],
        }
    subj, obj = (observable(model, case_study.OBSERVABLES[n], n) for n in ("subj", "obj"))
    Fs, Fo = head_features(model, subj), head_features(model, obj)
    cos = cosine(Fs, Fo)
    female, male = prompts["subj_friend"]
    heads = [tuple(int(i) for i in h) for h in np.argwhere(cos > 0.9)]
    table = ex.coupling_vs_fit(model, np.concatenate([female, male]), heads, subj, obj) if heads else []
    out["high_cosine_heads"] = [{**row, "gap": row["best_fit_slope"] - row["coupling"]} for row in table]
    out["coupling_matrix_max"] = float(np.max(coupling(Fs, Fo)))
    return out


def report(result: dict) -> str:
    lines = []
    for name, t in result["tasks"].items():
        lines.append(f"n_{name}: top {result['k']} by feature norm {t['top_by_norm']}, by |patching| "
                     f"{t['top_by_patching']}: overlap {t['overlap']}/{result['k']}"
                     + ("" if t["overlap"] >= 2 else "  <- the paper's claim (norms predict patching) does not hold here"))
        lines.append(f"  top head {t['top_head']}: patching effect {t['top_head_patching']:.4f}; steering at token "
                     f"{t['steer_token']} with -/+{t['steer_multiplier']:.3g} v: {t['steer_minus']:.4f} / "
                     f"{t['steer_plus']:.4f}" + ("" if t["steer_minus"] < 0 < t["steer_plus"] else
                                                 "  <- not in the predicted direction"))
    if result["high_cosine_heads"]:
        lines.append("heads with cos(subj, obj) > 0.9: coupling vs best-fit slope")
        for row in result["high_cosine_heads"]:
            lines.append(f"  {row['head']}: cosine {row['cosine']:.4f}, coupling {row['coupling']:.4f}, slope "
                         f"{row['best_fit_slope']:.4f} (gap {row['gap']:+.4f}), r^2 {row['r2']:.4f}")
    else:
        lines.append("no head has cos(subj, obj) > 0.9 on this model: the coupling/slope comparison is empty")
    return "\n".join(lines)
