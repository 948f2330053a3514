"""The verdicts on the paper's claims: each criterion decides both ways on hand-made results."""

import numpy as np

from refimpl.case_study import verdicts
from refimpl.records import Table


def results(**change) -> dict:
    """Hand-made case-study results on which every claim holds; ``change`` breaks one."""
    norms = np.array([[1.0, 0.1], [0.9, 0.8]])
    r = {
        "k": 2, "model": "hand-made",
        "norms": {"subj": norms, "obj": norms},
        "patch": {"subj": np.array([[2.0, 0.0], [1.5, 1.0]]), "obj": np.array([[2.0, 0.0], [1.5, 1.0]])},
        "cos_so": np.array([[0.99, 0.1], [0.95, 0.93]]),
        "table1": Table([{"head": "0.0", "coupling": 1.0, "cosine": 0.99, "best_fit_slope": 1.01, "r2": 0.99,
                          "points": 240}]),
        "steering": Table([{"head": "0.0", "observable": "subj", "minus_effect": -1.0, "plus_effect": 1.0}]),
        "mae": np.array([[0.1, 0.2, 0.2], [0.2, 0.1, 0.2], [0.2, 0.2, 0.1]]), "ln_logit_scale": 5.0,
        "segment": Table([{"t": t, "actual": 2 * t - 1, "linear_at_boundary": 2 * t - 1, "boundary_t": 0.5,
                           "boundary_target": 0.0} for t in np.linspace(0, 1, 5)]),
        "mlp_layer": 1, "mlp_head": "1.0",
        "bias": {"diff": {"female_minus_male": 2.0}},
        "mitigation": Table([{"head": "1.1", "coupling": -0.5, "relative_multiplier": -1.0, "n_diff_effect": -0.1,
                              "n_same_effect": 0.1}]),
    }
    r.update(change)
    return r


def verdict_of(function, **change) -> str:
    return function(results(**change))["verdict"]


def test_every_claim_holds_on_the_hand_made_results():
    table = verdicts.claims(results())
    assert [row["verdict"] for row in table] == ["holds"] * len(verdicts.CLAIMS)
    assert "**holds**" in verdicts.markdown(table) and "HOLDS" in verdicts.console(table)
    for line in verdicts.markdown(table).splitlines():  # every row has its 6 cells: "|" inside cells is escaped
        assert len(line.replace("\\|", "").split("|")) == 8, line


def test_each_criterion_can_fail():
    swapped = {"subj": np.array([[0.0, 2.0], [0.1, 0.2]]), "obj": np.array([[0.0, 2.0], [0.1, 0.2]])}
    assert verdict_of(verdicts.norms_predict_patching, patch=swapped) == "does not hold"
    assert verdict_of(verdicts.cosine_shared_mechanism, cos_so=np.full((2, 2), 0.5)) == "does not hold"
    off = Table([{"head": "0.0", "coupling": 1.0, "cosine": 0.99, "best_fit_slope": 1.2, "r2": 0.9, "points": 9}])
    assert verdict_of(verdicts.coupling_predicts_slope, table1=off) == "does not hold"
    low = Table([{"head": "0.0", "coupling": 1.0, "cosine": 0.5, "best_fit_slope": 3.0, "r2": 0.1, "points": 9}])
    assert verdict_of(verdicts.coupling_predicts_slope, table1=low) == "not testable here"
    wrong = Table([{"head": "0.0", "observable": "obj", "minus_effect": 0.2, "plus_effect": 1.0}])
    assert verdict_of(verdicts.steering_moves_observable, steering=wrong) == "does not hold"
    assert verdict_of(verdicts.layer_norm_linearisation, mae=np.array([[0.3, 0.2, 0.2]] * 3)) == "does not hold"
    assert verdict_of(verdicts.layer_norm_linearisation, ln_logit_scale=0.5) == "does not hold"
    bent = Table([{"t": t, "actual": 2 * t - 1, "linear_at_boundary": 0.0, "boundary_t": 0.5, "boundary_target": 0.0}
                  for t in np.linspace(0, 1, 5)])
    assert verdict_of(verdicts.mlp_linearisation, segment=bent) == "does not hold"
    no_root = Table([{"t": 0.0, "actual": 1.0, "linear_at_boundary": 1.0, "boundary_t": 0.3, "boundary_target": 1.5}])
    assert verdict_of(verdicts.mlp_linearisation, segment=no_root) == "not testable here"
    useless = Table([{"head": "1.1", "coupling": -0.5, "relative_multiplier": -1.0, "n_diff_effect": 0.1,
                      "n_same_effect": 0.1}])
    assert verdict_of(verdicts.bias_mitigation, mitigation=useless) == "does not hold"
    assert verdict_of(verdicts.bias_mitigation, bias={"diff": {"female_minus_male": -1.0}}) == "not testable here"
    positive = Table([{"head": "1.1", "coupling": 0.5, "relative_multiplier": -1.0, "n_diff_effect": -0.1,
                       "n_same_effect": 0.1}])
    assert verdict_of(verdicts.bias_mitigation, mitigation=positive) == "not testable here"


def test_top_heads_order():
    assert verdicts.top_heads(np.array([[1.0, 3.0], [2.0, 0.0]]), 3) == [(0, 1), (1, 0), (0, 0)]
