import numpy as np
import pytest
from hypothesis import given

import refimpl
from refimpl import InputError
from verification.policy.strategies import observables_specs
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint

    config = gpt_neo_config(vocab=1000, d_model=16, n_layers=2, n_heads=2)
    folder = write_checkpoint(tmp_path_factory.mktemp("obs"), config, random_tensors(config, seed=4), dtype="float64")
    return refimpl.load(folder, dtype="float64")


def test_vocab_and_residual(model):
    obs = refimpl.observable(model, {"!": 1, "#": -2, 7: 0.5})
    n = np.zeros(1000)
    n[[0, 2, 7]] = [1, -2, 0.5]
    np.testing.assert_array_equal(obs.vocab, n)
    assert relative_error(obs.residual, model.weights["unembed.W_U"] @ n) <= SAME
    assert obs.name == "'!' - 2 '#' + 0.5 '('"
    x = np.random.default_rng(0).normal(size=16)
    assert relative_error(x @ model.weights["unembed.W_U"] @ obs.vocab, x @ obs.residual) <= SAME


def test_paper_observables_on_gpt2_vocabulary():
    model = refimpl.load()  # the organism has the full GPT-2 vocabulary
    subj = refimpl.observable(model, {" she": 1, " he": -1})
    assert [t[:2] for t in subj.terms] == [(673, " she"), (339, " he")]
    general = refimpl.observable(model, {" her": 1, " she": 1, " woman": 1, " him": -1, " he": -1, " man": -1})
    assert np.count_nonzero(general.vocab) == 6


@pytest.mark.parametrize("spec, message", [
    ({" programmers and": 1}, r"' programmers and' is not a single token: it encodes to 2 tokens"),
    ({"": 1}, "the empty string is not a token"),
    ({1000: 1}, r"token id 1000 in the observable is out of range \[0, 1000\)"),
    ({-1: 1}, "out of range"),
    ({"!": 1, 0: -1}, "is zero"),
    ({"!": 0}, "is zero"),
    ({}, "non-empty mapping"),
    ({"!": "one"}, "must be a finite number"),
    ({"!": float("nan")}, "must be a finite number"),
    ({2.5: 1}, "neither a token string nor a token id"),
])
def test_bad_observables(model, spec, message):
    with pytest.raises(InputError, match=message):
        refimpl.observable(model, spec)


def test_token_outside_a_small_vocabulary(model):
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        refimpl.observable(model, {" programmer": 1})


@given(spec=observables_specs(vocab=1000))
def test_observable_strategy_specs(model, spec):
    """The exported observables strategy: every spec builds, with n . (x @ W_U) = x . residual."""
    obs = refimpl.observable(model, spec)
    assert np.count_nonzero(obs.vocab) == len(spec)
    x = np.random.default_rng(0).normal(size=16)
    assert relative_error(x @ model.weights["unembed.W_U"] @ obs.vocab, x @ obs.residual) <= SAME
