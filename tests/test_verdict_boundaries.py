"""Every verdict criterion decided at, just below and just above its threshold, and on NaN, empty and tied
inputs (not only at the default model's values, which sit far from the thresholds).

Inputs are hand-made so that the quantity the criterion compares lands exactly on its threshold in binary
floating point (e.g. a gap of 1/20 = 0.05 exactly). Each test names the mutant class it kills."""

import math

import numpy as np
import pytest

from refimpl.case_study import verdicts
from refimpl.records import Table
from tests.test_verdicts import results

HOLDS, FAILS, UNTESTABLE = verdicts.HOLDS, verdicts.FAILS, verdicts.UNTESTABLE
NAN = float("nan")


def verdict(function, **change) -> str:
    return function(results(**change))["verdict"]


# ------------------------------------------------------------------ norms predict patching (k - 1 of top k)
def ranking(order, n=(3, 3)):
    """A [3, 3] array whose values rank the flat indices in ``order`` first (largest first)."""
    values = np.zeros(n)
    for rank, flat in enumerate(order):
        values.flat[flat] = 10.0 - rank
    return values


@pytest.mark.parametrize("patch_order, expected", [
    ([0, 1, 2], HOLDS),   # 3 of 3 shared: above the threshold
    ([0, 1, 5], HOLDS),   # 2 of 3 = k - 1: at the threshold
    ([0, 4, 5], FAILS),   # 1 of 3: below
])
def test_norms_shared_count_at_below_and_above_k_minus_1(patch_order, expected):
    norms = ranking([0, 1, 2])
    patch = ranking(patch_order)
    r = dict(k=3, norms={"subj": norms, "obj": norms}, patch={"subj": patch, "obj": patch})
    assert verdict(verdicts.norms_predict_patching, **r) == expected
    # both observables must meet it: one observable below the threshold fails the claim
    r["patch"] = {"subj": ranking([0, 1, 2]), "obj": patch}
    assert verdict(verdicts.norms_predict_patching, **r) == expected


def test_norms_rank_patching_by_magnitude_not_sign():
    norms = ranking([0, 1, 2])
    patch = ranking([3, 4, 5])
    patch.flat[[0, 1]] = -50.0  # large negative effects are important heads
    r = dict(k=3, norms={"subj": norms, "obj": norms}, patch={"subj": patch, "obj": patch})
    assert verdict(verdicts.norms_predict_patching, **r) == HOLDS


def test_norms_ties_break_in_layer_major_order():
    norms = np.zeros((3, 3))
    norms.flat[[0, 1, 2, 3]] = 1.0  # four heads tied for three places: 0, 1, 2 are taken
    r = dict(k=3, norms={"subj": norms, "obj": norms})
    r["patch"] = {"subj": ranking([0, 1, 8]), "obj": ranking([0, 1, 8])}  # shares 0, 1 = k - 1
    assert verdict(verdicts.norms_predict_patching, **r) == HOLDS
    r["patch"] = {"subj": ranking([0, 3, 8]), "obj": ranking([0, 3, 8])}  # head 3 lost the tie: 1 shared
    assert verdict(verdicts.norms_predict_patching, **r) == FAILS


@pytest.mark.parametrize("k", [0, 1, 9, 10, True, 2.0, -1])
def test_norms_k_that_makes_the_criterion_vacuous_is_untestable(k):
    norms = ranking([0, 1, 2])
    row = verdicts.norms_predict_patching(results(k=k, norms={"subj": norms, "obj": norms},
                                                  patch={"subj": norms, "obj": norms}))
    assert row["verdict"] == UNTESTABLE and "2 <= k < 9" in row["why"]


