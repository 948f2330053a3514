"""Claims at a glance: which of the paper's claims hold on a model, each with its criterion.

One function per claim takes the case study's results (``refimpl.case_study.pipeline.compute``) and returns a row:
the claim and its section, what the paper reports on GPT-Neo-1.3B, what was measured here, the
criterion, the verdict ("holds", "does not hold" or "not testable here") and one sentence why.
``summary.md``, ``obsprop demo``'s console output and ``scripts/organism_check.py`` all print these rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refimpl.case_study import paper
from refimpl.records import Table, head_label
from refimpl.records import markdown_table

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


@dataclass(frozen=True)
class Claim:
    """The fixed texts of one claim's row: what it says, where, what the paper reports, how it is judged."""

    claim: str
    section: str
    paper: str
    criterion: str

    def row(self, measured: str, verdict: str, why: str, criterion: str | None = None) -> dict:
        return {"claim": self.claim, "section": self.section, "paper": self.paper, "measured": measured,
                "criterion": criterion or self.criterion, "verdict": verdict, "why": why}

    def untestable(self, why: str, measured: str = "") -> dict:
        return self.row(measured or "not judged", UNTESTABLE, why)


def unjudgeable(**measurements) -> str | None:
    """Why a criterion cannot be decided on these measurements (None: it can). A verdict never reads an empty
    set as "every one holds", nor a NaN comparison (always False) as a pass or a fail."""
    for name, values in measurements.items():
        arr = np.asarray(values, dtype=float)
        if arr.size == 0:
            return f"there are no {name} to judge"
        if not np.isfinite(arr).all():
            return f"the {name} hold NaN or inf"
    return None


