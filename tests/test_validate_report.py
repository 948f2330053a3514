"""``python -m verification validate`` without torch: its report, items, notes, snippets and command line,
checked with planted errors in a fake peer on a small random model (issue 21: the survivors of the mechanical
run over verification/peers/validate.py).

Every test computes what it needs itself (no shared fixture runs ``validate``), so the mutation tool's
covering-test record sees each test reach the code it checks. The fake peer answers from the raw checkpoint
weights by its own einsums and from the oracle's trace, with planted errors whose size the test knows.
"""

import contextlib
import io
import json
import sys
import types

import numpy as np
import pytest

import refimpl
from refimpl.case_study.experiments import path_patch_heads
from verification.references.fixtures import exactly, gpt_neo_config, random_tensors, write_checkpoint
from verification.peers import identities as I
from verification.peers import expectations as E
from verification.peers import validate as V
from verification.peers.base import Peer, PeerError
from verification.policy.tolerances import tolerance

L, H, D, VOCAB = 3, 4, 16, 61  # 12 heads: enough to cross the "name at most 8 heads" rule


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    config = gpt_neo_config(vocab=VOCAB, d_model=D, n_layers=L, n_heads=H, window=4, d_mlp=24)
    return str(write_checkpoint(tmp_path_factory.mktemp("neo12"), config, random_tensors(config, seed=3),
                                dtype="float64"))


@pytest.fixture(scope="module")
def model(folder):
    return refimpl.load(folder, dtype="float64")


def prompts(model, seed=1, batch=2, T=9):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, model.config.d_vocab, size=(batch, T))
    corrupt = rng.integers(0, model.config.d_vocab, size=(batch, T))
    corrupt[:, -1] = clean[:, -1]
    return clean, corrupt


def vocab_vector(model, spec):
    n = np.zeros(model.config.d_vocab)
    for k, v in spec.items():
        n[k] += v
    return n


def features_of(W, n):
    """W_V[h] @ W_O[h] @ W_U @ n per head, by einsum on the raw weights: [L, H, d]."""
    u = W["unembed.W_U"] @ n
    return np.stack([np.einsum("hdk,hke,e->hd", W[f"blocks.{l}.attn.W_V"], W[f"blocks.{l}.attn.W_O"], u)
                     for l in range(L)])


class FakePeer(Peer):
    """Answers ``answers`` from the raw weights (features by einsum, activations from the oracle's trace,
    patching from path_patch_heads), plus ``plant``: {"activation"|"features"|"patching"|"weights": {key: delta}}
    (a delta is added to the whole entry) and {"shape": kind} (that answer gets an extra leading axis)."""

    def __init__(self, model, plant=None, name="fake", processing=(), answers=("activations", "features",
                                                                              "path_patching", "weights")):
        self.model, self.plant, self.name = model, plant or {}, name
        self.processing, self.answers = tuple(processing), tuple(answers)

    def snippet_constructor(self):
        return (f"FakePeer(model, {self.plant!r}, name={self.name!r}, processing={self.processing!r}, "
                f"answers={self.answers!r})")

    def _shaped(self, kind, value):
        return value[None] if self.plant.get("shape") == kind else value

    def activations(self, ids):
        if "activations" not in self.answers:
            return None
        logits, trace = self.model.run_with_trace(ids)
        out = {k: np.array(v) for k, v in trace.items()}
        out["logits"] = np.array(logits)
        for key, delta in self.plant.get("activation", {}).items():
            out[key] = out[key] + delta
        return {k: self._shaped("activations", v) for k, v in out.items()}

    def features(self, n):
        if "features" not in self.answers:
            return None
        F = features_of(self.model.weights, n)
        for (l, h), delta in self.plant.get("features", {}).items():
            F[l, h] += delta
        return self._shaped("features", F)

    def path_patching(self, clean, corrupt, n):
        if "path_patching" not in self.answers:
            return None
        P = path_patch_heads(self.model, clean, corrupt, E.observable_of(self.model, n)).copy()
        for (l, h), delta in self.plant.get("patching", {}).items():
            P[l, h] += delta
        return self._shaped("path_patching", P)

    def weights(self):
        if "weights" not in self.answers:
            return None
        W = {k: np.array(v) for k, v in self.model.weights.items()}
        for key, delta in self.plant.get("weights", {}).items():
            W[key] = W[key] + delta
        return W


def run_snippet(snippet):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet, {"FakePeer": FakePeer})
    return out.getvalue().strip()


def items(report):
    return {i.item: i for i in report.items}


def test_agreement_of_refuses_values_that_are_not_real_numbers():
    # a complex value is not compared by its real part, however small its imaginary part
    assert V.agreement_of(np.array([1.0, 2.0]) + 1e-3j, [1.0, 2.0]) == (
        float("inf"), "dtype complex128: a peer's values must be real numbers")
    assert V.agreement_of(np.array(["1.0", "2.0"]), [1.0, 2.0]) == (
        float("inf"), "dtype <U3: a peer's values must be real numbers")
    assert V.agreement_of(np.array([True, False]), [1.0, 0.0]) == (
        float("inf"), "dtype bool: a peer's values must be real numbers")
    assert V.agreement_of(np.array([1, 3]), [2.0, 4.0]) == (0.25, "")  # integers are real numbers
    assert V.agreement_of(np.float16([1.0, 3.0]), [2.0, 4.0]) == (0.25, "")


class ComplexPeer(FakePeer):
    """Features with an imaginary part on one head, the real part exact."""

    def features(self, n):
        F = features_of(self.model.weights, n).astype(np.complex128)
        F[1, 2] += 1j
        return F


