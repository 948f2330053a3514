"""Meta-tests of the mutation harness (verification/mutation/mutants.py) on a tiny throw-away project, plus the
catalogue's own consistency. Not run against mutants (mutants.HARNESS_TESTS)."""

from __future__ import annotations

import textwrap

import pytest

from verification.mutation import mutant_runs as MR
from verification.mutation import mutants as M
from verification.mutation.mutants_catalogue import CATALOGUE, FAST

PACKAGE = "mutmeta_pkg"  # not installed anywhere: importable only from the copy


@pytest.fixture()
def tiny_project(tmp_path):
    root = tmp_path / "project"
    (root / PACKAGE).mkdir(parents=True)
    (root / PACKAGE / "__init__.py").write_text("def add(a, b):\n    return a + b\n\n\ndef name():\n    return 'add'\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_add.py").write_text(textwrap.dedent(f"""
        from {PACKAGE} import add

        def test_add():
            assert add(2, 3) == 5
    """))
    return root


def _mutant(id, anchor, replacement, file=f"{PACKAGE}/__init__.py"):
    return M.Mutant(id, file, anchor, replacement, f"meta-test mutant {id}", ("tests/test_add.py",))


def test_outcomes_on_a_tiny_project(tiny_project):
    mutants = [
        _mutant("missing-anchor", "return a * b", "return a - b"),
        _mutant("missing-file", "return a + b", "return a - b", file=f"{PACKAGE}/gone.py"),
        _mutant("planted", "return a + b", "return a - b"),
        _mutant("equivalent", "return a + b", "return  a  +  b"),
        _mutant("ambiguous", "return", "return 0 or"),
    ]
    lines = []
    result = MR.run_catalogue(mutants, tiny_project, jobs=2, timeout=120, report=False, baseline=True,
                             items=(PACKAGE, "tests"), isolation=(PACKAGE,), say=lines.append)
    status = {o.id: o for o in result.outcomes}
    assert result.baseline is not None and result.baseline.status == M.SURVIVED, result.baseline  # baseline passes
    assert status["missing-anchor"].status == M.NOT_APPLICABLE  # never "caught"
    assert status["missing-file"].status == M.NOT_APPLICABLE
    assert status["planted"].status == M.CAUGHT and "tests/test_add.py::test_add" in status["planted"].by
    assert status["equivalent"].status == M.SURVIVED
    assert status["ambiguous"].status == M.CATALOGUE_ERROR
    assert result.applicable == 2 and result.exit_status == 1
    summary = M.summarize(result, 120)
    assert "kill rate 1/2" in summary and "survivors: equivalent" in summary
    # the unmutated source tree is untouched
    assert "return a + b" in (tiny_project / PACKAGE / "__init__.py").read_text()


def test_a_hanging_mutant_is_a_timeout_counted_as_caught(tiny_project):
    hang = _mutant("hangs", "return a + b", "__import__('time').sleep(600)\n    return a + b")
    lines = []
    result = MR.run_catalogue([hang], tiny_project, timeout=3, report=False, baseline=False,
                             items=(PACKAGE, "tests"), say=lines.append)
    (outcome,) = result.outcomes
    assert outcome.status == M.TIMEOUT and outcome.killed and outcome.seconds < 30
    assert "counted as CAUGHT" in lines[0] and result.exit_status == 0


def test_a_failing_baseline_makes_the_run_meaningless(tiny_project):
    (tiny_project / "tests" / "test_add.py").write_text("def test_broken():\n    assert False\n")
    result = MR.run_catalogue([], tiny_project, jobs=1,
                             timeout=60, report=False, items=(PACKAGE, "tests"), isolation=(PACKAGE,),
                             say=lambda s: None)
    assert result.baseline.status == M.CAUGHT and result.exit_status == 2


def test_copies_shadow_the_editable_install(tmp_path):
    """The copy's refimpl and verification are what a run imports; the check itself can fail."""
    copy = MR.copy_tree(M.ROOT, tmp_path / "copy", ("refimpl", "verification"))
    assert MR.verify_isolation(copy, MR.environment(copy)) == []
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    problems = MR.verify_isolation(elsewhere, MR.environment(elsewhere))
    assert len(problems) == 2 and "not from the copy" in problems[0]


def test_apply_replaces_exactly_once(tmp_path):
    (tmp_path / "f.py").write_text("x = 1\ny = 2\n")
    m = M.Mutant("m", "f.py", "y = 2", "y = 3", "", also=(("x = 1", "x = 0"),))
    assert M.apply(m, tmp_path) is None
    assert (tmp_path / "f.py").read_text() == "x = 0\ny = 3\n"
    assert M.apply(m, tmp_path)[0] == M.NOT_APPLICABLE  # already applied: anchors gone


