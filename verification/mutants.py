"""Mutation testing: plant plausible bugs in a copy of the project and show that the suite catches them.

A mutant is a TEXT edit of the project's own source (``Mutant``; the catalogue is in
``verification/mutants_catalogue.py``). For each mutant the harness

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

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
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
def copy_tree(root: Path, dest: Path, items: Iterable[str] = COPY_ITEMS) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for item in items:
        src = root / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=IGNORED, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, dest / item)
    return dest


def environment(copy: Path, threads: int | None = None) -> dict[str, str]:
    """The environment of a run in ``copy``: the copy first on PYTHONPATH, no bytecode files."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("MPLBACKEND", "Agg")
    env["COLUMNS"] = "200"  # pytest's short summary lines are cut to the terminal width
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    return env


_ACTIVE: set[int] = set()  # process groups started by this harness (killed on Ctrl-C)
_LOCK = threading.Lock()


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int | None, str]:
    """(return code, stdout + stderr); return code None on timeout (the process group is killed)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    with _LOCK:
        _ACTIVE.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1.0))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        _kill(proc.pid)
        out, _ = proc.communicate()
        return None, out
    finally:
        with _LOCK:
            _ACTIVE.discard(proc.pid)


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the group this harness created for that one command
    except (ProcessLookupError, PermissionError):
        pass


def verify_isolation(copy: Path, env: dict, python: str = sys.executable,
                     packages: Sequence[str] = ("refimpl", "verification")) -> list[str]:
    """Problems (empty if none): each package must be imported from ``copy``, not the editable install."""
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    print(importlib.import_module(n).__file__)"
    rc, out = _run([python, "-c", code, *packages], copy, env, 120)
    if rc != 0:
        return [f"importing {list(packages)} from the copy failed: {out.strip().splitlines()[-1:]}"]
    lines = out.strip().splitlines()[-len(packages):]
    base = copy.resolve()
    return [f"{name} imported from {path}, not from the copy {base}" for name, path in zip(packages, lines)
            if base not in Path(path).resolve().parents]


def first_failure(output: str) -> str:
    """The first FAILED/ERROR line of pytest's short summary (else the last line of output)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1][:160]
    lines = [l for l in output.splitlines() if l.strip()]
    return lines[-1][:160] if lines else "(no output)"


def suite_files(copy: Path, exclude: Iterable[str] = ()) -> list[str]:
    """The copy's test files, fast first and the slow ones (SLOW_TESTS_LAST) last."""
    exclude = set(exclude) | set(HARNESS_TESTS)
    files = sorted(str(p.relative_to(copy)) for p in (copy / "tests").glob("test_*.py"))
    files = [f for f in files if f not in exclude]
    slow = [f for f in SLOW_TESTS_LAST if f in files]
    return [f for f in files if f not in slow] + slow


def run_suite(copy: Path, targeted: Sequence[str], env: dict, deadline: float, report: bool,
              python: str = sys.executable) -> tuple[str, str, str]:
    """(status, by, stage) of the suite on ``copy``: targeted tests, the other tests, then the report."""
    targeted = [t for t in targeted if (copy / t.split("::")[0]).is_file()]
    whole = [t for t in targeted if "::" not in t]
    stages = [("tests (targeted)", targeted), ("tests", suite_files(copy, whole))]
    for stage, files in stages:
        if not files:
            continue
        rc, out = _run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files], copy, env,
                       deadline - time.monotonic())
        if rc is None:
            return TIMEOUT, f"{stage} did not finish", stage
        if rc != 0:
            return CAUGHT, first_failure(out), stage
    if report:
        out_file = copy / ".mutant-report.json"
        rc, out = _run([python, "-m", "verification", "--out", str(out_file)], copy, env,
                       deadline - time.monotonic())
        if rc is None:
            return TIMEOUT, "verification report did not finish", "report"
        failed = None
        if out_file.is_file():
            try:
                failed = [c["name"] for c in json.loads(out_file.read_text())["checks"] if not c["passed"]]
            except (ValueError, KeyError):
                failed = None
        if failed:
            return CAUGHT, f"report check: {failed[0]}" + (f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""), "report"
        if rc != 0:
            return CAUGHT, f"report crashed: {first_failure(out)}", "report"
    return SURVIVED, "", ""