def test_norms_nan_and_empty_are_untestable():
    norms = ranking([0, 1, 2])
    bad = norms.copy()
    bad.flat[7] = NAN
    for change in ({"patch": {"subj": bad, "obj": norms}}, {"patch": {"subj": norms, "obj": norms},
                                                          "norms": {"subj": norms, "obj": bad}}):
        r = dict(k=3, norms={"subj": norms, "obj": norms}, patch={"subj": norms, "obj": norms})
        r.update(change)
        row = verdicts.norms_predict_patching(results(**r))
        assert row["verdict"] == UNTESTABLE and "NaN" in row["why"]
    empty = np.zeros((0, 0))
    row = verdicts.norms_predict_patching(results(k=2, norms={"subj": empty, "obj": empty},
                                                  patch={"subj": empty, "obj": empty}))
    assert row["verdict"] == UNTESTABLE and "no norms" in row["why"]


# ------------------------------------------------------------------ cosine: k - 1 shared, each cos > 0.9
@pytest.mark.parametrize("cos, expected", [(0.9, FAILS), (math.nextafter(0.9, 1), HOLDS),
                                           (math.nextafter(0.9, 0), FAILS), (0.95, HOLDS)])
def test_cosine_threshold_is_strict(cos, expected):
    cosines = np.array([[0.99, 0.1], [cos, 0.93]])  # shared top-2 heads: (0, 0) and (1, 0)
    assert verdict(verdicts.cosine_shared_mechanism, cos_so=cosines) == expected


def test_cosine_every_shared_head_must_pass_not_any():
    cosines = np.array([[0.99, 0.1], [0.5, 0.93]])
    assert verdict(verdicts.cosine_shared_mechanism, cos_so=cosines) == FAILS


@pytest.mark.parametrize("obj_order, expected", [([0, 1, 2], HOLDS), ([0, 1, 5], HOLDS), ([0, 4, 5], FAILS)])
def test_cosine_shared_count_at_below_and_above_k_minus_1(obj_order, expected):
    r = dict(k=3, patch={"subj": ranking([0, 1, 2]), "obj": ranking(obj_order)}, cos_so=np.full((3, 3), 0.95))
    assert verdict(verdicts.cosine_shared_mechanism, **r) == expected


def test_cosine_a_low_cosine_outside_the_shared_heads_does_not_count():
    cosines = np.array([[0.99, -1.0], [0.95, 0.93]])  # head (0, 1) is not among the top 2 of either task
    assert verdict(verdicts.cosine_shared_mechanism, cos_so=cosines) == HOLDS


def test_cosine_nan_and_bad_k_are_untestable():
    cosines = np.array([[0.99, NAN], [0.95, 0.93]])
    assert verdict(verdicts.cosine_shared_mechanism, cos_so=cosines) == UNTESTABLE
    assert verdict(verdicts.cosine_shared_mechanism, k=1) == UNTESTABLE
    assert verdict(verdicts.cosine_shared_mechanism, k=4) == UNTESTABLE  # 4 heads: top 4 of 4 is every head


# ------------------------------------------------------------------ coupling predicts slope: gap <= 5% of |C|
def table1(*rows):
    return Table([{"head": f"0.{i}", "coupling": c, "cosine": cos, "best_fit_slope": s, "r2": 0.9, "points": 9}
                  for i, (c, s, cos) in enumerate(rows)])


@pytest.mark.parametrize("coupling, slope, expected", [
    (20.0, 19.0, HOLDS),   # gap 1/20 = 0.05 exactly (by |C|; by the slope it would be 1/19 > 0.05)
    (20.0, 21.0, HOLDS),   # gap 1/20 from above
    (20.0, math.nextafter(19.0, 0), FAILS),  # just past the threshold
    (20.0, 20.5, HOLDS),
    (-20.0, -19.0, HOLDS),  # the gap is relative to |C|
    (-20.0, -18.0, FAILS),
    (1.0, 0.5, FAILS),     # slope below C: the error is an absolute value
    (1.0, 2.0, FAILS),
])
def test_slope_gap_at_below_and_above_the_threshold(coupling, slope, expected):
    assert verdict(verdicts.coupling_predicts_slope, table1=table1((coupling, slope, 0.99))) == expected


