"""Mechanical mutation testing with mutmut: mutants nobody chose, every survivor triaged.

    python -m verification mechanical                 # every mutant of the modules in [tool.mutmut] only_mutate
    python -m verification mechanical --sample 10     # the mutants of 10 functions drawn with --seed
    python -m verification mechanical --sample 4 --modules refimpl/oracle/ops.py,refimpl/case_study/verdicts.py   # (CI)
    python -m verification mechanical --triage-only   # re-read the last run's results (mutants/ in the repo)
    python -m verification mechanical --write-result  # also rewrite verification/mutation/mutation_result.md and the record

mutmut 3 (pinned in the ``mutation`` extra) copies the project to ``mutants/``, writes every mutation of every
function of the target modules behind a trampoline, runs the suite once to record which tests reach which
function, then runs each mutant against only those tests, fastest first (``tests/conftest.py``), stopping at the
first failure. Its configuration (targets, deselected tests, timeout) is ``[tool.mutmut]`` in pyproject.toml.
The whole set resumes from ``verification/mutation/mutation_record.json`` (``verification.mutation.mutation_record``): results of
functions unchanged since are kept, the rest are run.

Triage (``verification/mutation/mutation_triage.json``): every surviving mutant that is not killed is listed by name with
the lines it changes (so an entry goes stale, and counts as untriaged, when the code under it changes) and one of

* ``"equivalent"``: the reason the change cannot alter behaviour;
* ``"open"``: a real bug no test catches yet, with what a test would have to assert to catch it.

The score per module is killed / (mutants - equivalent); a timeout counts as killed, a mutant no test reaches
as a survivor. Exit status: 0 when every survivor is triaged (and, for the whole set, the score is at least
``MIN_SCORE``); 1 otherwise; 2 when mutmut cannot run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRIAGE = ROOT / "verification" / "mutation" / "mutation_triage.json"
RESULT = ROOT / "verification" / "mutation" / "mutation_result.md"
MIN_SCORE = 0.90  # issue 21: at least 90% of the non-equivalent mutants killed
KILLED = ("killed", "timeout", "caught by type check", "segfault")
SEPARATOR = "\u01c1"  # mutmut's class-method separator in mangled names: x<sep>Class<sep>method


def targets(root: Path = ROOT) -> list[str]:
    """The modules mutated (``[tool.mutmut] only_mutate`` in pyproject.toml), as repository-relative paths."""
    import tomllib

    return list(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"])


def module_name(path: str) -> str:
    return path[:-3].replace("/", ".")


def function_keys(path: Path) -> list[str]:
    """mutmut's keys of the functions it mutates in one module: ``x_f`` and ``x<sep>Class<sep>method``."""
    tree = ast.parse(path.read_text())
    keys = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            keys.append(f"x_{node.name}")
        elif isinstance(node, ast.ClassDef):
            keys += [f"x{SEPARATOR}{node.name}{SEPARATOR}{item.name}" for item in node.body
                     if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return keys


def sample_patterns(n: int, seed: int, root: Path = ROOT, modules: list[str] | None = None) -> list[str]:
    """mutmut name patterns for the mutants of ``n`` functions of the target modules (or of ``modules``, a subset
    of them), drawn with ``seed``."""
    every = sorted(f"{module_name(p)}.{key}__mutmut_*" for p in (modules or targets(root))
                   for key in function_keys(root / p))
    return sorted(random.Random(seed).sample(every, min(n, len(every))))


def module_of(mutant: str) -> str:
    """``refimpl.oracle.model.xǁModelǁforward__mutmut_3`` -> ``refimpl/oracle/model.py``."""
    parts = mutant.split(".")
    index = next(i for i, part in enumerate(parts) if part.startswith(("x_", f"x{SEPARATOR}")))
    return "/".join(parts[:index]) + ".py"


def _mutmut(*args: str, root: Path = ROOT, log=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=root, text=True,
                          stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT if log else subprocess.PIPE)


def results(root: Path = ROOT) -> dict[str, str]:
    """{mutant name: mutmut status} of the last run."""
    out = _mutmut("results", "--all", "true", root=root)
    status = {}
    for line in out.stdout.splitlines():
        name, sep, value = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            status[name] = value
    return status


def _bodies(path: Path) -> dict[str, list[str]]:
    """Every mutant (and original) function of a mutmut-written module: name -> its stripped source lines, the
    def line naming the original function (a mutated default argument shows there)."""
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            base = node.name.rsplit("__mutmut_", 1)[0]
            body = [line.strip() for line in lines[node.lineno - 1:node.end_lineno]]
            out[node.name] = [body[0].replace(node.name, base, 1)] + body[1:]  # the def line names the base
    return out


class Diffs:
    """The lines each mutant removes and adds, read from the mutmut-written copies under ``mutants/`` (the
    same lines ``mutmut show`` prints): the triage's fingerprint of a mutant."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        self._files: dict[str, dict[str, list[str]]] = {}

    def __call__(self, mutant: str) -> str:
        import difflib

        module = module_of(mutant)
        if module not in self._files:
            path = self.root / "mutants" / module
            self._files[module] = _bodies(path) if path.is_file() else {}
        bodies = self._files[module]
        key = mutant.rsplit(".", 1)[1]
        original = bodies.get(key.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", [])
        changed = difflib.ndiff(original, bodies.get(key, []))
        return "\n".join(line[:1] + " " + line[2:] for line in changed if line[:1] in "+-")


@dataclass
class Tally:
    generated: int = 0
    killed: int = 0
    equivalent: int = 0
    open: int = 0
    untriaged: int = 0
    not_run: int = 0

    @property
    def score(self) -> float | None:
        """killed / (mutants run - equivalent); None when none was run."""
        judged = self.generated - self.equivalent - self.not_run
        return self.killed / judged if judged else None

    def score_text(self) -> str:
        return "-" if self.score is None else f"{self.score:.1%}"


def triage(status: dict[str, str], entries: dict[str, dict], changed_lines=None
           ) -> tuple[dict[str, Tally], list[str]]:
    """Per-module tallies and the problems (untriaged survivors, stale entries); ``changed_lines(name)`` gives a
    mutant's fingerprint (default: ``Diffs()``)."""
    changed_lines = changed_lines or Diffs()
    tallies: dict[str, Tally] = defaultdict(Tally)
    problems = []
    for name, state in sorted(status.items()):
        tally = tallies[module_of(name)]
        tally.generated += 1
        if state in KILLED:
            tally.killed += 1
        elif state in ("not checked", "skipped"):
            tally.not_run += 1
        else:  # survived, no tests, suspicious
            entry = entries.get(name)
            lines = changed_lines(name)
            if entry is None:
                tally.untriaged += 1
                problems.append(f"{state}: {name}\n{lines}")
            elif entry.get("lines") != lines:
                tally.untriaged += 1
                problems.append(f"stale triage entry (the code changed): {name}\n{lines}")
            elif entry.get("verdict") == "equivalent":
                tally.equivalent += 1
            else:
                tally.open += 1
    return dict(tallies), problems


def result_table(tallies: dict[str, Tally]) -> str:
    from refimpl.records import markdown_table

    rows, total = [], Tally()
    for module, t in sorted(tallies.items()):
        rows.append([f"`{module}`", t.generated, t.not_run, t.killed, t.equivalent, t.open, t.untriaged, t.score_text()])
        for field in ("generated", "killed", "equivalent", "open", "untriaged", "not_run"):
            setattr(total, field, getattr(total, field) + getattr(t, field))
    rows.append(["all", total.generated, total.not_run, total.killed, total.equivalent, total.open, total.untriaged,
                 total.score_text()])
    return markdown_table(["module", "mutants", "not run yet", "killed", "equivalent", "open (named)", "untriaged",
                           "score of those run"], rows)


def load_triage(path: Path = TRIAGE) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    from refimpl.commands.argparsing import OneLineParser

    parser = OneLineParser(prog="python -m verification mechanical", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="run only the mutants of N functions drawn with --seed (default: every mutant)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --sample draw (default: 0)")
    parser.add_argument("--modules", default=None, metavar="PATH,...",
                        help="draw the --sample from these target modules only (default: every target)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    parser.add_argument("--triage-only", action="store_true", help="do not run mutmut; triage the last results")
    parser.add_argument("--write-result", action="store_true", help=f"rewrite {RESULT.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be at least 1, got {args.sample}")
    modules = [m for m in args.modules.split(",") if m] if args.modules is not None else None
    if modules is not None and (not modules or set(modules) - set(targets())):
        parser.error(f"--modules must name target modules of [tool.mutmut] only_mutate, got {args.modules!r}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    start = time.perf_counter()
    patterns = sample_patterns(args.sample, args.seed, modules=modules) if args.sample else []
    if not patterns:  # the whole set resumes from the results kept in the repository
        from verification.mutation import mutation_record

        restored = mutation_record.restore(ROOT, targets(), only_if_missing=args.triage_only)
        if restored:
            print(f"restored {restored} results from {mutation_record.RECORD} (functions unchanged since)")
    if not args.triage_only:
        (ROOT / "mutants").mkdir(exist_ok=True)
        with open(ROOT / "mutants" / "mechanical.log", "w") as log:
            run = _mutmut("run", "--max-children", str(args.jobs), *patterns, log=log)
        if run.returncode != 0:
            print(f"python -m verification mechanical: error: mutmut exited with {run.returncode} "
                  f"(see mutants/mechanical.log)", file=sys.stderr)
            return 2
    status = results()
    if patterns:
        import fnmatch

        status = {n: s for n, s in status.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}
    if not status:
        print("python -m verification mechanical: error: no mutmut results (run without --triage-only first)",
              file=sys.stderr)
        return 2
    tallies, problems = triage(status, load_triage())
    table = result_table(tallies)
    print(table)
    counts = Counter(status.values())
    print(f"\n{len(status)} mutants ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}) in "
          f"{time.perf_counter() - start:.0f} s" + (f"; sample of {args.sample} functions, seed {args.seed}"
                                                    if patterns else ""))
    for problem in problems:
        print(f"\nUNTRIAGED {problem}")
    total = sum((t.killed for t in tallies.values())), sum(t.generated - t.equivalent - t.not_run
                                                          for t in tallies.values())
    score = total[0] / total[1] if total[1] else 1.0
    if args.write_result:
        from verification.mutation import mutation_record

        RESULT.write_text(RESULT_HEADER + table + "\n")
        mutation_record.write(ROOT, targets())
    not_run = sum(t.not_run for t in tallies.values())
    if not patterns and not_run:
        print(f"\n{not_run} mutants have not been run yet: the whole set is not judged")
    low = not patterns and (score < MIN_SCORE or not_run > 0)
    if not patterns and score < MIN_SCORE:
        print(f"\nscore {score:.1%} is below {MIN_SCORE:.0%}")
    return 1 if problems or low else 0


RESULT_HEADER = """# Mechanical mutation testing: the last run

A module with mutants "not run yet" is not judged: its score covers only the mutants that were run, and its
survivors listed as untriaged are still to be killed or explained.

Written by `python -m verification mechanical --write-result` (mutmut 3, configuration in pyproject.toml's
`[tool.mutmut]`). Killed includes timeouts; the score is killed / (mutants - equivalent). Every survivor is in
`verification/mutation/mutation_triage.json`: "equivalent" with the reason it cannot change behaviour, or "open" with
what a test would have to assert. Every mutant's result is in `verification/mutation/mutation_record.json`, from
which `python -m verification mechanical` resumes the whole set (only mutants not yet run, or of functions
changed since, are run).

"""
