"""The shipped model organism: it loads by default, its held-out metrics hold, its world is sound."""

import json

import numpy as np
import pytest

import refimpl
from refimpl.organism import world as world
from refimpl.sources.checkpoint import BUNDLED
from refimpl.oracle.tokenizer import gpt2_tokenizer
from verification.policy.tolerances import tolerance


@pytest.fixture(scope="module")
def organism():
    return refimpl.load()


@pytest.fixture(scope="module")
def rows(organism):
    return world.metrics(organism)


def test_default_and_named_load_are_the_organism(organism):
    named = refimpl.load("organism")
    assert organism.path == named.path == BUNDLED["organism"]
    cfg = organism.config
    assert cfg.d_vocab == 50257 and cfg.n_layers >= 4
    assert set(cfg.attention_kinds) == {"global", "local"}
    shortest = min(len(organism.tokenizer.encode(t.prompt("John"))) for t in world.EVAL_TEMPLATES)
    assert cfg.window_size < shortest, "the local window must be shorter than every evaluation prompt"


def test_checkpoint_is_small_and_float16():
    folder = BUNDLED["organism"]
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= 8 * 1024 * 1024
    header = json.loads(weights.read_bytes()[8:8 + int.from_bytes(weights.read_bytes()[:8], "little")])
    assert {spec["dtype"] for k, spec in header.items() if k != "__metadata__"} == {"F16"}
    assert (folder / "README.md").exists() and (folder / "config.json").exists()


def test_pronoun_templates_generalise_to_held_out_pairs(rows):
    for row in rows:
        if row["contrast"] in ("she - he", "her - him"):
            assert row["prompts"] >= 30
            assert row["accuracy"] >= 0.95, row


def test_grammatical_occupation_follows_gender(rows):
    row = next(r for r in rows if r["contrast"] == "actress - actor")
    assert row["accuracy"] >= 0.95, row


@pytest.fixture(scope="module")
def training_corpus():
    training = json.loads((BUNDLED["organism"] / "training.json").read_text())
    return training, world.generate_corpus(seed=training["seed"], n_documents=training["documents"])


def test_corpus_fingerprint_is_the_trained_one(training_corpus):
    """training.json records the sha256 of the text the bundled model was trained on; a change to the
    world that changes the corpus fails here (retrain the organism and record the new fingerprint)."""
    import hashlib

    training, documents = training_corpus
    text = "\n".join(documents).encode("utf-8")
    assert hashlib.sha256(text).hexdigest() == training["corpus_sha256"]
    assert world.corpus_fingerprint(training["seed"], training["documents"]) == training["corpus_sha256"]
    assert world.corpus_fingerprint(training["seed"] + 1, 200) != world.corpus_fingerprint(training["seed"], 200)


def _log_odds_gap(counts, plus=" nurse", minus=" programmer"):
    """ln(n+/n-) for female minus male names, and its delta-method standard error sqrt(sum 1/n)."""
    cells = [counts[(g, w)] for g in ("female", "male") for w in (plus, minus)]
    gap = np.log(cells[0] / cells[1]) - np.log(cells[2] / cells[3])
    return float(gap), float(np.sqrt(sum(1.0 / c for c in cells)))


def test_planted_bias_is_learned_within_its_standard_errors(organism, training_corpus):
    """The learned nurse - programmer gap (female minus male, held-out prompts) against the planted
    2 ln 4 = 2.7726. Two sources of error, both measured: the held-out prompts' standard error, and the
    sampling error of the corpus that realises the planted rates (a finite number of occupation
    sentences). The tolerance is the policy's number of standard errors of their combination."""
    k = tolerance("monte_carlo", "standard_errors")
    template = world.TEMPLATES["occupation"]
    named = world.held_out_prompts(template)
    female = np.array([g == "female" for _, g in named])
    diff = world.logit_difference(organism, template, world.STEREOTYPED, [n for n, _ in named])
    measured = diff[female].mean() - diff[~female].mean()
    se_prompts = np.sqrt(diff[female].var(ddof=1) / female.sum() + diff[~female].var(ddof=1) / (~female).sum())
    corpus_gap, se_corpus = _log_odds_gap(world.stereotyped_counts(training_corpus[1]))
    # the corpus realises the planted rates within its own sampling error
    assert abs(corpus_gap - world.PLANTED_LOG_ODDS_GAP) <= k * se_corpus, (corpus_gap, se_corpus)
    # the model learned the planted gap within the combined error
    combined = np.sqrt(se_prompts**2 + se_corpus**2)
    assert abs(measured - world.PLANTED_LOG_ODDS_GAP) <= k * combined, (measured, se_prompts, se_corpus)
    assert abs(measured - corpus_gap) <= k * combined, (measured, corpus_gap)