def test_slope_every_head_not_the_mean():
    # gaps 1% and 8%: the mean (4.5%) is within 5%, the criterion asks every head
    assert verdict(verdicts.coupling_predicts_slope, table1=table1((1.0, 1.01, 0.99), (1.0, 1.08, 0.99))) == FAILS


@pytest.mark.parametrize("cos, expected", [(0.9, FAILS), (math.nextafter(0.9, 0), UNTESTABLE), (0.95, FAILS)])
def test_slope_cosine_filter_includes_its_threshold(cos, expected):
    # one far-off head: judged (and failing) when its cosine is >= 0.9, left out (nothing to judge) below
    assert verdict(verdicts.coupling_predicts_slope, table1=table1((1.0, 3.0, cos))) == expected


def test_slope_nan_zero_and_empty_are_untestable():
    for rows in [((1.0, NAN, 0.99),), ((NAN, 1.0, 0.99),), ((1.0, 1.0, NAN),), ((0.0, 0.0, 0.99),), ()]:
        row = verdicts.coupling_predicts_slope(results(table1=table1(*rows)))
        assert row["verdict"] == UNTESTABLE, rows


# ------------------------------------------------------------------ steering: minus < 0 < plus, every row
def steering(*effects):
    return Table([{"head": f"0.{i}", "observable": "subj", "minus_effect": m, "plus_effect": p}
                  for i, (m, p) in enumerate(effects)])


@pytest.mark.parametrize("minus, plus, expected", [
    (-1e-300, 1e-300, HOLDS), (0.0, 1.0, FAILS), (-1.0, 0.0, FAILS), (-0.0, 1.0, FAILS), (1.0, 2.0, FAILS),
    (-2.0, -1.0, FAILS), (1.0, -1.0, FAILS),
])
def test_steering_signs_at_zero(minus, plus, expected):
    assert verdict(verdicts.steering_moves_observable, steering=steering((minus, plus))) == expected


def test_steering_every_row_and_nan_and_empty():
    assert verdict(verdicts.steering_moves_observable, steering=steering((-1.0, 1.0), (0.5, 1.0))) == FAILS
    assert verdict(verdicts.steering_moves_observable, steering=steering((-1.0, 1.0), (NAN, 1.0))) == UNTESTABLE
    assert verdict(verdicts.steering_moves_observable, steering=steering()) == UNTESTABLE


# ------------------------------------------------------------------ ln_final: own group best, errors <= 10%
def mae(diagonal=0.1, off=0.2, largest=None):
    m = np.full((3, 3), off)
    np.fill_diagonal(m, diagonal)
    if largest is not None:
        m[0, 1] = largest
    return m


@pytest.mark.parametrize("largest, expected", [(0.5, HOLDS), (math.nextafter(0.5, 1), FAILS), (0.45, HOLDS)])
def test_ln_share_at_below_and_above_ten_percent(largest, expected):
    # scale 5.0: an error of 0.5 is 10% exactly
    assert verdict(verdicts.layer_norm_linearisation, mae=mae(largest=largest), ln_logit_scale=5.0) == expected


@pytest.mark.parametrize("diagonal, expected", [(0.19, HOLDS), (0.2, FAILS), (0.21, FAILS)])
def test_ln_own_group_strictly_best(diagonal, expected):
    assert verdict(verdicts.layer_norm_linearisation, mae=mae(diagonal=diagonal)) == expected


def test_ln_every_row_own_best():
    m = mae()
    m[2, 2] = 0.3  # only the last group's approximation is better elsewhere
    assert verdict(verdicts.layer_norm_linearisation, mae=m) == FAILS