def test_complex_features_fail_as_a_whole_and_name_no_head(model):
    report = V.validate(ComplexPeer(model, answers=("features",)), model, observable={3: 1})
    assert [(i.item, i.verdict, i.agreement, i.note) for i in report.items] == [
        ("features (all heads)", "FAIL", float("inf"), "dtype complex128: a peer's values must be real numbers")]


def test_one_wrong_head_given_as_nested_lists_is_named(model):
    class ListPeer(FakePeer):
        def features(self, n):
            F = features_of(self.model.weights, n)
            F[0, 1] += np.abs(F).max()
            return F.tolist()

    report = V.validate(ListPeer(model, answers=("features",)), model, observable={3: 1})
    assert [i.item for i in report.items] == ["features (all heads)", "features 0.1"]
    assert report.items[1].agreement == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------ a perfect peer: every item, its fields
def test_a_perfect_peer_passes_every_item_with_empty_notes_and_snippets(model):
    clean, corrupt = prompts(model)
    report = V.validate(FakePeer(model), model, clean, corrupt, {3: 1, 5: -1}, model_label="tiny")
    got = items(report)
    _, trace = model.run_with_trace(clean)
    activation_names = [k for k in trace] + ["logits"]
    weight_groups = sorted({"weights " + ("blocks.*." + k.split(".", 2)[2] if k.startswith("blocks.") else k)
                            for k in model.weights})
    assert [i.item for i in report.items] == (activation_names + ["features (all heads)", "path_patching (all heads)"]
                                              + weight_groups)
    kinds = {"features (all heads)": "features", "path_patching (all heads)": "path_patching"}
    checks = {"activation": "peer_activation", "features": "conformance", "path_patching": "peer_path_patching",
              "weights": "identity"}
    for item in report.items:
        kind = kinds.get(item.item, "weights" if item.item.startswith("weights ") else "activation")
        assert (item.kind, item.verdict, item.identity, item.note, item.snippet) == (kind, "pass", "", "", "")
        assert item.tolerance == tolerance(checks[kind], "float64")
        assert 0 <= item.agreement <= item.tolerance
    assert report.failures == [] and report.identities == {}
    assert (report.peer, report.model, report.dtype, report.processed, report.processing) == (
        "fake", "tiny", "float64", False, [])
    assert report.prompts == {"clean": clean.tolist(), "corrupt": corrupt.tolist(), "observable": {"3": 1, "5": -1},
                              "window": 4, "longer_than_window": True}
    assert 0 <= report.seconds < 600 and got["logits"].agreement == 0.0


def test_the_report_labels_its_model_by_the_label_given_or_the_model_source(model, folder):
    peer = FakePeer(model, answers=("features",))
    assert V.validate(peer, model, model_label="some/label").model == "some/label"
    assert V.validate(peer, model).model == folder == str(model.source)


@pytest.mark.parametrize("given", ["clean", "corrupt", "neither"])
def test_missing_clean_or_corrupted_prompts_take_the_default_pair(model, given):
    clean, corrupt = prompts(model)
    kwargs = {"clean": clean, "corrupt": corrupt}
    kwargs = {k: v for k, v in kwargs.items() if k == given}
    report = V.validate(FakePeer(model, answers=("features",)), model, **kwargs)
    default_clean, default_corrupt = V.default_prompts(model)
    assert report.prompts["clean"] == default_clean.tolist() and report.prompts["corrupt"] == default_corrupt.tolist()


def test_one_prompt_given_as_a_vector_is_one_row(model):
    clean, corrupt = prompts(model, batch=1)
    report = V.validate(FakePeer(model, answers=("features",)), model, clean[0], corrupt[0], {1: 1})
    assert report.prompts["clean"] == clean.tolist() and report.prompts["corrupt"] == corrupt.tolist()


@pytest.mark.parametrize("T, longer", [(4, False), (5, True)])
def test_longer_than_window_at_and_above_the_window(model, T, longer):
    clean, corrupt = prompts(model, T=T)
    report = V.validate(FakePeer(model, answers=("features",)), model, clean, corrupt, {1: 1})
    assert report.prompts["longer_than_window"] is longer and report.prompts["window"] == 4


def test_the_default_observable_is_used_without_one(model):
    report = V.validate(FakePeer(model, plant={"features": {(0, 0): 1.0}}, answers=("features",)), model)
    assert report.prompts["observable"] == {"1": 1, "2": -1}
    expected = features_of(model.weights, vocab_vector(model, {1: 1, 2: -1}))
    assert items(report)["features (all heads)"].agreement == pytest.approx(1.0 / np.abs(expected).max(), rel=1e-12)


# ------------------------------------------------------------------ planted errors: activations
def test_a_wrong_activation_fails_with_its_agreement_diagnosis_and_a_snippet_that_reproduces_it(model):
    clean, corrupt = prompts(model)
    name = "blocks.1.hook_resid_mid"
    peer = FakePeer(model, plant={"activation": {name: 0.01}}, answers=("activations",))
    report = V.validate(peer, model, clean, corrupt, {3: 1})
    _, trace = model.run_with_trace(clean)
    item = items(report)[name]
    assert item.agreement == pytest.approx(0.01 / np.abs(trace[name]).max(), rel=1e-9)
    assert (item.kind, item.verdict, item.identity, item.note) == ("activation", "FAIL", "", "no identity explains it")
    assert [i.item for i in report.failures] == [name]
    assert run_snippet(item.snippet) == str((item.agreement, ""))


