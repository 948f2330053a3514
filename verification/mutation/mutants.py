"""Mutation testing: plant plausible bugs in a copy of the project and show that the suite catches them.

A mutant is a TEXT edit of the project's own source (``Mutant``; the catalogue is in
``verification/mutation/mutants_catalogue.py``). For each mutant the harness

1. copies the source tree (``COPY_ITEMS``: refimpl/, verification/, tests/, scripts/, pyproject.toml,
   README.md, .ci; never .venv, .git or caches) to a temporary folder;
2. applies the edit. Every anchor must occur exactly once in its file: 0 times means the code moved on
   and the mutant is "not applicable" (NEVER counted as caught); more than once is a catalogue error;
3. runs ``python -m pytest -x -q -p no:cacheprovider`` in the copy, with the copy first on PYTHONPATH so
   that it shadows the editable install (setuptools' editable finder is appended to ``sys.meta_path``,
   after the ordinary path finder; ``verify_isolation`` checks ``refimpl.__file__`` and
   ``verification.__file__`` point into the copy). The test files the mutant names (``tests``) run
   first, then the remaining files with the slow ones last, so a caught mutant fails fast;
4. if no test failed, runs the verification report (``python -m verification --out ...``) in the copy.

Outcomes: "caught" (a test failed or the report has a failing check: by what is printed), "survived",
"not applicable", "catalogue error", and "timeout". A TIMEOUT IS COUNTED AS CAUGHT: a mutant that makes
the suite hang or run for longer than ``--timeout`` (default 300 s, about 5x the whole suite) would fail
CI's time limit; the output says so explicitly, since load on the machine could also cause it.

The unmutated copy (the "baseline") runs the same way first (concurrently with the mutants); if it does
not pass, nothing can be concluded and the run exits with status 2. The harness's own tests
(``HARNESS_TESTS``) are not run against mutants.

Exit status: 0 when every applicable mutant was caught; 1 when a mutant survived, an anchor is missing or
ambiguous, or the catalogue is otherwise wrong; 2 when the baseline fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

if TYPE_CHECKING:
    from verification.mutation.mutant_runs import RunResult

ROOT = Path(__file__).resolve().parents[2]
COPY_ITEMS = ("refimpl", "verification", "tests", "scripts", "pyproject.toml", "README.md", ".ci")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "*.egg-info",
                                 "bench-cache", ".cache")
HARNESS_TESTS = ("tests/test_mutants.py",)  # tests of this harness: they do not test the project's code
SLOW_TESTS_LAST = ("tests/test_hub_cache.py", "tests/test_parity_transformers.py", "tests/test_organism.py",
                   "tests/test_verification.py", "tests/test_case_study.py")
DEFAULT_TIMEOUT = 300.0

CAUGHT, SURVIVED, NOT_APPLICABLE, CATALOGUE_ERROR, TIMEOUT = (
    "caught", "survived", "not applicable", "catalogue error", "timeout")


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``anchor`` by ``replacement`` in ``file`` (repo-relative).

    ``tests``: test files (or node ids) most likely to catch it, run first. ``also``: further
    (anchor, replacement) edits in the same file, for a bug that needs two edits; each anchor must occur
    exactly once.
    """

    id: str
    file: str
    anchor: str
    replacement: str
    description: str
    tests: tuple[str, ...] = ()
    also: tuple[tuple[str, str], ...] = ()

    def edits(self) -> tuple[tuple[str, str], ...]:
        return ((self.anchor, self.replacement),) + tuple(self.also)


@dataclass
class Outcome:
    id: str
    status: str
    by: str = ""
    seconds: float = 0.0
    stage: str = ""  # "tests (targeted)", "tests", "report", "anchor", "baseline"

    @property
    def killed(self) -> bool:
        return self.status in (CAUGHT, TIMEOUT)


# ------------------------------------------------------------------ anchors
def anchor_problem(mutant: Mutant, text: str | None) -> tuple[str, str] | None:
    """(status, message) when the mutant cannot be applied to ``text`` (None: the file is missing)."""
    if text is None:
        return NOT_APPLICABLE, f"{mutant.file} does not exist"
    for anchor, replacement in mutant.edits():
        if anchor == replacement:
            return CATALOGUE_ERROR, f"replacement equals anchor {anchor[:60]!r}"
        count = text.count(anchor)
        if count == 0:
            return NOT_APPLICABLE, f"anchor not found in {mutant.file}: {anchor[:70]!r}"
        if count > 1:
            return CATALOGUE_ERROR, f"anchor occurs {count} times in {mutant.file}: {anchor[:70]!r}"
    return None


def _read(root: Path, relative: str) -> str | None:
    path = root / relative
    return path.read_text() if path.is_file() else None