def test_ln_nan_empty_and_bad_scale_are_untestable():
    m = mae()
    m[1, 2] = NAN
    assert verdict(verdicts.layer_norm_linearisation, mae=m) == UNTESTABLE
    assert verdict(verdicts.layer_norm_linearisation, mae=np.zeros((0, 0))) == UNTESTABLE
    assert verdict(verdicts.layer_norm_linearisation, mae=np.full((1, 1), 0.1)) == UNTESTABLE
    assert verdict(verdicts.layer_norm_linearisation, ln_logit_scale=0.0) == UNTESTABLE
    assert verdict(verdicts.layer_norm_linearisation, ln_logit_scale=NAN) == UNTESTABLE


# ------------------------------------------------------------------ MLP: largest error <= 10% of the range
def segment(errors, actual=(-1.0, -0.5, 0.0, 0.5, 1.0), target=0.0):
    return Table([{"t": i / 4, "actual": a, "linear_at_boundary": a + e, "boundary_t": 0.5, "boundary_target": target}
                  for i, (a, e) in enumerate(zip(actual, errors))])


@pytest.mark.parametrize("error, expected", [(0.2, HOLDS), (math.nextafter(0.2, 1), FAILS), (-0.2, HOLDS),
                                             (-0.25, FAILS), (0.1, HOLDS)])
def test_mlp_error_at_below_and_above_ten_percent(error, expected):
    # range 2.0: an error of 0.2 is 10% exactly; the error is an absolute value
    assert verdict(verdicts.mlp_linearisation, segment=segment([0, 0, error, 0, 0])) == expected


def test_mlp_largest_error_not_the_mean():
    assert verdict(verdicts.mlp_linearisation, segment=segment([0, 0, 0.3, 0, 0])) == FAILS  # mean 0.06 <= 0.2


def test_mlp_nan_empty_constant_and_no_root_are_untestable():
    assert verdict(verdicts.mlp_linearisation, segment=segment([0, 0, NAN, 0, 0])) == UNTESTABLE
    assert verdict(verdicts.mlp_linearisation, segment=Table([])) == UNTESTABLE
    assert verdict(verdicts.mlp_linearisation, segment=segment([0] * 5, actual=[0.0] * 5)) == UNTESTABLE
    assert verdict(verdicts.mlp_linearisation, segment=segment([0] * 5, target=0.5)) == UNTESTABLE


# ------------------------------------------------------------------ bias: gap > 0; a negative-C head helps
def mitigation(*rows):
    return Table([{"head": f"1.{i}", "coupling": c, "relative_multiplier": -1.0, "n_diff_effect": d,
                   "n_same_effect": s} for i, (c, d, s) in enumerate(rows)])


@pytest.mark.parametrize("coupling, diff, same, expected", [
    (-1e-300, -0.1, 0.1, HOLDS), (0.0, -0.1, 0.1, UNTESTABLE), (1e-300, -0.1, 0.1, UNTESTABLE),
    (-0.5, 0.0, 0.1, FAILS), (-0.5, -0.1, 0.0, FAILS), (-0.5, -1e-300, 1e-300, HOLDS), (-0.5, 0.1, -0.1, FAILS),
])
def test_bias_coupling_and_effect_signs_at_zero(coupling, diff, same, expected):
    assert verdict(verdicts.bias_mitigation, mitigation=mitigation((coupling, diff, same))) == expected


def test_bias_some_negative_head_suffices_and_positive_heads_do_not_count():
    rows = mitigation((-0.5, 0.1, 0.1), (-0.5, -0.1, 0.1))
    assert verdict(verdicts.bias_mitigation, mitigation=rows) == HOLDS
    rows = mitigation((-0.5, 0.1, 0.1), (0.5, -0.1, 0.1))  # the good head is positively coupled
    assert verdict(verdicts.bias_mitigation, mitigation=rows) == FAILS


@pytest.mark.parametrize("gap, expected", [(0.0, UNTESTABLE), (1e-300, HOLDS), (-1.0, UNTESTABLE)])
def test_bias_gap_at_zero(gap, expected):
    assert verdict(verdicts.bias_mitigation, bias={"diff": {"female_minus_male": gap}}) == expected