def ranking_size_problem(k, n_heads: int) -> str | None:
    """Why ``k`` cannot rank ``n_heads`` heads meaningfully (None: it can): "k - 1 of the top k" is vacuous for
    k < 2, and for k >= n_heads both top-k sets are every head."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 2 <= k < n_heads:
        return f"k = {k!r}: the top-k criterion needs an integer 2 <= k < {n_heads} (the number of heads)"
    return None


NORMS = Claim("Data-free feature norms find the heads that path patching finds", "6.5, Fig. 1-2",
              "n_subj top 4 by norm 18.11, 17.14, 13.11, 15.13; by patching 17.14, 13.11, 15.13, 13.3 (3 of 4 shared)",
              "at least k - 1 of the top k heads by norm are among the top k by |patching|, for both observables")


def norms_predict_patching(r: dict) -> dict:
    k = r["k"]
    problem = unjudgeable(**{f"{what} of n_{name}": r[key][name] for name in ("subj", "obj")
                             for key, what in (("norms", "norms"), ("patch", "patching effects"))})
    problem = problem or ranking_size_problem(k, np.size(r["norms"]["subj"]))
    if problem:
        return NORMS.untestable(problem)
    parts, ok = [], True
    for name in ("subj", "obj"):
        by_norm, by_patch = top_heads(r["norms"][name], k), top_heads(np.abs(r["patch"][name]), k)
        shared = len(set(by_norm) & set(by_patch))
        ok &= shared >= k - 1
        parts.append(f"n_{name}: {shared} of {k} shared (norm: {_labels(by_norm)}; |patching|: {_labels(by_patch)})")
    return NORMS.row("; ".join(parts), HOLDS if ok else FAILS,
                     "the norm ranking, computed without data, names the heads the data-dependent patching names"
                     if ok else "the rankings differ; norms leave out what Section 5.1.2 names: attention patterns "
                     "(QK) and LayerNorm scales",
                     f"at least {k - 1} of the top {k} heads by norm are among the top {k} by |patching|, "
                     "for both observables")


COSINE = Claim("Heads with a high cosine between two observables' features serve both tasks", "6.6, Fig. 3",
               "cos(subj, obj) 0.9882 (17.14), 0.9831 (18.11), 0.9816 (15.13), 0.9352 (13.11); the same heads "
               "top both tasks' patching",
               "the two tasks' top k heads by |patching| share at least k - 1, each with cos(subj, obj) > 0.9")


def cosine_shared_mechanism(r: dict) -> dict:
    k = r["k"]
    problem = unjudgeable(**{"patching effects of n_subj": r["patch"]["subj"],
                             "patching effects of n_obj": r["patch"]["obj"], "cosines": r["cos_so"]})
    problem = problem or ranking_size_problem(k, np.size(r["cos_so"]))
    if problem:
        return COSINE.untestable(problem)
    subj, obj = top_heads(np.abs(r["patch"]["subj"]), k), top_heads(np.abs(r["patch"]["obj"]), k)
    shared = [h for h in subj if h in obj]
    cosines = {h: float(r["cos_so"][h]) for h in shared}
    ok = len(shared) >= k - 1 and all(c > 0.9 for c in cosines.values())
    measured = (f"top {k} by |patching|: n_subj {_labels(subj)}, n_obj {_labels(obj)}; shared: "
                + (", ".join(f"{head_label(*h)} (cos {c:.4f})" for h, c in cosines.items()) or "none"))
    return COSINE.row(measured, HOLDS if ok else FAILS,
                      "the heads that matter for both pronoun tasks read nearly the same direction" if ok else
                      "the heads important for both tasks are not the high-cosine heads here",
                      f"the two tasks' top {k} heads by |patching| share at least {k - 1}, each with "
                      "cos(subj, obj) > 0.9")


SLOPE = Claim("Coupling coefficients predict the best-fit slope (Theorem 2)", "5.2, 6.7, Table 1",
              ", ".join(f"{h} C {c:.4f} vs slope {s:.4f} (cos {cos:.4f})" for h, (c, cos, s, _) in paper.TABLE1.items()),
              f"|slope - C| <= {SLOPE_GAP:.0%} of |C| for every Table 1 head with cosine >= {SLOPE_COSINE}")


def coupling_predicts_slope(r: dict) -> dict:
    problem = unjudgeable(**{"Table 1 rows": [[row["cosine"], row["coupling"], row["best_fit_slope"]]
                                              for row in r["table1"]]})
    if problem:
        return SLOPE.untestable(problem)
    rows = [row for row in r["table1"] if row["cosine"] >= SLOPE_COSINE]
    if not rows:
        return SLOPE.untestable("the claim is about high-cosine heads",
                                f"no Table 1 head has cos(subj, obj) >= {SLOPE_COSINE}")
    if any(row["coupling"] == 0 for row in rows):
        return SLOPE.untestable("a coupling of 0 leaves the relative gap undefined")
    gaps = {row["head"]: abs(row["best_fit_slope"] - row["coupling"]) / abs(row["coupling"]) for row in rows}
    bad = [h for h, g in gaps.items() if g > SLOPE_GAP]
    measured = "; ".join(f"{row['head']}: C {row['coupling']:.4f}, slope {row['best_fit_slope']:.4f} "
                         f"(gap {gaps[row['head']]:.1%}, cos {row['cosine']:.4f}, r^2 {row['r2']:.4f}, "
                         f"{row['points']} tokens)" for row in rows)
    return SLOPE.row(measured, FAILS if bad else HOLDS,
                     f"{len(rows) - len(bad)} of {len(rows)} heads within {SLOPE_GAP:.0%}; off: {', '.join(bad)} "
                     "(Theorem 2 gives the mean over a uniform sphere; the model's real inputs are not that)" if bad
                     else "the slope of y2-scores against y1-scores over every token equals y1.y2/|y1|^2 closely")


STEERING = Claim("Steering along a head's feature moves the observable as predicted", "6.9, Table 2",
                 "-50 v / +50 v: 17.14 subj -100.78 / +87.52, 15.13 subj -13.24 / +26.13, 13.11 subj -4.11 / +12.66 "
                 "(and likewise for n_obj)", "every -k v effect < 0 < every +k v effect")


def steering_moves_observable(r: dict) -> dict:
    rows = r["steering"].rows
    problem = unjudgeable(**{"steering effects": [[s["minus_effect"], s["plus_effect"]] for s in rows]})
    if problem:
        return STEERING.untestable(problem)
    wrong = [f"{s['head']} ({s['observable']})" for s in rows if not s["minus_effect"] < 0 < s["plus_effect"]]
    measured = "; ".join(f"{s['head']} n_{s['observable']}: {s['minus_effect']:+.4f} / {s['plus_effect']:+.4f}"
                         for s in rows)
    return STEERING.row(f"-k v / +k v (k: the activation's mean norm / |v|): {measured}", FAILS if wrong else HOLDS,
                        f"wrong direction for {', '.join(wrong)}" if wrong else
                        "adding the feature raises the observable and subtracting it lowers it, for every head and task")


LAYER_NORM = Claim("The ln_final linearisation at a decision-boundary point is accurate, best on its own prompts",
                   "App. A.3, Table 4", "MAE 0.05-0.29 logits; each group's approximation is best on its own group",
                   "each row's smallest error is its own group (diagonal, strictly smaller than the others), and "
                   f"every error <= {LN_SHARE:.0%} of the mean |n . logits|")


def layer_norm_linearisation(r: dict) -> dict:
    mae, scale = np.asarray(r["mae"], dtype=float), r["ln_logit_scale"]
    problem = unjudgeable(**{"Table 4 errors": mae, "logit scales": scale})
    if not problem and (mae.ndim != 2 or mae.shape[0] != mae.shape[1] or len(mae) < 2 or scale <= 0):
        problem = (f"needs a square table of errors for at least 2 groups and a positive logit scale, got shape "
                   f"{mae.shape} and scale {scale}")
    if problem:
        return LAYER_NORM.untestable(problem)
    # a tie with another group's approximation is not "best on its own prompts"
    own_best = all(mae[i, i] < np.delete(mae[i], i).min() for i in range(len(mae)))
    share = float(mae.max()) / scale
    ok = own_best and share <= LN_SHARE
    measured = ("MAE rows (source group 1-3): " + "; ".join(" ".join(f"{v:.4f}" for v in row) for row in mae)
                + f"; largest = {share:.1%} of the mean |n . logits| ({scale:.3f})")
    return LAYER_NORM.row(measured, HOLDS if ok else FAILS,
                          "the linear approximation of ln_final is accurate and most accurate where it was made" if ok
                          else ("a group's approximation is not best on its own group" if not own_best else
                                "the errors are a large share of the observable"))


MLP = Claim("The MLP is well approximated by its gradient at the decision boundary", "4.3.4, Fig. 4",
            "MLP16 along x- -> x+ for 17.14's feature: the boundary linearisation tracks it",
            f"largest error of the boundary linearisation <= {MLP_SHARE:.0%} of y . MLP's range on the segment")


def mlp_linearisation(r: dict) -> dict:
    seg = r["segment"]
    problem = unjudgeable(**{"segment values": [[p["actual"], p["linear_at_boundary"]] for p in seg]})
    if problem:
        return MLP.untestable(problem)
    actual = np.array(seg.column("actual"))
    if seg[0]["boundary_target"] != 0:
        return MLP.row(f"y . MLP{r['mlp_layer']} does not change sign between the two prompts (ends "
                       f"{actual[0]:.4f}, {actual[-1]:.4f})", UNTESTABLE,
                       "there is no decision boundary on this segment (the authors' fallback targets the mean)",
                       "needs a sign change between x- and x+")
    error = max(abs(a - b) for a, b in zip(seg.column("actual"), seg.column("linear_at_boundary")))
    spread = float(actual.max() - actual.min())
    if spread <= 0:
        return MLP.untestable("y . MLP is constant on the segment: there is no range to compare the error with")
    ok = error <= MLP_SHARE * spread
    return MLP.row(f"MLP{r['mlp_layer']} for {r['mlp_head']}'s feature: root at t = {seg[0]['boundary_t']:.3f}, "
                   f"largest error {error:.4f} on a range of {spread:.4f} ({error / spread:.1%})",
                   HOLDS if ok else FAILS, "the MLP is close to linear along the segment" if ok else
                   "the MLP bends too much along the segment for one gradient to describe it")


BIAS = Claim("Steering along negatively coupled features reduces the bias", "7, Table 3",
             "bias 4.5169 (n_diff), 5.6809 (n_same); heads 17.6, 18.2, 19.15, 23.10 lower n_diff and raise n_same",
             "the bias is present and some head with negative coupling lowers n_diff and raises n_same")


def bias_mitigation(r: dict) -> dict:
    gap = r["bias"]["diff"]["female_minus_male"]
    rows = r["mitigation"].rows
    problem = unjudgeable(**{"bias measurements": [gap] + [v for m in rows for v in
                                                           (m["coupling"], m["n_diff_effect"], m["n_same_effect"])]})
    if problem:
        return BIAS.untestable(problem)
    negative = [m for m in rows if m["coupling"] < 0]
    good = [m for m in negative if m["n_diff_effect"] < 0 < m["n_same_effect"]]
    measured = (f"bias n_diff female - male {gap:.4f}; " + "; ".join(
        f"{m['head']} (C {m['coupling']:+.3f}, m {m['relative_multiplier']:g}): n_diff {m['n_diff_effect']:+.4f}, "
        f"n_same {m['n_same_effect']:+.4f}" for m in rows))
    if gap <= 0:
        return BIAS.row(measured, UNTESTABLE, "the model shows no nurse/programmer bias to reduce")
    if not negative:
        return BIAS.row(measured, UNTESTABLE, "no chosen head has a negative coupling diff -> same")
    return BIAS.row(measured, HOLDS if good else FAILS,
                    f"{len({m['head'] for m in good})} of {len({m['head'] for m in negative})} negatively coupled "
                    "heads lower n_diff while raising n_same" if good else
                    "no negatively coupled head gives both desired effects")


CLAIMS = (norms_predict_patching, cosine_shared_mechanism, coupling_predicts_slope, steering_moves_observable,
          layer_norm_linearisation, mlp_linearisation, bias_mitigation)


def claims(results: dict) -> Table:
    """One row per claim of the paper that the case study tests, in the paper's order."""
    return Table([claim(results) for claim in CLAIMS])


def markdown(table: Table) -> str:
    """The claims as a Markdown table (paper, measured, criterion, verdict, why)."""
    header = ["claim (section)", "paper (GPT-Neo-1.3B)", "measured here", "criterion", "verdict", "why"]
    return markdown_table(header, [[f"{row['claim']} ({row['section']})", row["paper"], row["measured"],
                                    row["criterion"], f"**{row['verdict']}**", row["why"]] for row in table],
                          escape=True)


def console(table: Table) -> str:
    """A short plain-text verdict list for the terminal."""
    width = max(len(row["claim"]) for row in table)
    return "\n".join(f"  {row['claim']:<{width}}  {row['verdict'].upper():<18} {row['why']}" for row in table)