def apply(mutant: Mutant, root: Path) -> tuple[str, str] | None:
    """Apply the mutant to the tree at ``root`` in place; (status, message) when it cannot be applied."""
    text = _read(root, mutant.file)
    problem = anchor_problem(mutant, text)
    if problem:
        return problem
    for anchor, replacement in mutant.edits():
        text = text.replace(anchor, replacement, 1)
    (root / mutant.file).write_text(text)
    return None


def validate(catalogue: Sequence[Mutant]) -> list[str]:
    """Catalogue-level errors: duplicate or empty ids."""
    errors, seen = [], set()
    for m in catalogue:
        if not m.id or m.id in seen:
            errors.append(f"duplicate or empty mutant id {m.id!r}")
        seen.add(m.id)
        if isinstance(m.tests, str) or isinstance(m.also, str):
            errors.append(f"{m.id}: tests and also must be tuples (a missing trailing comma?)")
    return errors


def missing_targets(catalogue: Sequence[Mutant], root: Path = ROOT) -> list[str]:
    """Target test files that do not exist (a warning: those mutants then run the whole suite)."""
    return sorted({t.split("::")[0] for m in catalogue for t in m.tests if not (root / t.split("::")[0]).is_file()})


# ------------------------------------------------------------------ running one copy
# ------------------------------------------------------------------ a whole catalogue
def summarize(result: RunResult, timeout: float = DEFAULT_TIMEOUT) -> str:
    caught = result.count(CAUGHT, TIMEOUT)
    lines = ["", f"{'mutant':36} {'status':15} {'seconds':>7}  caught by"]
    lines += [f"{o.id:36} {o.status:15} {o.seconds:7.1f}  {o.by}" for o in result.outcomes]
    applicable = result.applicable
    rate = f"{caught}/{applicable} = {100.0 * caught / applicable:.1f}%" if applicable else "n/a"
    lines.append("")
    lines.append(f"kill rate {rate} (caught / applicable); {result.count(SURVIVED)} survived, "
                 f"{result.count(TIMEOUT)} timeouts (counted as caught), {result.count(NOT_APPLICABLE)} not applicable, "
                 f"{result.count(CATALOGUE_ERROR)} catalogue errors; total {result.seconds:.0f} s")
    if result.baseline is not None and result.baseline.status != SURVIVED:
        lines.append(f"THE UNMUTATED SUITE FAILS ({result.baseline.by}): these results mean nothing; exit 2")
    survivors = [o.id for o in result.outcomes if o.status == SURVIVED]
    if survivors:
        lines.append("survivors: " + ", ".join(survivors))
    missing = [o.id for o in result.outcomes if o.status in (NOT_APPLICABLE, CATALOGUE_ERROR)]
    if missing:
        lines.append("fix the catalogue (anchor missing or ambiguous): " + ", ".join(missing))
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    import argparse

    from verification.mutation.mutants_catalogue import CATALOGUE, FAST

    parser = argparse.ArgumentParser(
        prog="python -m verification mutants",
        description="Plant each catalogued bug in a copy of the project and run the tests (then the "
                    "verification report) against it. Exit 0 only if every mutant is caught.")
    parser.add_argument("--only", default="", help="comma-separated mutant ids")
    parser.add_argument("--fast", action="store_true", help=f"the CI subset ({len(FAST)} mutants, one or two per area)")
    parser.add_argument("--list", action="store_true", help="list the catalogue with anchor status and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds per mutant; a timeout counts as caught (default %(default)s)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (faster, less safe)")
    parser.add_argument("--no-report", action="store_true", help="tests only, no verification report")
    parser.add_argument("--root", default=str(ROOT), help="the source tree to copy (default: this checkout)")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()

    mutants = list(CATALOGUE)
    if args.fast:
        mutants = [m for m in mutants if m.id in FAST]
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {m.id for m in CATALOGUE})
        if unknown:
            print(f"unknown mutant ids: {', '.join(unknown)} (see --list)")
            return 1
        mutants = [m for m in CATALOGUE if m.id in wanted]
    if args.list:
        for m in mutants:
            problem = anchor_problem(m, _read(root, m.file))
            state = problem[0] if problem else "ok"
            print(f"{m.id:36} {'fast' if m.id in FAST else '':4} {state:15} {m.file:28} {m.description}")
        errors = validate(mutants)
        for e in errors:
            print(f"CATALOGUE ERROR: {e}")
        for t in missing_targets(mutants, root):
            print(f"warning: target test file {t} does not exist (its mutants run the whole suite)")
        return 1 if errors or any(anchor_problem(m, _read(root, m.file)) for m in mutants) else 0
    print(f"{len(mutants)} mutants, {args.jobs} at a time, timeout {args.timeout:g} s each, root {root}", flush=True)
    try:
        from verification.mutation.mutant_runs import run_catalogue

        result = run_catalogue(mutants, root, jobs=args.jobs, timeout=args.timeout, report=not args.no_report,
                               baseline=not args.no_baseline, say=lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        print("interrupted: the running copies were stopped")
        return 130
    print(summarize(result, args.timeout))
    return result.exit_status