def test_catalogue_is_consistent_and_applies_to_this_checkout():
    assert len(CATALOGUE) >= 45
    assert M.validate(CATALOGUE) == []
    ids = {m.id for m in CATALOGUE}
    assert set(FAST) <= ids
    named = {"prop-mlp-uses-ln1", "prop-ln2-input-resid-pre", "prop-ln-norms-all-tokens", "beam-keeps-worst",
             "case-subj-sign-flipped", "exp-table4-transposed", "exp-table1-scores-from-ln2",
             "jac-frozen-block-ln1-is-ln2"}  # the named bugs
    assert named <= ids
    problems = {m.id: M.anchor_problem(m, M._read(M.ROOT, m.file)) for m in CATALOGUE}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, ("the code moved under these mutants: update their anchors in "
                          f"verification/mutation/mutants_catalogue.py: {problems}")


# ------------------------------------------------------------------ the mechanical (mutmut) driver
def test_mechanical_module_names_and_function_keys(tmp_path):
    from verification.mutation import mechanical as X

    assert X.module_of("refimpl.oracle.model.x\u01c1Model\u01c1forward__mutmut_3") == "refimpl/oracle/model.py"
    assert X.module_of("verification.peers.validate.x_main__mutmut_12") == "verification/peers/validate.py"
    source = tmp_path / "m.py"
    source.write_text("def f():\n    return 1\n\nclass C:\n    def g(self):\n        pass\n\nX = 1\n")
    assert X.function_keys(source) == ["x_f", "x\u01c1C\u01c1g"]
    targets = X.targets()
    assert "refimpl/case_study/verdicts.py" in targets and "refimpl/oracle/model.py" in targets
    assert all((X.ROOT / t).is_file() for t in targets)  # a moved module must be moved here too
    first, again, other = X.sample_patterns(5, 0), X.sample_patterns(5, 0), X.sample_patterns(5, 1)
    assert first == again and first != other and len(first) == 5
    assert all(p.endswith("__mutmut_*") for p in first)


def test_mechanical_triage_counts_and_flags(monkeypatch):
    from verification.mutation import mechanical as X

    diffs = {"refimpl.oracle.ops.x_a__mutmut_1": "-    return x\n+    return -x", "refimpl.oracle.ops.x_a__mutmut_2": "-a\n+b",
             "refimpl.oracle.ops.x_a__mutmut_3": "-c\n+d", "refimpl.oracle.ops.x_a__mutmut_4": "-e\n+f"}
    status = {"refimpl.oracle.ops.x_a__mutmut_1": "survived", "refimpl.oracle.ops.x_a__mutmut_2": "survived",
              "refimpl.oracle.ops.x_a__mutmut_3": "no tests", "refimpl.oracle.ops.x_a__mutmut_4": "survived",
              "refimpl.oracle.ops.x_a__mutmut_5": "killed", "refimpl.oracle.ops.x_a__mutmut_6": "timeout",
              "refimpl.oracle.trace.x_b__mutmut_1": "killed"}
    entries = {"refimpl.oracle.ops.x_a__mutmut_1": {"lines": diffs["refimpl.oracle.ops.x_a__mutmut_1"], "verdict": "equivalent"},
               "refimpl.oracle.ops.x_a__mutmut_2": {"lines": "-old\n+code", "verdict": "equivalent"},  # stale
               "refimpl.oracle.ops.x_a__mutmut_4": {"lines": "-e\n+f", "verdict": "open"}}
    tallies, problems = X.triage(status, entries, lambda name: diffs.get(name, ""))
    ops = tallies["refimpl/oracle/ops.py"]
    assert (ops.generated, ops.killed, ops.equivalent, ops.open, ops.untriaged) == (6, 2, 1, 1, 2)
    assert ops.score == 2 / 5  # equivalents leave the denominator; open and untriaged stay in it
    assert len(problems) == 2 and any("stale" in p for p in problems) and any(p.startswith("no tests") for p in problems)
    assert tallies["refimpl/oracle/trace.py"].score == 1.0 and X.Tally(generated=3, not_run=3).score_text() == "-"
    assert "| all | 7 | 0 | 3 | 1 | 1 | 2 |" in X.result_table(tallies)


