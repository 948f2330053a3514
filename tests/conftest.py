"""Shared fixtures: small random checkpoints the tests build themselves (nothing is downloaded)."""

from __future__ import annotations

import pytest

from verification.references.fixtures import FAMILIES, family_config, gpt_neo_config, random_tensors, write_checkpoint
from verification.policy.strategies import load_profile

load_profile()  # hypothesis: "default" (derandomized) unless REFIMPL_HYPOTHESIS_PROFILE=long


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_dir(request, tmp_path_factory):
    """A 2-layer checkpoint stored in float32, of each family (GPT-Neo: global, local, window 4 < the test
    sequences; GPT-2: both global)."""
    config = family_config(request.param, vocab=61, d_model=16, n_layers=2, n_heads=2, window=4, n_ctx=32)
    return write_checkpoint(tmp_path_factory.mktemp("tiny"), config, random_tensors(config, seed=1))


@pytest.fixture(scope="session")
def tiny64(tiny_dir):
    import refimpl

    return refimpl.load(tiny_dir, dtype="float64")


@pytest.fixture(scope="session")
def tiny_neo_dir(tmp_path_factory):
    """The GPT-Neo one alone, for the tests of GPT-Neo's own conventions (local windows, unscaled scores)."""
    config = gpt_neo_config(vocab=61, d_model=16, n_layers=2, n_heads=2, window=4, n_ctx=32)
    return write_checkpoint(tmp_path_factory.mktemp("tiny-neo"), config, random_tensors(config, seed=1))


def pytest_collection_modifyitems(config, items):
    """Under mutmut (MUTANT_UNDER_TEST set), run a mutant's covering tests fastest first: with ``-x`` a killed
    mutant then costs its quickest failing test, not the whole covering set (mutmut passes them unordered)."""
    import json
    import os
    from pathlib import Path

    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    duration = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: duration.get(item.nodeid, float("inf")))
