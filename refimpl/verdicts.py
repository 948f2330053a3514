"""Claims at a glance: which of the paper's claims hold on a model, each with its criterion.

One function per claim takes the case study's results (``refimpl.case_study.compute``) and returns a row:
the claim and its section, what the paper reports on GPT-Neo-1.3B, what was measured here, the
criterion, the verdict ("holds", "does not hold" or "not testable here") and one sentence why.
``summary.md``, ``obsprop demo``'s console output and ``scripts/organism_check.py`` all print these rows.
"""

from __future__ import annotations

import numpy as np

from . import paper
from .records import Table, head_label

HOLDS, FAILS, UNTESTABLE = "holds", "does not hold", "not testable here"
SLOPE_COSINE = 0.9  # Table 1's regime: the paper's heads have cos(subj, obj) 0.935-0.988
SLOPE_GAP = 0.05  # relative |slope - coupling| allowed (the paper's largest is 2.8%, head 15.13)
LN_SHARE = 0.10  # Table 4 errors allowed as a share of the mean |n . logits| of the prompts
MLP_SHARE = 0.10  # Figure 4: error of the boundary linearisation as a share of y . MLP's range on the segment


def top_heads(values: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) with the largest values, largest first (ties in layer-major order)."""
    order = np.argsort(-np.asarray(values), axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(o, np.shape(values))) for o in order]


def _labels(heads) -> str:
    return ", ".join(head_label(*h) for h in heads)


def _row(claim, section, reported, measured, criterion, verdict, why) -> dict:
    return {"claim": claim, "section": section, "paper": reported, "measured": measured, "criterion": criterion,
            "verdict": verdict, "why": why}


def norms_predict_patching(r: dict) -> dict:
    k = r["k"]
    parts, ok = [], True
    for name in ("subj", "obj"):
        by_norm, by_patch = top_heads(r["norms"][name], k), top_heads(np.abs(r["patch"][name]), k)
        shared = len(set(by_norm) & set(by_patch))
        ok &= shared >= k - 1
        parts.append(f"n_{name}: {shared} of {k} shared (norm: {_labels(by_norm)}; |patching|: {_labels(by_patch)})")
    return _row("Data-free feature norms find the heads that path patching finds", "6.5, Fig. 1-2",
                "n_subj top 4 by norm 18.11, 17.14, 13.11, 15.13; by patching 17.14, 13.11, 15.13, 13.3 (3 of 4 shared)",
                "; ".join(parts), f"at least {k - 1} of the top {k} heads by norm are among the top {k} by |patching|, "
                "for both observables", HOLDS if ok else FAILS,
                "the norm ranking, computed without data, names the heads the data-dependent patching names"
                if ok else "the rankings differ; norms leave out what Section 5.1.2 names: attention patterns (QK) and "
                "LayerNorm scales")


def cosine_shared_mechanism(r: dict) -> dict:
    k = r["k"]
    subj, obj = top_heads(np.abs(r["patch"]["subj"]), k), top_heads(np.abs(r["patch"]["obj"]), k)
    shared = [h for h in subj if h in obj]
    cosines = {h: float(r["cos_so"][h]) for h in shared}
    ok = len(shared) >= k - 1 and all(c > 0.9 for c in cosines.values())
    measured = (f"top {k} by |patching|: n_subj {_labels(subj)}, n_obj {_labels(obj)}; shared: "
                + (", ".join(f"{head_label(*h)} (cos {c:.4f})" for h, c in cosines.items()) or "none"))
    return _row("Heads with a high cosine between two observables' features serve both tasks", "6.6, Fig. 3",
                "cos(subj, obj) 0.9882 (17.14), 0.9831 (18.11), 0.9816 (15.13), 0.9352 (13.11); the same heads "
                "top both tasks' patching", measured,
                f"the two tasks' top {k} heads by |patching| share at least {k - 1}, each with cos(subj, obj) > 0.9",
                HOLDS if ok else FAILS,
                "the heads that matter for both pronoun tasks read nearly the same direction" if ok else
                "the heads important for both tasks are not the high-cosine heads here")


def coupling_predicts_slope(r: dict) -> dict:
    rows = [row for row in r["table1"] if row["cosine"] >= SLOPE_COSINE]
    reported = ", ".join(f"{h} C {c:.4f} vs slope {s:.4f} (cos {cos:.4f})"
                         for h, (c, cos, s, _) in paper.TABLE1.items())
    if not rows:
        return _row("Coupling coefficients predict the best-fit slope (Theorem 2)", "5.2, 6.7, Table 1", reported,
                    "no Table 1 head has cos(subj, obj) >= 0.9", f"|slope - C| <= {SLOPE_GAP:.0%} of |C| for "
                    f"heads with cosine >= {SLOPE_COSINE}", UNTESTABLE, "the claim is about high-cosine heads")
    gaps = {row["head"]: abs(row["best_fit_slope"] - row["coupling"]) / abs(row["coupling"]) for row in rows}
    bad = [h for h, g in gaps.items() if g > SLOPE_GAP]
    measured = "; ".join(f"{row['head']}: C {row['coupling']:.4f}, slope {row['best_fit_slope']:.4f} "
                         f"(gap {gaps[row['head']]:.1%}, cos {row['cosine']:.4f}, r^2 {row['r2']:.4f}, "
                         f"{row['points']} tokens)" for row in rows)
    return _row("Coupling coefficients predict the best-fit slope (Theorem 2)", "5.2, 6.7, Table 1", reported,
                measured, f"|slope - C| <= {SLOPE_GAP:.0%} of |C| for every Table 1 head with cosine >= {SLOPE_COSINE}",
                FAILS if bad else HOLDS,
                f"{len(rows) - len(bad)} of {len(rows)} heads within {SLOPE_GAP:.0%}; off: {', '.join(bad)} "
                "(Theorem 2 gives the mean over a uniform sphere; the model's real inputs are not that)" if bad else
                "the slope of y2-scores against y1-scores over every token equals y1.y2/|y1|^2 closely")


def steering_moves_observable(r: dict) -> dict:
    rows = r["steering"].rows
    wrong = [f"{s['head']} ({s['observable']})" for s in rows if not s["minus_effect"] < 0 < s["plus_effect"]]
    measured = "; ".join(f"{s['head']} n_{s['observable']}: {s['minus_effect']:+.4f} / {s['plus_effect']:+.4f}"
                         for s in rows)
    return _row("Steering along a head's feature moves the observable as predicted", "6.9, Table 2",
                "-50 v / +50 v: 17.14 subj -100.78 / +87.52, 15.13 subj -13.24 / +26.13, 13.11 subj -4.11 / +12.66 "
                "(and likewise for n_obj)", f"-k v / +k v (k: the activation's mean norm / |v|): {measured}",
                "every -k v effect < 0 < every +k v effect", FAILS if wrong else HOLDS,
                f"wrong direction for {', '.join(wrong)}" if wrong else
                "adding the feature raises the observable and subtracting it lowers it, for every head and task")


def layer_norm_linearisation(r: dict) -> dict:
    mae = np.asarray(r["mae"])
    own_best = all(int(np.argmin(mae[i])) == i for i in range(len(mae)))
    share = float(mae.max()) / r["ln_logit_scale"]
    ok = own_best and share <= LN_SHARE
    measured = ("MAE rows (source group 1-3): " + "; ".join(" ".join(f"{v:.4f}" for v in row) for row in mae)
                + f"; largest = {share:.1%} of the mean |n . logits| ({r['ln_logit_scale']:.3f})")
    return _row("The ln_final linearisation at a decision-boundary point is accurate, best on its own prompts",
                "App. A.3, Table 4", "MAE 0.05-0.29 logits; each group's approximation is best on its own group",
                measured, f"each row's smallest error is its own group (diagonal), and every error <= {LN_SHARE:.0%} "
                "of the mean |n . logits|", HOLDS if ok else FAILS,
                "the linear approximation of ln_final is accurate and most accurate where it was made" if ok else
                ("a group's approximation is better on another group" if not own_best else
                 "the errors are a large share of the observable"))


def mlp_linearisation(r: dict) -> dict:
    seg = r["segment"]
    actual = np.array(seg.column("actual"))
    if seg[0]["boundary_target"] != 0:
        return _row("The MLP is well approximated by its gradient at the decision boundary", "4.3.4, Fig. 4",
                    "MLP16 along x- -> x+ for 17.14's feature: the boundary linearisation tracks it",
                    f"y . MLP{r['mlp_layer']} does not change sign between the two prompts (ends "
                    f"{actual[0]:.4f}, {actual[-1]:.4f})", "needs a sign change between x- and x+", UNTESTABLE,
                    "there is no decision boundary on this segment (the authors' fallback targets the mean)")
    error = max(abs(a - b) for a, b in zip(seg.column("actual"), seg.column("linear_at_boundary")))
    spread = float(actual.max() - actual.min())
    ok = error <= MLP_SHARE * spread
    return _row("The MLP is well approximated by its gradient at the decision boundary", "4.3.4, Fig. 4",
                "MLP16 along x- -> x+ for 17.14's feature: the boundary linearisation tracks it",
                f"MLP{r['mlp_layer']} for {r['mlp_head']}'s feature: root at t = {seg[0]['boundary_t']:.3f}, largest "
                f"error {error:.4f} on a range of {spread:.4f} ({error / spread:.1%})",
                f"largest error of the boundary linearisation <= {MLP_SHARE:.0%} of y . MLP's range on the segment",
                HOLDS if ok else FAILS, "the MLP is close to linear along the segment" if ok else
                "the MLP bends too much along the segment for one gradient to describe it")


def bias_mitigation(r: dict) -> dict:
    gap = r["bias"]["diff"]["female_minus_male"]
    rows = r["mitigation"].rows
    negative = [m for m in rows if m["coupling"] < 0]
    good = [m for m in negative if m["n_diff_effect"] < 0 < m["n_same_effect"]]
    measured = (f"bias n_diff female - male {gap:.4f}; " + "; ".join(
        f"{m['head']} (C {m['coupling']:+.3f}, m {m['relative_multiplier']:g}): n_diff {m['n_diff_effect']:+.4f}, "
        f"n_same {m['n_same_effect']:+.4f}" for m in rows))
    reported = "bias 4.5169 (n_diff), 5.6809 (n_same); heads 17.6, 18.2, 19.15, 23.10 lower n_diff and raise n_same"
    criterion = "the bias is present and some head with negative coupling lowers n_diff and raises n_same"
    if gap <= 0:
        return _row("Steering along negatively coupled features reduces the bias", "7, Table 3", reported, measured,
                    criterion, UNTESTABLE, "the model shows no nurse/programmer bias to reduce")
    if not negative:
        return _row("Steering along negatively coupled features reduces the bias", "7, Table 3", reported, measured,
                    criterion, UNTESTABLE, "no chosen head has a negative coupling diff -> same")
    return _row("Steering along negatively coupled features reduces the bias", "7, Table 3", reported, measured,
                criterion, HOLDS if good else FAILS,
                f"{len({m['head'] for m in good})} of {len({m['head'] for m in negative})} negatively coupled heads "
                "lower n_diff while raising n_same" if good else
                "no negatively coupled head gives both desired effects")


CLAIMS = (norms_predict_patching, cosine_shared_mechanism, coupling_predicts_slope, steering_moves_observable,
          layer_norm_linearisation, mlp_linearisation, bias_mitigation)


def claims(results: dict) -> Table:
    """One row per claim of the paper that the case study tests, in the paper's order."""
    return Table([claim(results) for claim in CLAIMS])


def markdown(table: Table) -> str:
    """The claims as a Markdown table (paper, measured, criterion, verdict, why)."""
    lines = ["| claim (section) | paper (GPT-Neo-1.3B) | measured here | criterion | verdict | why |",
             "|---|---|---|---|---|---|"]
    def cell(text: str) -> str:  # a "|" inside a cell (|x|, |C|) would end it
        return str(text).replace("|", "\\|")

    for row in table:
        lines.append(f"| {cell(row['claim'])} ({row['section']}) | {cell(row['paper'])} | {cell(row['measured'])} | "
                     f"{cell(row['criterion'])} | **{row['verdict']}** | {cell(row['why'])} |")
    return "\n".join(lines)


def console(table: Table) -> str:
    """A short plain-text verdict list for the terminal."""
    width = max(len(row["claim"]) for row in table)
    return "\n".join(f"  {row['claim']:<{width}}  {row['verdict'].upper():<18} {row['why']}" for row in table)