def test_bias_nan_and_empty_are_untestable():
    assert verdict(verdicts.bias_mitigation, bias={"diff": {"female_minus_male": NAN}}) == UNTESTABLE
    assert verdict(verdicts.bias_mitigation, mitigation=mitigation((-0.5, NAN, 0.1))) == UNTESTABLE
    assert verdict(verdicts.bias_mitigation, mitigation=mitigation()) == UNTESTABLE


def test_an_untestable_row_keeps_its_claim_and_says_why():
    row = verdicts.steering_moves_observable(results(steering=steering()))
    assert row["claim"] == verdicts.STEERING.claim and row["paper"] == verdicts.STEERING.paper
    assert row["why"] == "there are no steering effects to judge"
    assert (row["measured"], row["verdict"], row["criterion"]) == ("not judged", UNTESTABLE, verdicts.STEERING.criterion)
    row = verdicts.coupling_predicts_slope(results(table1=table1((1.0, 3.0, 0.5))))
    assert row["measured"] == "no Table 1 head has cos(subj, obj) >= 0.9"


def test_markdown_and_console_render_every_cell():
    table = Table([{"claim": "C |x|", "section": "6.5", "paper": "P", "measured": "M|1", "criterion": "K",
                    "verdict": HOLDS, "why": "W"},
                   {"claim": "Longer claim", "section": "7", "paper": "P2", "measured": "M2", "criterion": "K2",
                    "verdict": FAILS, "why": "W2"}])
    assert verdicts.markdown(table) == (
        "| claim (section) | paper (GPT-Neo-1.3B) | measured here | criterion | verdict | why |\n"
        "|---|---|---|---|---|---|\n"
        "| C \\|x\\| (6.5) | P | M\\|1 | K | **holds** | W |\n"
        "| Longer claim (7) | P2 | M2 | K2 | **does not hold** | W2 |")
    assert verdicts.console(table) == ("  C |x|         HOLDS              W\n"
                                       "  Longer claim  DOES NOT HOLD      W2")


HOLDING_TEXTS = [  # (measured, why, criterion) of each claim on the hand-made results where every claim holds
    ("n_subj: 2 of 2 shared (norm: 0.0, 1.0; |patching|: 0.0, 1.0); n_obj: 2 of 2 shared (norm: 0.0, 1.0; "
     "|patching|: 0.0, 1.0)", "the norm ranking, computed without data, names the heads the data-dependent patching names",
     "at least 1 of the top 2 heads by norm are among the top 2 by |patching|, for both observables"),
    ("top 2 by |patching|: n_subj 0.0, 1.0, n_obj 0.0, 1.0; shared: 0.0 (cos 0.9900), 1.0 (cos 0.9500)",
     "the heads that matter for both pronoun tasks read nearly the same direction",
     "the two tasks' top 2 heads by |patching| share at least 1, each with cos(subj, obj) > 0.9"),
    ("0.0: C 1.0000, slope 1.0100 (gap 1.0%, cos 0.9900, r^2 0.9900, 240 tokens)",
     "the slope of y2-scores against y1-scores over every token equals y1.y2/|y1|^2 closely",
     "|slope - C| <= 5% of |C| for every Table 1 head with cosine >= 0.9"),
    ("-k v / +k v (k: the activation's mean norm / |v|): 0.0 n_subj: -1.0000 / +1.0000",
     "adding the feature raises the observable and subtracting it lowers it, for every head and task",
     "every -k v effect < 0 < every +k v effect"),
    ("MAE rows (source group 1-3): 0.1000 0.2000 0.2000; 0.2000 0.1000 0.2000; 0.2000 0.2000 0.1000; largest = "
     "4.0% of the mean |n . logits| (5.000)", "the linear approximation of ln_final is accurate and most accurate "
     "where it was made", "each row's smallest error is its own group (diagonal, strictly smaller than the others), "
     "and every error <= 10% of the mean |n . logits|"),
    ("MLP1 for 1.0's feature: root at t = 0.500, largest error 0.0000 on a range of 2.0000 (0.0%)",
     "the MLP is close to linear along the segment",
     "largest error of the boundary linearisation <= 10% of y . MLP's range on the segment"),
    ("bias n_diff female - male 2.0000; 1.1 (C -0.500, m -1): n_diff -0.1000, n_same +0.1000",
     "1 of 1 negatively coupled heads lower n_diff while raising n_same",
     "the bias is present and some head with negative coupling lowers n_diff and raises n_same"),
]