def test_an_activation_of_another_shape_names_both_shapes_then_the_diagnosis(model):
    clean, corrupt = prompts(model)
    report = V.validate(FakePeer(model, plant={"shape": "activations"}, answers=("activations",)), model, clean,
                        corrupt, {3: 1})
    item = items(report)["blocks.0.hook_resid_pre"]
    assert item.verdict == "FAIL" and item.agreement == float("inf")
    assert item.note == f"shape (1, 2, 9, {D}), expected (2, 9, {D}); no identity explains it"


def test_an_activation_within_float32_rounding_is_diagnosed_as_the_rounding_finding(model):
    clean, corrupt = prompts(model)
    name = "blocks.2.hook_mlp_out"
    _, trace = model.run_with_trace(clean)
    delta = 1e-7 * np.abs(trace[name]).max()
    report = V.validate(FakePeer(model, plant={"activation": {name: delta}}, answers=("activations",)), model,
                        clean, corrupt, {3: 1})
    assert items(report)[name].note.startswith("FINDING: within float32 rounding of the identity (TransformerLens")


def test_attention_weights_under_the_scores_name_are_diagnosed_through_the_validation(model):
    clean, corrupt = prompts(model)

    class PatternAsScores(FakePeer):
        def activations(self, ids):
            out = dict(super().activations(ids))
            out["blocks.0.attn.hook_attn_scores"] = out["blocks.0.attn.hook_pattern"]
            return out

    report = V.validate(PatternAsScores(model, answers=("activations",)), model, clean, corrupt, {3: 1})
    note = items(report)["blocks.0.attn.hook_attn_scores"].note
    assert "FINDING: equals the oracle's hook_pattern to 0.0e+00" in note


@pytest.mark.parametrize("name, pre_gain_identity", [("transformer-lens", "pre_gain_normalized"), ("fake", "")])
def test_pre_gain_normalized_values_are_expected_from_the_transformer_lens_peer_only(model, name, pre_gain_identity):
    clean, corrupt = prompts(model)
    key = "blocks.1.ln1.hook_normalized"

    class PreGain(FakePeer):
        def activations(self, ids):
            out = dict(super().activations(ids))
            W = self.model.weights
            out[key] = I.pre_gain_normalized(out[key], W["blocks.1.ln1.w"], W["blocks.1.ln1.b"])
            return out

    item = items(V.validate(PreGain(model, name=name, answers=("activations",)), model, clean, corrupt, {3: 1}))[key]
    assert item.identity == pre_gain_identity
    assert item.verdict == ("pass" if pre_gain_identity else "FAIL")


# ------------------------------------------------------------------ planted errors: features, per head
def test_one_wrong_head_is_named_with_its_own_agreement(model):
    n = vocab_vector(model, {3: 1, 5: -1})
    expected = features_of(model.weights, n)
    scale = np.abs(expected).max()
    report = V.validate(FakePeer(model, plant={"features": {(2, 1): 0.5 * scale}}, answers=("features",)), model,
                        observable={3: 1, 5: -1})
    got = items(report)
    assert [i.item for i in report.items] == ["features (all heads)", "features 2.1"]
    head = got["features 2.1"]
    assert (head.kind, head.verdict, head.identity, head.note) == ("features", "FAIL", "", "")
    assert head.agreement == pytest.approx(0.5, rel=1e-12) and head.tolerance == tolerance("conformance", "float64")
    whole = got["features (all heads)"]
    assert (whole.kind, whole.verdict, whole.identity) == ("features", "FAIL", "")
    assert whole.note == f"1 of {L * H} heads disagree; no identity explains it"
    assert head.snippet == whole.snippet
    oracle = refimpl.head_features(model, E.observable_of(model, n))
    planted = features_of(model.weights, n)
    planted[2, 1] += 0.5 * scale
    assert run_snippet(whole.snippet) == str(np.abs(planted - oracle).max(axis=-1) / np.abs(oracle).max())


def per_head_errors(model, n, plant):
    """|planted - oracle| per head over max |oracle|, as the report measures it (the oracle being what the
    report compares to): [L, H]."""
    oracle = refimpl.head_features(model, E.observable_of(model, n))
    planted = features_of(model.weights, n)
    for (l, h), delta in plant.items():
        planted[l, h] += delta
    return np.abs(planted - oracle).max(axis=-1) / np.abs(oracle).max()


def test_a_head_exactly_at_the_tolerance_is_not_named(model, monkeypatch):
    n = vocab_vector(model, {3: 1})
    scale = np.abs(features_of(model.weights, n)).max()
    plant = {(0, 0): 0.25 * scale, (1, 3): 0.125 * scale}
    at = per_head_errors(model, n, plant)[1, 3]
    monkeypatch.setattr("verification.policy.tolerances.tolerance", lambda check, dtype: at)
    report = V.validate(FakePeer(model, plant={"features": plant}, answers=("features",)), model, observable={3: 1})
    assert [i.item for i in report.items] == ["features (all heads)", "features 0.0"]
    assert report.items[0].note.startswith("1 of 12 heads disagree")
    monkeypatch.setattr("verification.policy.tolerances.tolerance", lambda check, dtype: np.nextafter(at, 0))
    report = V.validate(FakePeer(model, plant={"features": plant}, answers=("features",)), model, observable={3: 1})
    assert [i.item for i in report.items] == ["features (all heads)", "features 0.0", "features 1.3"]


