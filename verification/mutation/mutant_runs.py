"""Running a catalogue mutant: an isolated copy of the repository with the edit applied, its named tests first, then the rest of the suite and the verification report, in parallel jobs with a timeout each."""

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
from verification.mutation.mutants import (CATALOGUE_ERROR, CAUGHT, COPY_ITEMS, DEFAULT_TIMEOUT, HARNESS_TESTS, IGNORED,
                                          NOT_APPLICABLE, ROOT, SLOW_TESTS_LAST, SURVIVED, TIMEOUT, Mutant,
                                          Outcome, _read, anchor_problem, apply, missing_targets, validate)

_ACTIVE: set[int] = set()  # process groups started by this harness (killed on Ctrl-C)


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
