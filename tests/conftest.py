"""Shared fixtures: small random checkpoints the tests build themselves (nothing is downloaded)."""

from __future__ import annotations

import pytest

from verification.fixtures import gpt_neo_config, random_tensors, write_checkpoint
from verification.strategies import load_profile

load_profile()  # hypothesis: "default" (derandomized) unless REFIMPL_HYPOTHESIS_PROFILE=long


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 2-layer (global, local) checkpoint stored in float32, window 4 < the test sequences."""
    config = gpt_neo_config(vocab=61, d_model=16, n_layers=2, n_heads=2, window=4, n_ctx=32)
    return write_checkpoint(tmp_path_factory.mktemp("tiny"), config, random_tensors(config, seed=1))


@pytest.fixture(scope="session")
def tiny64(tiny_dir):
    import refimpl

    return refimpl.load(tiny_dir, dtype="float64")


SETUP_DURATIONS = "setup-durations.json"  # beside mutmut-stats.json in mutants/ (mutmut runs the tests there)


def _setup_durations_path():
    """Where fixture set-up times are recorded: $REFIMPL_SETUP_DURATIONS, or under mutmut's stats run (which
    records only the time of each test's call) the working directory, mutants/."""
    import os
    from pathlib import Path

    if os.environ.get("REFIMPL_SETUP_DURATIONS"):
        return Path(os.environ["REFIMPL_SETUP_DURATIONS"])
    return Path(SETUP_DURATIONS) if os.environ.get("MUTANT_UNDER_TEST") == "stats" else None


class SetupRecorder:
    """A pytest plugin that records each test's fixture set-up time and merges it into ``path`` at the end."""

    def __init__(self, path):
        self.path, self.seconds = path, {}

    def pytest_runtest_logreport(self, report):
        if report.when == "setup":
            self.seconds[report.nodeid.removeprefix("mutants/")] = report.duration

    def pytest_sessionfinish(self, session):
        import json

        if self.seconds:
            recorded = json.loads(self.path.read_text()) if self.path.is_file() else {}
            self.path.write_text(json.dumps({**recorded, **self.seconds}))


def pytest_configure(config):
    path = _setup_durations_path()
    if path is not None:
        config.pluginmanager.register(SetupRecorder(path), "refimpl-setup-recorder")


def pytest_collection_modifyitems(config, items):
    """Under mutmut (MUTANT_UNDER_TEST set), run a mutant's covering tests cheapest first: with ``-x`` a killed
    mutant then costs its cheapest failing test, not the whole covering set (mutmut passes them unordered).
    A test's cost is its call time (mutmut's stats) plus the set-up time of every test in its file (a
    module-scoped fixture is paid by whichever of them runs first; mutmut's stats do not see it)."""
    import json
    import os
    from collections import defaultdict
    from pathlib import Path

    if os.environ.get("MUTANT_UNDER_TEST") in (None, "", "stats", "list_all_tests", "mutant_generation"):
        return
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    duration = json.loads(stats.read_text()).get("duration_by_test", {})
    setup = json.loads(Path(SETUP_DURATIONS).read_text()) if Path(SETUP_DURATIONS).is_file() else {}
    per_file = defaultdict(float)
    for nodeid, seconds in setup.items():
        per_file[nodeid.split("::", 1)[0]] += seconds

    def cost(item):
        nodeid = item.nodeid.removeprefix("mutants/")
        return per_file[nodeid.split("::", 1)[0]] + duration.get(nodeid, float("inf"))

    items.sort(key=cost)