@pytest.mark.parametrize("below, verdict", [(False, "pass"), (True, "FAIL")])
def test_the_all_heads_verdict_at_and_below_its_agreement(model, monkeypatch, below, verdict):
    n = vocab_vector(model, {3: 1})
    plant = {(0, 0): 0.25 * np.abs(features_of(model.weights, n)).max()}
    at = per_head_errors(model, n, plant).max()
    tol = np.nextafter(at, 0) if below else at
    monkeypatch.setattr("verification.policy.tolerances.tolerance", lambda check, dtype: tol)
    report = V.validate(FakePeer(model, plant={"features": plant}, answers=("features",)), model, observable={3: 1})
    whole = report.items[0]
    assert whole.agreement == at and whole.verdict == verdict
    assert (whole.note, whole.snippet == "") == (("", True) if verdict == "pass" else
                                                 ("1 of 12 heads disagree; no identity explains it", False))


@pytest.mark.parametrize("bad, named", [(8, True), (9, False)])
def test_at_most_eight_disagreeing_heads_are_named(model, bad, named):
    n = vocab_vector(model, {3: 1})
    scale = np.abs(features_of(model.weights, n)).max()
    heads = [(l, h) for l in range(L) for h in range(H)][:bad]
    report = V.validate(FakePeer(model, plant={"features": {lh: scale for lh in heads}}, answers=("features",)),
                        model, observable={3: 1})
    assert [i.item for i in report.items[1:]] == ([f"features {l}.{h}" for l, h in heads] if named else [])
    assert report.items[0].note.startswith(f"{bad} of 12 heads disagree")


def test_features_of_another_shape_give_the_shape_as_the_note(model):
    report = V.validate(FakePeer(model, plant={"shape": "features"}, answers=("features",)), model, observable={3: 1})
    assert [(i.item, i.note, i.agreement) for i in report.items] == [
        ("features (all heads)", f"shape (1, {L}, {H}, {D}), expected ({L}, {H}, {D})", float("inf"))]


def test_features_computed_from_float32_weights_are_diagnosed_with_the_peer_weights(model):
    W32 = {k: np.asarray(v).astype(np.float32).astype(np.float64) for k, v in model.weights.items()}

    class Float32Weights(FakePeer):
        def features(self, n):
            return features_of(W32, n)

        def weights(self):
            return W32

    report = V.validate(Float32Weights(model, answers=("features",)), model, observable={3: 1})
    assert report.items[0].note.endswith(
        "heads disagree; FINDING: within float32 rounding of the identity and every weight the peer holds is exactly "
        "representable in float32 (TransformerLens 4.3 ProcessWeights.process_weights casts every non-float32 tensor "
        "to float32 for processing and back: float64 precision is lost)")


# ------------------------------------------------------------------ planted errors: path patching and weights
def test_path_patching_is_scaled_by_the_clean_observable_and_names_its_head(model):
    clean, corrupt = prompts(model)
    n = vocab_vector(model, {3: 1, 5: -1})
    effects = path_patch_heads(model, clean, corrupt, E.observable_of(model, n))
    logit_scale = np.abs(model.forward(clean)[:, -1] @ n).max()
    assert logit_scale > np.abs(effects).max()  # the scale that decides is the logit's, not the effects'
    report = V.validate(FakePeer(model, plant={"patching": {(1, 2): 0.01}}, answers=("path_patching",)), model,
                        clean, corrupt, {3: 1, 5: -1})
    whole, head = report.items
    assert (whole.item, head.item, head.kind) == ("path_patching (all heads)", "path_patching 1.2", "path_patching")
    assert whole.agreement == pytest.approx(0.01 / logit_scale, rel=1e-9) == head.agreement
    assert whole.note == f"1 of {L * H} heads disagree; no identity explains it"
    assert whole.tolerance == tolerance("peer_path_patching", "float64")
    printed = run_snippet(whole.snippet)
    assert printed == str(FakePeer(model, plant={"patching": {(1, 2): 0.01}}).path_patching(clean, corrupt, n) - effects)


def test_a_wrong_weight_fails_its_group_and_names_the_worst_key(model):
    W = model.weights
    key = "blocks.1.attn.W_V"
    delta = 0.5 * np.abs(np.stack([W[f"blocks.{l}.attn.W_V"] for l in range(L)])).max()
    report = V.validate(FakePeer(model, plant={"weights": {key: delta}}, answers=("weights",)), model, observable={3: 1})
    item = items(report)["weights blocks.*.attn.W_V"]
    assert (item.kind, item.verdict, item.identity) == ("weights", "FAIL", "")
    assert item.agreement == pytest.approx(delta / np.abs(W[key]).max(), rel=1e-12)
    assert item.note == f"worst {key}; no identity explains it"
    assert [i.item for i in report.failures] == ["weights blocks.*.attn.W_V"]
    assert run_snippet(item.snippet) == str(item.agreement)


def test_weights_rounded_to_float32_are_diagnosed_from_the_peer_weights(model):
    class Rounded(FakePeer):
        def weights(self):
            return {k: np.asarray(v).astype(np.float32).astype(np.float64) for k, v in self.model.weights.items()}

    report = V.validate(Rounded(model, answers=("weights",)), model, observable={3: 1})
    notes = {i.note.split("; ", 1)[1] for i in report.failures}
    assert notes == {"FINDING: within float32 rounding of the identity and every weight the peer holds is exactly "
                     "representable in float32 (TransformerLens 4.3 ProcessWeights.process_weights casts every "
                     "non-float32 tensor to float32 for processing and back: float64 precision is lost)"}