def test_each_row_says_what_was_measured_and_why():
    for row, texts in zip(verdicts.claims(results()), HOLDING_TEXTS, strict=True):
        assert (row["measured"], row["why"], row["criterion"]) == texts


@pytest.mark.parametrize("function, change, measured, why", [
    (verdicts.norms_predict_patching,
     dict(k=3, norms={"subj": ranking([0, 1, 2]), "obj": ranking([0, 1, 2])},
          patch={"subj": ranking([0, 4, 5]), "obj": ranking([0, 4, 5])}),
     "n_subj: 1 of 3 shared (norm: 0.0, 0.1, 0.2; |patching|: 0.0, 1.1, 1.2); n_obj: 1 of 3 shared (norm: 0.0, 0.1, "
     "0.2; |patching|: 0.0, 1.1, 1.2)", "the rankings differ; norms leave out what Section 5.1.2 names: attention "
     "patterns (QK) and LayerNorm scales"),
    (verdicts.cosine_shared_mechanism, dict(cos_so=np.array([[0.99, 0.1], [0.5, 0.93]])),
     "top 2 by |patching|: n_subj 0.0, 1.0, n_obj 0.0, 1.0; shared: 0.0 (cos 0.9900), 1.0 (cos 0.5000)",
     "the heads important for both tasks are not the high-cosine heads here"),
    (verdicts.coupling_predicts_slope, dict(table1=table1((1.0, 1.01, 0.99), (1.0, 1.08, 0.99))),
     "0.0: C 1.0000, slope 1.0100 (gap 1.0%, cos 0.9900, r^2 0.9000, 9 tokens); 0.1: C 1.0000, slope 1.0800 "
     "(gap 8.0%, cos 0.9900, r^2 0.9000, 9 tokens)", "1 of 2 heads within 5%; off: 0.1 (Theorem 2 gives the mean "
     "over a uniform sphere; the model's real inputs are not that)"),
    (verdicts.steering_moves_observable, dict(steering=steering((-1.0, 1.0), (0.5, 1.0))),
     "-k v / +k v (k: the activation's mean norm / |v|): 0.0 n_subj: -1.0000 / +1.0000; 0.1 n_subj: +0.5000 / "
     "+1.0000", "wrong direction for 0.1 (subj)"),
    (verdicts.layer_norm_linearisation, dict(mae=mae(diagonal=0.2)),
     "MAE rows (source group 1-3): 0.2000 0.2000 0.2000; 0.2000 0.2000 0.2000; 0.2000 0.2000 0.2000; largest = "
     "4.0% of the mean |n . logits| (5.000)", "a group's approximation is not best on its own group"),
    (verdicts.layer_norm_linearisation, dict(mae=mae(largest=0.6)),
     "MAE rows (source group 1-3): 0.1000 0.6000 0.2000; 0.2000 0.1000 0.2000; 0.2000 0.2000 0.1000; largest = "
     "12.0% of the mean |n . logits| (5.000)", "the errors are a large share of the observable"),
    (verdicts.mlp_linearisation, dict(segment=segment([0, 0, 0.3, 0, 0])),
     "MLP1 for 1.0's feature: root at t = 0.500, largest error 0.3000 on a range of 2.0000 (15.0%)",
     "the MLP bends too much along the segment for one gradient to describe it"),
    (verdicts.mlp_linearisation, dict(segment=segment([0] * 5, target=0.5)),
     "y . MLP1 does not change sign between the two prompts (ends -1.0000, 1.0000)",
     "there is no decision boundary on this segment (the authors' fallback targets the mean)"),
    (verdicts.bias_mitigation, dict(mitigation=mitigation((-0.5, 0.1, 0.1))),
     "bias n_diff female - male 2.0000; 1.0 (C -0.500, m -1): n_diff +0.1000, n_same +0.1000",
     "no negatively coupled head gives both desired effects"),
    (verdicts.bias_mitigation, dict(bias={"diff": {"female_minus_male": 0.0}}),
     "bias n_diff female - male 0.0000; 1.1 (C -0.500, m -1): n_diff -0.1000, n_same +0.1000",
     "the model shows no nurse/programmer bias to reduce"),
    (verdicts.bias_mitigation, dict(mitigation=mitigation((0.5, -0.1, 0.1))),
     "bias n_diff female - male 2.0000; 1.0 (C +0.500, m -1): n_diff -0.1000, n_same +0.1000",
     "no chosen head has a negative coupling diff -> same"),
])
def test_rows_that_do_not_hold_say_what_was_measured_and_why(function, change, measured, why):
    row = function(results(**change))
    assert (row["measured"], row["why"]) == (measured, why)


