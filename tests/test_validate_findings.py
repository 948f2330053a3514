"""The diagnoses ``validate`` attaches to a failing item, decided on hand-made inputs at, below and above their
thresholds (the end-to-end peer runs reach them only at the values one checkpoint gives), and the JSON report."""

import numpy as np
import pytest

from verification.peers.validate import Item, Report, _diagnose_activation, _diagnose_rounding, _float32_representable
from verification.policy.tolerances import tolerance

F32 = tolerance("identity", "float32")
ROUNDING = ("FINDING: within float32 rounding of the identity{} (TransformerLens 4.3 "
            "ProcessWeights.process_weights casts every non-float32 tensor to float32 for processing and back: "
            "float64 precision is lost)")
REPRESENTABLE = " and every weight the peer holds is exactly representable in float32"


@pytest.mark.parametrize("agreement, expected", [(F32 / 2, True), (F32, True), (F32 * (1 + 1e-9), False)])
def test_rounding_finding_at_below_and_above_the_float32_tolerance(agreement, expected):
    text = _diagnose_rounding(agreement, "float64", [])
    assert text == (ROUNDING.format("") if expected else "no identity explains it")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_rounding_finding_needs_a_float64_comparison(dtype):
    assert _diagnose_rounding(0.0, dtype, [np.ones(3)]) == "no identity explains it"


def test_rounding_finding_says_whether_the_weights_are_float32_values():
    exact = np.array([0.5, 1.25, -3.0])  # exactly representable in float32
    inexact = np.array([0.1, 1.0])
    assert _diagnose_rounding(0.0, "float64", [exact, exact.astype(np.float32)]) == ROUNDING.format(REPRESENTABLE)
    assert _diagnose_rounding(0.0, "float64", [exact, inexact]) == ROUNDING.format("")
    assert _diagnose_rounding(0.0, "float64", [[0.5, 0.25]]) == ROUNDING.format(REPRESENTABLE)  # lists are read as arrays


def test_float32_representable_reads_only_float64_arrays():
    assert _float32_representable([np.array([0.5, 2.0**-20])])
    assert not _float32_representable([np.array([0.5]), np.array([1 + 2.0**-40])])
    assert _float32_representable([np.array([0.1], dtype=np.float32)])  # a float32 array holds float32 values
    assert _float32_representable([])


def _scores(pattern_scale: float, offset: float):
    pattern = np.array([[[pattern_scale, 0.0], [0.25, 0.75]]])
    got = pattern.copy()
    got[0, 0, 0] += offset
    trace = {"blocks.1.attn.hook_pattern": pattern}
    return got, trace


@pytest.mark.parametrize("offset, finding", [(0.0, True), (0.5, True), (0.5 + 1e-9, False)])
def test_attn_scores_finding_at_below_and_above_its_tolerance(offset, finding):
    got, trace = _scores(1.0, offset)  # relative agreement with the pattern = offset (max |pattern| = 1)
    text = _diagnose_activation("blocks.1.attn.hook_attn_scores", got, trace, 0.5, "float64", 1.0)
    if finding:
        assert text == (f"FINDING: equals the oracle's hook_pattern to {offset:.1e}: the bridge fires "
                        "hook_attn_scores with the post-softmax attention weights the Hugging Face module returns, "
                        "not the scores")
    else:
        assert text == "no identity explains it"


def test_attn_scores_finding_uses_at_least_the_float32_activation_tolerance():
    tol32 = tolerance("peer_activation", "float32")
    got, trace = _scores(1.0, tol32)
    assert _diagnose_activation("blocks.1.attn.hook_attn_scores", got, trace, 0.0, "float64", 1.0).startswith(
        "FINDING: equals the oracle's hook_pattern")
    got, trace = _scores(1.0, 2 * tol32)
    assert _diagnose_activation("blocks.1.attn.hook_attn_scores", got, trace, 0.0, "float64", 1.0) == \
        "no identity explains it"