def test_bias_check_would_see_an_unbiased_model():
    """Meta-test: counts without the planted bias give a gap far outside the tolerance."""
    gap, se = _log_odds_gap({("female", " nurse"): 1100, ("female", " programmer"): 1100,
                             ("male", " nurse"): 1150, ("male", " programmer"): 1150})
    assert abs(gap - world.PLANTED_LOG_ODDS_GAP) > tolerance("monte_carlo", "standard_errors") * se


def test_every_name_is_one_token():
    tok = gpt2_tokenizer()
    for name in world.MALE_NAMES + world.FEMALE_NAMES:
        assert tok.is_single_token(" " + name), name
    for pair in (world.SUBJECT, world.OBJECT, world.GRAMMATICAL, world.STEREOTYPED):
        assert all(tok.is_single_token(w) for w in pair)
    assert len(world.MALE_NAMES) >= 40 and len(world.FEMALE_NAMES) >= 40
    assert set(world.PAPER_MALE) <= set(world.MALE_NAMES) and set(world.PAPER_FEMALE) <= set(world.FEMALE_NAMES)
    assert not set(world.MALE_NAMES) & set(world.FEMALE_NAMES)


def test_corpus_is_deterministic():
    assert world.generate_corpus(seed=3, n_documents=500) == world.generate_corpus(seed=3, n_documents=500)
    assert world.generate_corpus(seed=3, n_documents=500) != world.generate_corpus(seed=4, n_documents=500)
    assert world.held_out_pairs() == world.held_out_pairs()


def test_no_held_out_pair_in_the_training_corpus(training_corpus):
    text = "\n".join(training_corpus[1])
    held = world.held_out_pairs()
    assert len(held) == 5 * (20 + 12)
    for name, key in held:
        assert world.TEMPLATES[key].text.format(name=name) not in text, (name, key)
    # and every name does occur in training, with a pronoun
    for name in world.MALE_NAMES + world.FEMALE_NAMES:
        assert f" {name} " in text or f" {name}," in text or f" {name}?" in text, name


def test_checker_would_see_a_leaked_pair():
    """Meta-test: a corpus generated WITHOUT the hold-out does contain held-out pairs."""
    text = "\n".join(world.generate_corpus(seed=0, n_documents=3000, held_out=frozenset()))
    leaked = [(n, k) for n, k in world.held_out_pairs() if world.TEMPLATES[k].text.format(name=n) in text]
    assert leaked


def test_occupation_rates_match_the_planted_rates():
    import random

    rng = random.Random(0)
    template = world.TEMPLATES["occupation"]
    draws = {g: [world.completion(template, g, rng) for _ in range(20000)] for g in ("female", "male")}
    for gender, expected in (("female", world.P_NURSE_GIVEN_FEMALE), ("male", world.P_NURSE_GIVEN_MALE)):
        stereo = [c for c in draws[gender] if c in world.STEREOTYPED]
        assert abs(len(stereo) / 20000 - world.P_STEREOTYPED) < 0.02
        assert abs(stereo.count(" nurse") / len(stereo) - expected) < 0.02
        grammatical = [c for c in draws[gender] if c in world.GRAMMATICAL]
        assert set(grammatical) == {world.GRAMMATICAL[0 if gender == "female" else 1]}
    assert np.isclose(world.PLANTED_LOG_ODDS_GAP, 2 * np.log(4))