@pytest.mark.parametrize("function, change, why", [
    (verdicts.norms_predict_patching, dict(k=1), "k = 1: the top-k criterion needs an integer 2 <= k < 4 (the number "
                                                 "of heads)"),
    (verdicts.cosine_shared_mechanism, dict(cos_so=np.full((2, 2), NAN)), "the cosines hold NaN or inf"),
    (verdicts.coupling_predicts_slope, dict(table1=table1((0.0, 0.0, 0.99))),
     "a coupling of 0 leaves the relative gap undefined"),
    (verdicts.layer_norm_linearisation, dict(mae=np.full((1, 1), 0.1)),
     "needs a square table of errors for at least 2 groups and a positive logit scale, got shape (1, 1) and scale 5.0"),
    (verdicts.mlp_linearisation, dict(segment=segment([0] * 5, actual=[0.0] * 5)),
     "y . MLP is constant on the segment: there is no range to compare the error with"),
    (verdicts.bias_mitigation, dict(mitigation=mitigation((NAN, 0.1, 0.1))), "the bias measurements hold NaN or inf"),
])
def test_untestable_rows_say_why(function, change, why):
    row = function(results(**change))
    assert (row["verdict"], row["why"], row["measured"]) == (UNTESTABLE, why, "not judged")


@pytest.mark.parametrize("function, change, why", [
    (verdicts.cosine_shared_mechanism, dict(patch={"subj": np.full((2, 2), NAN), "obj": np.ones((2, 2))}),
     "the patching effects of n_subj hold NaN or inf"),
    (verdicts.cosine_shared_mechanism, dict(patch={"subj": np.ones((2, 2)), "obj": np.full((2, 2), NAN)}),
     "the patching effects of n_obj hold NaN or inf"),
    (verdicts.norms_predict_patching, dict(norms={"subj": np.ones((2, 2)), "obj": np.full((2, 2), NAN)}),
     "the norms of n_obj hold NaN or inf"),
    (verdicts.layer_norm_linearisation, dict(mae=np.full((3, 3), NAN)), "the Table 4 errors hold NaN or inf"),
    (verdicts.layer_norm_linearisation, dict(ln_logit_scale=float("inf")), "the logit scales hold NaN or inf"),
    (verdicts.layer_norm_linearisation, dict(mae=np.full(3, 0.1)), "needs a square table of errors for at least 2 "
     "groups and a positive logit scale, got shape (3,) and scale 5.0"),
    (verdicts.layer_norm_linearisation, dict(mae=np.full((2, 3), 0.1)), "needs a square table of errors for at "
     "least 2 groups and a positive logit scale, got shape (2, 3) and scale 5.0"),
    (verdicts.mlp_linearisation, dict(segment=segment([0, NAN, 0, 0, 0])), "the segment values hold NaN or inf"),
    (verdicts.steering_moves_observable, dict(steering=steering((NAN, 1.0))), "the steering effects hold NaN or inf"),
    (verdicts.coupling_predicts_slope, dict(table1=table1((1.0, NAN, 0.99))), "the Table 1 rows hold NaN or inf"),
])
def test_each_unjudgeable_measurement_is_named(function, change, why):
    row = function(results(**change))
    assert (row["verdict"], row["why"]) == (UNTESTABLE, why)


