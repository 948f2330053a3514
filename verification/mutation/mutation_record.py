"""The mechanical run's results kept in the repository, so that the whole set can be run across sessions and
machines: ``verification/mutation/mutation_record.json``.

The whole set (about 7,000 mutants) takes longer here than one sitting. mutmut keeps its results in
``mutants/**.meta`` (not committed); this module copies them into the record and back:

* ``write(root)``: for every target module, every function's source hash (mutmut's own, the one it uses to
  invalidate results when a function changes) and the exit code of each of its mutants that has been run.
* ``restore(root)``: after mutmut has written the mutants of a fresh checkout, give back every recorded exit
  code of a function whose hash is unchanged; mutants of changed or new functions stay "not checked" and
  the next run runs them. Explicitly named mutants (a ``--sample``) are always rerun by mutmut.

A result restored this way was decided by the tests of the commit in the record ("commit"); a test removed
since could have been the one that killed it, which the record cannot tell (rerun the module to be sure).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RECORD = "verification/mutation/mutation_record.json"
MUTANT = "__mutmut_"


def _meta_path(root: Path, module: str) -> Path:
    return root / "mutants" / (module + ".meta")


def function_of(mutant: str) -> tuple[str, str]:
    """``refimpl.oracle.ops.x_center__mutmut_3`` -> (``x_center``, ``3``)."""
    function, number = mutant.rsplit(".", 1)[1].rsplit(MUTANT, 1)
    return function, number


def record_of(metas: dict[str, dict]) -> dict[str, dict]:
    """{module: {function: {"hash", "exit_codes": {mutant number: exit code}}}} from mutmut's metas."""
    modules = {}
    for module, meta in sorted(metas.items()):
        functions = {name: {"hash": digest, "exit_codes": {}}
                     for name, digest in sorted(meta.get("hash_by_function_name", {}).items())}
        for mutant, code in meta.get("exit_code_by_key", {}).items():
            function, number = function_of(mutant)
            if code is not None and function in functions:
                functions[function]["exit_codes"][number] = code
        modules[module] = functions
    return modules


def merge(meta: dict, recorded: dict[str, dict]) -> int:
    """Give ``meta`` (one module's, edited in place) the recorded exit codes of its mutants that have none,
    for the functions whose hash is the recorded one; returns how many were given."""
    hashes = meta.get("hash_by_function_name", {})
    given = 0
    for mutant, code in meta.get("exit_code_by_key", {}).items():
        if code is not None:
            continue
        function, number = function_of(mutant)
        entry = recorded.get(function)
        if entry is None or hashes.get(function) != entry["hash"] or number not in entry["exit_codes"]:
            continue
        meta["exit_code_by_key"][mutant] = entry["exit_codes"][number]
        given += 1
    return given


def _git_head(root: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def write(root: Path, modules: list[str]) -> Path:
    metas = {m: json.loads(_meta_path(root, m).read_text()) for m in modules if _meta_path(root, m).is_file()}
    import importlib.metadata

    record = {"commit": _git_head(root), "mutmut": importlib.metadata.version("mutmut"), "modules": record_of(metas)}
    path = root / RECORD
    path.write_text(json.dumps(record, indent=0, sort_keys=True) + "\n")
    return path


GENERATE = """
import os
from mutmut.__main__ import (copy_also_copy_files, copy_src_dir, create_mutants, set_mutant_under_test,
                             setup_source_paths, store_lines_covered_by_tests)
os.makedirs("mutants", exist_ok=True)
set_mutant_under_test("mutant_generation")
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); store_lines_covered_by_tests(); create_mutants(1)
"""


def generate(root: Path) -> None:
    """Write the mutants (mutmut's first step of a run, without running anything), so they can be given
    their recorded results."""
    done = subprocess.run([sys.executable, "-c", GENERATE], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mutmut could not write the mutants: {done.stderr.strip().splitlines()[-1:]}")


def restore(root: Path, modules: list[str], only_if_missing: bool = False) -> int:
    """Give the mutants in ``mutants/`` the record's results (writing the mutants first if needed); returns
    how many results were restored. ``only_if_missing``: only on a checkout without mutmut's results (when
    only reading them: a mutmut run in progress writes the same files)."""
    path = root / RECORD
    missing = any(not _meta_path(root, m).is_file() for m in modules)
    if not path.is_file() or (only_if_missing and not missing):
        return 0
    recorded = json.loads(path.read_text())["modules"]
    if missing:
        generate(root)
    given = 0
    for module in modules:
        meta_path = _meta_path(root, module)
        if module not in recorded or not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        count = merge(meta, recorded[module])
        if count:
            meta_path.write_text(json.dumps(meta, indent=4))
            given += count
    return given