def test_other_activations_get_the_rounding_diagnosis_without_weights():
    got = np.zeros(3)
    assert _diagnose_activation("blocks.1.attn.hook_z", got, {}, 0.0, "float64", F32) == ROUNDING.format("")
    assert _diagnose_activation("blocks.1.attn.hook_z", got, {}, 0.0, "float32", 0.0) == "no identity explains it"
    # a name that merely contains the scores hook is not the scores hook
    assert _diagnose_activation("blocks.1.attn.hook_attn_scores.x", got, {}, 0.0, "float64", 1.0) == \
        "no identity explains it"


def test_report_json_lists_its_failures():
    items = [Item("logits", "activation", 0.0, 1e-12, "pass"), Item("features 0.1", "features", 1.0, 1e-12, "FAIL")]
    report = Report("p", "m", "float64", False, [], {}, [], items)
    out = report.to_json()
    assert out["failures"] == ["features 0.1"] and out["peer"] == "p" and out["items"][1]["verdict"] == "FAIL"
    assert report.to_json()["items"][0] == {"item": "logits", "kind": "activation", "agreement": 0.0,
                                             "tolerance": 1e-12, "verdict": "pass", "identity": "", "note": "",
                                             "snippet": ""}


@pytest.mark.parametrize("fill, shift, second_fill, expected", [
    (np.finfo(np.float64).min, 0.0, None, True),   # GPT-2 through the bridge: the dtype's minimum
    (-1e9, 0.0, None, True),                       # another large constant
    (-1e4, 0.0, None, True),                       # at the threshold
    (-1e3, 0.0, None, False),                      # too small to be a mask
    (-1e9, 1e-6, None, False),                     # the unmasked scores differ
    (-1e9, 0.0, -1e8, False),                      # two different fills: not one masking constant
])
def test_masked_scores_written_as_a_finite_constant_are_named(fill, shift, second_fill, expected):
    scores = np.array([[[[0.5, -np.inf, -np.inf], [0.1, 0.2, -np.inf], [0.3, -0.4, 0.6]]]])
    pattern = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    peer = np.where(np.isinf(scores), fill, scores + shift)
    if second_fill is not None:
        peer[0, 0, 0, 2] = second_fill
    trace = {"blocks.0.attn.hook_attn_scores": scores, "blocks.0.attn.hook_pattern": pattern}
    note = _diagnose_activation("blocks.0.attn.hook_attn_scores", peer, trace, 1e-12, "float64", float("inf"))
    assert ("masked keys hold" in note) is expected, note


def test_masked_scores_finding_at_its_tolerance_and_whole():
    """The unmasked scores may differ by exactly the tolerance (not more); the finding is stated whole; a peer
    array of another shape is no finding (and no crash)."""
    scores = np.array([[[[0.5, -np.inf], [0.25, 1.0]]]])
    trace = {"blocks.0.attn.hook_attn_scores": scores, "blocks.0.attn.hook_pattern": np.exp(scores)}
    tol = 2.0 ** -20  # exactly representable: max |diff| / max |score| = tol exactly
    at = np.where(np.isinf(scores), -1e9, scores + np.array([[[[0.0, 0.0], [tol, 0.0]]]]))
    note = _diagnose_activation("blocks.0.attn.hook_attn_scores", at, trace, tol, "float64", float("inf"))
    assert note == ("FINDING: masked keys hold -1e+09 (a large finite constant, as the Hugging Face module masks) "
                    f"where the oracle has -inf; every unmasked score agrees to {tol:.1e}. The pattern is the same "
                    "unless a whole row is masked")
    above = np.where(np.isinf(scores), -1e9, scores + np.array([[[[0.0, 0.0], [2 * tol, 0.0]]]]))
    assert "masked keys hold" not in _diagnose_activation("blocks.0.attn.hook_attn_scores", above, trace, tol,
                                                          "float64", float("inf"))
    other_shape = np.zeros((1, 1, 2, 3))
    assert "masked keys hold" not in _diagnose_activation("blocks.0.attn.hook_attn_scores", other_shape, trace, tol,
                                                          "float64", float("inf"))