# ------------------------------------------------------------------ a processed peer: identities and their residuals
class Processed(FakePeer):
    """Answers the processed quantities, computed through the identities module."""

    def activations(self, ids):
        logits, trace = self.model.run_with_trace(ids)
        W = self.model.weights
        return {"logits": I.centred_logits(np.array(logits)),
                "blocks.0.hook_resid_pre": I.centred_residual(np.array(trace["blocks.0.hook_resid_pre"])),
                "blocks.1.attn.hook_v": I.value_without_bias(np.array(trace["blocks.1.attn.hook_v"]),
                                                             W["blocks.1.ln1.b"], W["blocks.1.attn.W_V"]),
                "blocks.1.attn.hook_pattern": np.array(trace["blocks.1.attn.hook_pattern"])}

    def features(self, n):
        u = E.observable_of(self.model, I.centred_observable(n)).residual
        return I.processed_head_features(self.model.weights, L, u) + self.plant.get("feature_offset", 0.0)

    def path_patching(self, clean, corrupt, n):
        raw = path_patch_heads(self.model, clean, corrupt, E.observable_of(self.model, I.centred_observable(n)))
        return I.processed_path_patching(raw)

    def weights(self):
        return I.processed_weights(self.model.weights, L)


def test_a_processed_peer_is_compared_through_the_identities_each_item_names(model):
    clean, corrupt = prompts(model)
    report = V.validate(Processed(model, processing=("fold_ln", "center_unembed")), model, clean, corrupt, {3: 1})
    got = items(report)
    assert report.processed is True and report.processing == ["fold_ln", "center_unembed"]
    assert not report.failures
    assert got["logits"].identity == "centred_logits"
    assert got["blocks.0.hook_resid_pre"].identity == "centred_residual"
    assert got["blocks.1.attn.hook_v"].identity == "value_without_bias"
    assert got["blocks.1.attn.hook_pattern"].identity == ""
    assert got["features (all heads)"].identity == "centred_observable, processed_feature_residual, processed_head_features"
    assert got["features (all heads)"].tolerance == tolerance("identity", "float64")
    assert got["path_patching (all heads)"].identity == "centred_observable, processed_path_patching"
    assert {i.identity for k, i in got.items() if k.startswith("weights ")} == {"processed_weights"}
    residuals = {}
    for item in report.items:
        for name in filter(None, item.identity.split(", ")):
            residuals[name] = max(residuals.get(name, 0.0), item.agreement)
    assert report.identities == residuals and set(residuals) == {
        "centred_logits", "centred_residual", "value_without_bias", "centred_observable", "processed_feature_residual",
        "processed_head_features", "processed_path_patching", "processed_weights"}
    assert all(value < 1e-10 for value in residuals.values())


def test_a_failing_processed_item_names_its_identities_and_reproduces(model):
    peer = Processed(model, plant={"feature_offset": 1.0}, processing=("fold_ln",), answers=("features",))
    report = V.validate(peer, model, observable={3: 1})
    whole = items(report)["features (all heads)"]
    assert whole.verdict == "FAIL" and report.identities["processed_head_features"] == whole.agreement
    assert whole.note == f"{L * H} of {L * H} heads disagree; no identity explains it"
    assert "processed=True" in whole.snippet and run_snippet(whole.snippet).startswith("[[")


# ------------------------------------------------------------------ expected values and helpers
def test_expected_path_patching_raw_and_processed(model):
    clean, corrupt = prompts(model)
    n = vocab_vector(model, {3: 1, 5: -1})
    raw, used = V.expected_path_patching(model, clean, corrupt, n, processed=False)
    assert used == [] and np.array_equal(raw, path_patch_heads(model, clean, corrupt, E.observable_of(model, n)))
    done, used = V.expected_path_patching(model, clean, corrupt, n, processed=True)
    assert used == ["centred_observable", "processed_path_patching"]
    centred = path_patch_heads(model, clean, corrupt, E.observable_of(model, I.centred_observable(n)))
    assert np.array_equal(done, I.processed_path_patching(centred))


def test_expected_processed_features_centre_the_observable_in_the_compute_dtype(folder):
    model32 = refimpl.load(folder, dtype="float32")
    n = np.random.default_rng(0).normal(size=VOCAB)
    got, used = V.expected_features(model32, n, processed=True)
    u = E.observable_of(model32, I.centred_observable(n.astype(np.float32))).residual
    assert np.array_equal(got, I.processed_head_features(model32.weights, L, u))
    assert used == ["centred_observable", "processed_feature_residual", "processed_head_features"]


def test_observable_of_computes_in_the_model_dtype(folder):
    model32 = refimpl.load(folder, dtype="float32")
    obs = E.observable_of(model32, np.arange(VOCAB) % 3 - 1)
    assert obs.vocab.dtype == np.float32 and obs.residual.dtype == np.float32
    assert np.array_equal(obs.residual, model32.weights["unembed.W_U"] @ (np.arange(VOCAB) % 3 - 1).astype(np.float32))


def test_agreement_of_rules():
    assert V.agreement_of(np.ones(2), np.ones(3)) == (float("inf"), "shape (2,), expected (3,)")
    assert V.agreement_of([np.nan, 1, 1], [1, 1, 1]) == (
        float("inf"), "1 entries finite on one side only (e.g. masked attention scores)")
    assert V.agreement_of([np.nan, np.inf], [np.nan, -np.inf]) == (0.0, "")
    assert V.agreement_of([1.0, 3.0, -np.inf], [2.0, 4.0, -np.inf]) == (0.25, "")
    assert V.agreement_of([1.0, 3.0], [2.0, 4.0], scale=0.5) == (2.0, "")
    assert V.agreement_of([1.0, 3.0], [0.0, 0.0]) == (3.0, "")  # a zero scale gives the absolute difference
    # float32 inputs are compared in float64: 1e8 - 1 is not a float32
    assert V.agreement_of(np.float32([1e8]), np.float32([1.0])) == (99999999.0, "")