def test_two_groups_are_enough_for_table_4():
    m = np.array([[0.1, 0.2], [0.2, 0.1]])
    assert verdict(verdicts.layer_norm_linearisation, mae=m) == HOLDS
    assert verdict(verdicts.layer_norm_linearisation, mae=m.tolist()) == HOLDS  # a nested list is a table too


def test_mlp_range_below_one_is_a_range():
    small = segment([0, 0, 0.05, 0, 0], actual=(-0.25, -0.125, 0.0, 0.125, 0.25))  # range 0.5, error 10%
    assert verdict(verdicts.mlp_linearisation, segment=small) == HOLDS


def test_no_root_row_states_its_own_criterion():
    row = verdicts.mlp_linearisation(results(segment=segment([0] * 5, target=0.5)))
    assert row["criterion"] == "needs a sign change between x- and x+"


def test_lists_of_several_rows_are_joined():
    row = verdicts.steering_moves_observable(results(steering=steering((1.0, 2.0), (0.5, 1.0))))
    assert row["why"] == "wrong direction for 0.0 (subj), 0.1 (subj)"
    row = verdicts.bias_mitigation(results(mitigation=mitigation((-0.5, -0.1, 0.1), (0.5, 0.2, 0.3))))
    assert row["measured"] == ("bias n_diff female - male 2.0000; 1.0 (C -0.500, m -1): n_diff -0.1000, n_same "
                               "+0.1000; 1.1 (C +0.500, m -1): n_diff +0.2000, n_same +0.3000")


def test_top_heads_ties_stay_in_layer_major_order_at_any_size():
    values = np.array([[2.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, 2.0], [1.0, 1.0, 2.0, 2.0]])
    assert verdicts.top_heads(values, 6) == [(0, 0), (2, 1), (2, 3), (3, 2), (3, 3), (0, 1)]


def test_norms_every_observable_must_meet_the_threshold():
    good, bad = ranking([0, 1, 2]), ranking([0, 4, 5])
    r = dict(k=3, norms={"subj": good, "obj": good}, patch={"subj": bad, "obj": good})  # the failing one first
    assert verdict(verdicts.norms_predict_patching, **r) == FAILS


def test_more_texts_of_the_rows():
    disjoint = {"subj": np.array([[2.0, 0.0], [1.5, 1.0]]), "obj": np.array([[0.0, 2.0], [0.0, 1.0]])}
    assert verdicts.cosine_shared_mechanism(results(patch=disjoint))["measured"].endswith("; shared: none")
    row = verdicts.coupling_predicts_slope(results(table1=table1((1.0, 3.0, 0.5))))
    assert row["why"] == "the claim is about high-cosine heads"
    row = verdicts.coupling_predicts_slope(results(table1=table1((1.0, 3.0, 0.99), (1.0, 2.0, 0.99))))
    assert row["why"].startswith("0 of 2 heads within 5%; off: 0.0, 0.1 (")
    row = verdicts.norms_predict_patching(results(patch={"subj": np.full((2, 2), NAN), "obj": np.ones((2, 2))}))
    assert row["why"] == "the patching effects of n_subj hold NaN or inf"


def test_a_missing_measurement_is_nan_not_a_crash():
    row = verdicts.steering_moves_observable(results(steering=steering((None, 1.0))))
    assert (row["verdict"], row["why"]) == (UNTESTABLE, "the steering effects hold NaN or inf")