def test_mechanical_fingerprint_is_the_mutated_lines(tmp_path):
    from verification.mutation import mechanical as X

    (tmp_path / "mutants" / "refimpl" / "oracle").mkdir(parents=True)
    (tmp_path / "mutants" / "refimpl" / "oracle" / "ops.py").write_text(
        "def x_f__mutmut_orig(a):\n    b = a + 1\n    return b\n\n"
        "def x_f__mutmut_1(a):\n    b = a - 1\n    return b\n\n"
        "class C:\n    def x\u01c1C\u01c1g__mutmut_orig(self):\n        return 2\n"
        "    def x\u01c1C\u01c1g__mutmut_1(self):\n        return 3\n")
    diffs = X.Diffs(tmp_path)
    assert diffs("refimpl.oracle.ops.x_f__mutmut_1") == "- b = a + 1\n+ b = a - 1"
    assert diffs("refimpl.oracle.ops.x\u01c1C\u01c1g__mutmut_1") == "- return 2\n+ return 3"


# ------------------------------------------------------------------ the record that lets the whole set resume
def _meta(codes, hashes):
    return {"exit_code_by_key": dict(codes), "hash_by_function_name": dict(hashes), "type_check_error_by_key": {},
            "durations_by_key": {}, "estimated_durations_by_key": {}}


def test_mechanical_record_keeps_results_by_function_hash():
    from verification.mutation import mutation_record as R

    sep = "\u01c1"
    meth = f"x{sep}Model{sep}forward"
    meta = _meta({"refimpl.oracle.ops.x_center__mutmut_1": 1, "refimpl.oracle.ops.x_center__mutmut_2": 0,
                  "refimpl.oracle.ops.x_center__mutmut_3": None, f"refimpl.oracle.ops.{meth}__mutmut_12": 36},
                 {"x_center": "aaa", meth: "bbb"})
    record = R.record_of({"refimpl/oracle/ops.py": meta})
    assert record == {"refimpl/oracle/ops.py": {"x_center": {"hash": "aaa", "exit_codes": {"1": 1, "2": 0}},
                                         meth: {"hash": "bbb", "exit_codes": {"12": 36}}}}
    assert R.function_of(f"refimpl.oracle.ops.{meth}__mutmut_12") == (meth, "12")
    # a fresh checkout: every mutant "not checked"; the method changed since the record, x_center did not
    fresh = _meta({k: None for k in meta["exit_code_by_key"]}, {"x_center": "aaa", meth: "changed"})
    assert R.merge(fresh, record["refimpl/oracle/ops.py"]) == 2
    assert fresh["exit_code_by_key"] == {"refimpl.oracle.ops.x_center__mutmut_1": 1, "refimpl.oracle.ops.x_center__mutmut_2": 0,
                                         "refimpl.oracle.ops.x_center__mutmut_3": None, f"refimpl.oracle.ops.{meth}__mutmut_12": None}
    # a result already there is never overwritten; a function the record lacks is left alone
    done = _meta({"refimpl.oracle.ops.x_center__mutmut_1": 33, "refimpl.oracle.ops.x_new__mutmut_1": None},
                 {"x_center": "aaa", "x_new": "ccc"})
    assert R.merge(done, record["refimpl/oracle/ops.py"]) == 0 and done["exit_code_by_key"]["refimpl.oracle.ops.x_center__mutmut_1"] == 33


def test_mechanical_restore_reads_the_record_into_mutmut_metas(tmp_path):
    import json

    from verification.mutation import mutation_record as R

    (tmp_path / "mutants" / "refimpl" / "oracle").mkdir(parents=True)
    (tmp_path / "verification" / "mutation").mkdir(parents=True)
    meta_path = tmp_path / "mutants" / "refimpl" / "oracle" / "ops.py.meta"
    meta_path.write_text(json.dumps(_meta({"refimpl.oracle.ops.x_center__mutmut_1": None}, {"x_center": "aaa"})))
    assert R.restore(tmp_path, ["refimpl/oracle/ops.py"]) == 0  # no record yet
    (tmp_path / R.RECORD).write_text(json.dumps({"modules": {"refimpl/oracle/ops.py": {
        "x_center": {"hash": "aaa", "exit_codes": {"1": 1}}}}}))
    assert R.restore(tmp_path, ["refimpl/oracle/ops.py"], only_if_missing=True) == 0  # metas exist: a run may own them
    assert R.restore(tmp_path, ["refimpl/oracle/ops.py"]) == 1
    assert json.loads(meta_path.read_text())["exit_code_by_key"] == {"refimpl.oracle.ops.x_center__mutmut_1": 1}
    assert set(json.loads(meta_path.read_text())) == set(_meta({}, {}))  # mutmut's own keys, nothing added