def test_ids_literal_reads_back_as_the_ids():
    ids = np.array([[0, 17, 60], [5, 5, 1]])
    literal = V._ids_literal(ids)
    assert literal == "np.array([[0, 17, 60], [5, 5, 1]])"
    assert np.array_equal(eval(literal, {"np": np}), ids)


@pytest.mark.parametrize("vocab, expected", [(50256, {1: 1, 2: -1}), (50257, {" she": 1, " he": -1}),
                                             (50258, {" she": 1, " he": -1})])
def test_default_observable_at_below_and_above_the_gpt2_vocabulary(vocab, expected):
    from refimpl.oracle.tokenizer import gpt2_tokenizer

    stub = types.SimpleNamespace(config=types.SimpleNamespace(d_vocab=vocab), tokenizer=gpt2_tokenizer())
    assert V.default_observable(stub) == expected


@pytest.mark.parametrize("window, n_ctx, T", [(4, 32, 12), (6, 32, 12), (7, 32, 13), (8, 32, 14), (8, 13, 13),
                                              (None, 32, 12)])
def test_default_prompts_are_longer_than_the_window_within_the_context(window, n_ctx, T):
    cfg = types.SimpleNamespace(window_size=window, n_ctx=n_ctx, d_vocab=7)
    stub = types.SimpleNamespace(config=cfg)
    clean, corrupt = V.default_prompts(stub, seed=4)
    assert clean.shape == corrupt.shape == (3, T)
    rng = np.random.default_rng(4)  # numpy's documented generator, so a report's prompts can be rebuilt
    assert np.array_equal(clean, rng.integers(0, 7, size=(3, T)))
    draw = rng.integers(0, 7, size=(3, T))
    assert np.array_equal(corrupt[:, :-1], draw[:, :-1]) and np.array_equal(corrupt[:, -1], clean[:, -1])


def test_default_prompts_defaults_and_seeds():
    stub = types.SimpleNamespace(config=types.SimpleNamespace(window_size=4, n_ctx=32, d_vocab=2))
    assert np.array_equal(V.default_prompts(stub)[0], V.default_prompts(stub, 0, 3)[0])
    assert np.array_equal(V.default_prompts(stub)[1], V.default_prompts(stub, 0, 3)[1])
    assert V.default_prompts(stub, 9, batch=5)[0].shape == (5, 12)
    assert set(np.unique(V.default_prompts(stub, 2)[0])) == {0, 1}


# ------------------------------------------------------------------ the text report
def report_of(processed):
    report = V.Report(peer="p", model="m", dtype="float64", processed=processed,
                      processing=["fold_ln", "center_unembed"] if processed else [],
                      prompts={"clean": [[1, 2, 3]] * 2, "corrupt": [[4, 5, 3]] * 2, "observable": {"1": 1},
                               "window": 2, "longer_than_window": True},
                      notes=["first note", "second note"], seconds=1.25)
    report.items = [V.Item("logits", "activation", 1.5e-13, 1e-12, "pass", "centred_logits"),
                    V.Item("a longer item name", "features", 2.0, 1e-10, "FAIL", "", "why it fails", "print(1)")]
    report.identities = {"centred_logits": 1.5e-13, "another": 3e-14}
    return report


def test_format_report_text_processed():
    assert V.format_report(report_of(True)) == "\n".join([
        "peer p | model m | float64 | processed: fold_ln, center_unembed",
        "prompts: 2 x 3 tokens (local window 2), observable {'1': 1}",
        "note: first note",
        "note: second note",
        "item                agreement  tolerance  verdict  identity",
        "logits                1.5e-13    1.0e-12  pass     centred_logits",
        "a longer item name    2.0e+00    1.0e-10  FAIL     ",
        "identity residuals (max agreement of the items checked through each):",
        "  another: 3.0e-14",
        "  centred_logits: 1.5e-13",
        "1 of 2 items agree (1.2 s)",
        "",
        "FAIL a longer item name: why it fails",
        "--- reproduce:",
        "print(1)"])


def test_format_report_text_raw_and_empty():
    report = report_of(False)
    report.items, report.identities, report.notes = [V.Item("ab", "weights", 0.0, 1e-12, "pass")], {}, []
    assert V.format_report(report) == "\n".join([
        "peer p | model m | float64 | raw weights",
        "prompts: 2 x 3 tokens (local window 2), observable {'1': 1}",
        "item  agreement  tolerance  verdict  identity",
        "ab      0.0e+00    1.0e-12  pass     ",
        "1 of 1 items agree (1.2 s)"])