def run_mutant(mutant: Mutant | None, root: Path = ROOT, *, timeout: float = DEFAULT_TIMEOUT, report: bool = True,
               items: Iterable[str] = COPY_ITEMS, threads: int | None = None, python: str = sys.executable,
               check_isolation: Sequence[str] = ()) -> Outcome:
    """Copy ``root``, apply ``mutant`` (None: the unmutated baseline) and run the suite on the copy."""
    start = time.monotonic()
    name = mutant.id if mutant else "(baseline)"
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        copy = copy_tree(root, Path(tmp) / "src", items)
        if mutant is not None:
            problem = apply(mutant, copy)
            if problem:
                return Outcome(name, problem[0], problem[1], time.monotonic() - start, "anchor")
        env = environment(copy, threads)
        if check_isolation:
            problems = verify_isolation(copy, env, python, check_isolation)
            if problems:
                return Outcome(name, CATALOGUE_ERROR, "; ".join(problems), time.monotonic() - start, "isolation")
        status, by, stage = run_suite(copy, mutant.tests if mutant else (), env, start + timeout, report, python)
        return Outcome(name, status, by, time.monotonic() - start, stage)


# ------------------------------------------------------------------ a whole catalogue
def _line(o: Outcome, timeout: float) -> str:
    by = o.by
    if o.status == TIMEOUT:
        by = (f"{by}; counted as CAUGHT: the suite ran over {timeout:g} s, which fails CI's time limit "
              "(if the machine was busy, rerun with a larger --timeout)")
    return f"{o.status:15} {o.id:36} {o.seconds:7.1f} s  {by}"


@dataclass
class RunResult:
    outcomes: list[Outcome]
    baseline: Outcome | None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, *statuses: str) -> int:
        return sum(o.status in statuses for o in self.outcomes)

    @property
    def applicable(self) -> int:
        return self.count(CAUGHT, SURVIVED, TIMEOUT)

    @property
    def exit_status(self) -> int:
        if self.baseline is not None and self.baseline.status != SURVIVED:
            return 2
        bad = self.count(SURVIVED, NOT_APPLICABLE, CATALOGUE_ERROR)
        return 1 if bad or self.errors else 0


def run_catalogue(mutants: Sequence[Mutant], root: Path = ROOT, *, jobs: int = 1, timeout: float = DEFAULT_TIMEOUT,
                  report: bool = True, baseline: bool = True, items: Iterable[str] = COPY_ITEMS,
                  isolation: Sequence[str] = ("refimpl", "verification"),
                  say: Callable[[str], None] = print) -> RunResult:
    """Run ``mutants`` (``jobs`` at a time) and the baseline; print one line per mutant as it finishes."""
    start = time.monotonic()
    items = tuple(items)
    errors = validate(mutants)
    for e in errors:
        say(f"CATALOGUE ERROR: {e}")
    for t in missing_targets(mutants, root):
        say(f"warning: target test file {t} does not exist (its mutants run the whole suite)")
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))
    outcomes: dict[str, Outcome] = {}
    runnable = []
    for m in mutants:  # anchors first: not applicable / ambiguous mutants cost nothing
        problem = anchor_problem(m, _read(root, m.file))
        if problem:
            outcomes[m.id] = Outcome(m.id, problem[0], problem[1], 0.0, "anchor")
            say(_line(outcomes[m.id], timeout))
        else:
            runnable.append(m)
    base = None
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = {}
        if baseline:
            futures[pool.submit(run_mutant, None, root, timeout=timeout, report=report, items=items,
                                threads=threads, check_isolation=isolation)] = None
        for m in runnable:
            futures[pool.submit(run_mutant, m, root, timeout=timeout, report=report, items=items,
                                threads=threads)] = m
        try:
            for future in as_completed(futures):
                o = future.result()
                if futures[future] is None:
                    base = o
                    ok = o.status == SURVIVED
                    say(f"{'baseline passes' if ok else 'BASELINE FAILS':15} {'(unmutated copy)':36} "
                        f"{o.seconds:7.1f} s  {'copy imported, tests and report pass' if ok else o.by}")
                else:
                    outcomes[o.id] = o
                    say(_line(o, timeout))
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            with _LOCK:
                for pid in list(_ACTIVE):
                    _kill(pid)
            raise
    ordered = [outcomes[m.id] for m in mutants if m.id in outcomes]
    return RunResult(ordered, base, errors, time.monotonic() - start)


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

    from .mutants_catalogue import CATALOGUE, FAST

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
        result = run_catalogue(mutants, root, jobs=args.jobs, timeout=args.timeout, report=not args.no_report,
                               baseline=not args.no_baseline, say=lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        print("interrupted: the running copies were stopped")
        return 130
    print(summarize(result, args.timeout))
    return result.exit_status
