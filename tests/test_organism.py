"""The shipped model organism: it loads by default, its held-out metrics hold, its world is sound."""

import json

import numpy as np
import pytest

import refimpl
from refimpl import organism as world
from refimpl.checkpoint import BUNDLED
from refimpl.tokenizer import gpt2_tokenizer


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


def test_planted_bias_is_learned(rows):
    row = next(r for r in rows if r["contrast"] == "nurse - programmer")
    assert row["female_minus_male"] > 0, row


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


def test_no_held_out_pair_in_the_training_corpus():
    training = json.loads((BUNDLED["organism"] / "training.json").read_text())
    text = "\n".join(world.generate_corpus(seed=training["seed"], n_documents=training["documents"]))
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