# ------------------------------------------------------------------ the command line
def test_observable_argument():
    assert V._observable_arg(None) is None
    assert V._observable_arg('{"12": 1, " she": -1, "x1": 2}') == {12: 1, " she": -1, "x1": 2}
    for text in ("[1, 2]", "{}", "3"):
        with pytest.raises(PeerError, match=exactly("--observable must be a JSON object {token: weight}")):
            V._observable_arg(text)
    with pytest.raises(PeerError, match="^--observable is not JSON: Expecting value: line 1 column 1"):
        V._observable_arg("nope")


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "fake_features_mod.py").write_text(
        "import numpy as np\n"
        "def good(weights, n):\n"
        "    u = weights['unembed.W_U'] @ n\n"
        f"    return np.stack([np.einsum('hdk,hke,e->hd', weights[f'blocks.{{l}}.attn.W_V'], "
        f"weights[f'blocks.{{l}}.attn.W_O'], u) for l in range({L})])\n"
        "def dtype_seen(weights, n):\n"
        "    assert n.dtype == weights['unembed.W_U'].dtype, (n.dtype, weights['unembed.W_U'].dtype)\n"
        "    return good(weights, n)\n")
    (tmp_path / "raises_at_import_mod.py").write_text("raise OSError()\n")
    (tmp_path / "raises_two_lines_mod.py").write_text("raise OSError('first line\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = V.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_main_writes_the_report_it_prints(folder, user_module, tmp_path):
    out = tmp_path / "report.json"
    code, stdout, _ = run_main(["--peer", "fake_features_mod:good", "--model", folder, "--seed", "3",
                                "--observable", '{"7": 2, "9": -1}', "--out", str(out)])
    assert code == 0
    text = out.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=1)
    model = refimpl.load(folder, dtype="float64")
    clean, corrupt = V.default_prompts(model, 3)
    assert data["prompts"]["clean"] == clean.tolist() and data["prompts"]["corrupt"] == corrupt.tolist()
    assert data["prompts"]["observable"] == {"7": 2, "9": -1}
    assert (data["peer"], data["model"], data["dtype"], data["failures"]) == (
        "function fake_features_mod:good", folder, "float64", [])
    assert stdout.strip() == V.format_report(V.Report(**{k: v for k, v in data.items() if k != "failures"} | {
        "items": [V.Item(**i) for i in data["items"]]}))
    code, _, _ = run_main(["--peer", "fake_features_mod:good", "--model", folder, "--out", str(out)])
    assert json.loads(out.read_text())["prompts"]["clean"] == V.default_prompts(model, 0)[0].tolist()


def test_main_in_float32_hands_the_peer_float32(folder, user_module, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_main(["--peer", "fake_features_mod:dtype_seen", "--model", folder, "--dtype", "float32",
                             "--out", str(out)])
    assert (code, err) == (0, "")
    assert json.loads(out.read_text())["dtype"] == "float32"


def test_main_reads_its_own_command_line_when_given_none(folder, user_module, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["validate", "--peer", "fake_features_mod:good", "--model", folder])
    code, stdout, _ = run_main(None)
    assert code == 0 and stdout.startswith("peer function fake_features_mod:good | model " + folder)


@pytest.mark.parametrize("argv, message", [
    (["--model", "x"], "the following arguments are required: --peer"),
    (["--peer", "x:y"], "the following arguments are required: --model"),
    (["--peer", "x:y", "--model", "x", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--peer", "x:y", "--model", "x", "--seed", "one"], "argument --seed: invalid int value: 'one'"),
])
def test_main_refuses_bad_options_in_one_line(argv, message):
    code, stdout, err = run_main(argv)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert err.startswith(V.PROG + ": error: ") and message in err


def test_main_help_names_every_option():
    code, stdout, _ = run_main(["--help"])
    assert code == 0 and stdout.startswith("usage: " + V.PROG)
    assert V.__doc__.split("\n")[0] in stdout and "    python -m verification validate --peer" in stdout
    flat = " " + " ".join(stdout.split()) + " "
    for text in ["transformer-lens, transformers, or module:function", "a local Hugging Face folder or a hub id",
                 "the peer's default weight processing",
                 "with --processed: keep TransformerLens' weight processing in float64 (4.3 rounds to float32)",
                 "{float32,float64}", "JSON {token or id: weight} (default ' she' - ' he')",
                 "seed of the random prompts", "write the JSON report here"]:
        assert f" {text} " in flat, text  # whole, not inside a longer word


@pytest.mark.parametrize("extra, message", [
    (["--exact-processing"], "--processed applies to the transformer-lens peer only, not 'fake_features_mod:good'"),
    (["--processed"], "--processed applies to the transformer-lens peer only, not 'fake_features_mod:good'"),
    (["--observable", "[1]"], "--observable must be a JSON object {token: weight}"),
])
def test_main_errors_are_one_line_with_exit_2(folder, user_module, extra, message):
    code, stdout, err = run_main(["--peer", "fake_features_mod:good", "--model", folder, *extra])
    assert (code, stdout, err) == (2, "", f"{V.PROG}: error: {message}\n")


@pytest.mark.parametrize("module, message", [("raises_at_import_mod", "OSError"),
                                             ("raises_two_lines_mod", "first line")])
def test_main_prints_the_first_line_of_an_error_or_its_type(folder, user_module, module, message):
    code, stdout, err = run_main(["--peer", f"{module}:f", "--model", folder])
    assert (code, stdout, err) == (2, "", f"{V.PROG}: error: {message}\n")


def test_main_exits_1_when_an_item_fails(folder, user_module, tmp_path):
    (tmp_path / "fake_wrong_mod.py").write_text(
        "from fake_features_mod import good\ndef wrong(weights, n):\n    return 2 * good(weights, n)\n")
    code, stdout, _ = run_main(["--peer", "fake_wrong_mod:wrong", "--model", folder])
    assert code == 1 and "\nFAIL features (all heads): " in stdout


# ------------------------------------------------------------------ building peers
class Recorder:
    calls = []

    def __init__(self, *args, **kwargs):
        Recorder.calls.append((args, kwargs))


@pytest.mark.parametrize("source, given", [("folder", True), ("org/name", True), ("organism", False)])
def test_make_peer_hands_transformer_lens_the_source_and_options(model, folder, monkeypatch, source, given):
    import verification.peers.transformer_lens_peer as tl

    monkeypatch.setattr(tl, "TransformerLensPeer", Recorder)
    Recorder.calls = []
    source = folder if source == "folder" else source
    V.make_peer("transformer-lens", model, source, "float32", True, True)
    V.make_peer("transformer-lens", model, source, "float64", False)
    expected = source if given else str(model.path)
    assert Recorder.calls == [((expected,), {"dtype": "float32", "processed": True, "exact_processing": True}),
                              ((expected,), {"dtype": "float64", "processed": False, "exact_processing": False})]
    with pytest.raises(PeerError, match=exactly("--exact-processing needs --processed")):
        V.make_peer("transformer-lens", model, source, "float64", False, True)


def test_make_peer_builds_the_transformers_peer_in_the_dtype(model, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import verification.peers.transformers_peer as tp

    monkeypatch.setattr(tp, "TransformersPeer", Recorder)
    Recorder.calls = []
    V.make_peer("transformers", model, "x", "float32", False)
    assert Recorder.calls == [((model.path,), {"dtype": "float32"})]
    with pytest.raises(PeerError, match=exactly("--processed applies to the transformer-lens peer only, not 'transformers'")):
        V.make_peer("transformers", model, "x", "float64", True)


def test_make_peer_without_transformers_says_what_to_install(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(PeerError, match=r"^the transformers peer needs torch and transformers: "
                                        r"pip install -e '\.\[torch\]' \(.+\)$"):
        V.make_peer("transformers", model, "x", "float64", False)


def test_make_peer_builds_a_user_function_peer_in_the_dtype(model, user_module):
    peer = V.make_peer("fake_features_mod:good", model, "x", "float32", False)
    assert (peer.dtype, peer.spec, peer.name) == ("float32", "fake_features_mod:good", "function fake_features_mod:good")


def test_a_processed_head_that_disagrees_is_named_with_the_identities_of_its_comparison(model):
    class OneHeadOff(Processed):
        def features(self, n):
            F = super().features(n)
            F[1, 1] += 1.0
            return F

    report = V.validate(OneHeadOff(model, processing=("fold_ln",)), model, observable={3: 1})
    whole, head = [i for i in report.items if i.kind == "features"]
    assert head.item == "features 1.1" and head.identity == whole.identity == (
        "centred_observable, processed_feature_residual, processed_head_features")


def test_path_patching_is_not_diagnosed_from_the_peer_weights(model):
    clean, corrupt = prompts(model)
    n = vocab_vector(model, {3: 1})
    logit_scale = np.abs(model.forward(clean)[:, -1] @ n).max()

    class Float32Weights(FakePeer):
        def weights(self):
            return {k: np.asarray(v).astype(np.float32).astype(np.float64) for k, v in self.model.weights.items()}

    peer = Float32Weights(model, plant={"patching": {(0, 1): 1e-7 * logit_scale}}, answers=("path_patching", "weights"))
    note = items(V.validate(peer, model, clean, corrupt, {3: 1}))["path_patching (all heads)"].note
    assert note == ("1 of 12 heads disagree; FINDING: within float32 rounding of the identity (TransformerLens 4.3 "
                    "ProcessWeights.process_weights casts every non-float32 tensor to float32 for processing and back: "
                    "float64 precision is lost)")


@pytest.mark.parametrize("below", [False, True])
def test_an_activation_verdict_at_and_below_its_agreement(model, monkeypatch, below):
    clean, corrupt = prompts(model)
    name = "blocks.0.hook_mlp_out"
    _, trace = model.run_with_trace(clean)
    expected = np.asarray(trace[name])
    at = float(np.max(np.abs((expected + 0.01) - expected))) / float(np.max(np.abs(expected)))
    monkeypatch.setattr("verification.policy.tolerances.tolerance", lambda check, dtype: np.nextafter(at, 0) if below else at)
    item = items(V.validate(FakePeer(model, plant={"activation": {name: 0.01}}, answers=("activations",)), model,
                            clean, corrupt, {3: 1}))[name]
    assert item.agreement == at and item.verdict == ("FAIL" if below else "pass")


@pytest.mark.parametrize("below", [False, True])
def test_a_weights_verdict_at_and_below_its_agreement(model, monkeypatch, below):
    key = "blocks.2.mlp.W_out"
    expected = np.asarray(model.weights[key])
    at = float(np.max(np.abs((expected + 0.01) - expected))) / float(np.max(np.abs(expected)))
    monkeypatch.setattr("verification.policy.tolerances.tolerance", lambda check, dtype: np.nextafter(at, 0) if below else at)
    item = items(V.validate(FakePeer(model, plant={"weights": {key: 0.01}}, answers=("weights",)), model,
                            observable={3: 1}))["weights blocks.*.mlp.W_out"]
    assert item.agreement == at and item.verdict == ("FAIL" if below else "pass")


def test_weights_near_float32_rounding_but_not_float32_values_are_not_called_float32(model):
    key = "blocks.1.mlp.W_in"
    delta = 1e-7 * np.abs(model.weights[key]).max()
    report = V.validate(FakePeer(model, plant={"weights": {key: delta}}, answers=("weights",)), model, observable={3: 1})
    assert items(report)["weights blocks.*.mlp.W_in"].note == (
        f"worst {key}; FINDING: within float32 rounding of the identity (TransformerLens 4.3 "
        "ProcessWeights.process_weights casts every non-float32 tensor to float32 for processing and back: float64 "
        "precision is lost)")


def test_an_identity_residual_is_the_largest_over_its_items_not_the_last(model):
    class FirstGroupOff(Processed):
        def weights(self):
            W = dict(super().weights())
            first = sorted(W)[0]
            W[first] = W[first] + 0.5
            return W

    report = V.validate(FirstGroupOff(model, processing=("fold_ln",), answers=("weights",)), model, observable={3: 1})
    weights = [i for i in report.items if i.kind == "weights"]
    assert weights[0].verdict == "FAIL" and weights[-1].agreement < weights[0].agreement
    assert report.identities["processed_weights"] == max(i.agreement for i in weights) == weights[0].agreement
