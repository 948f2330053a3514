"""Where the paper's claims hold on a model (``scripts/organism_check.py``): the case study's experiments
(``case_study.compute``) judged by ``refimpl.case_study.verdicts``, the same rows as summary.md's "Claims at a glance"."""

from __future__ import annotations

from refimpl.case_study import pipeline as case_study

from refimpl.case_study import verdicts


def check(model, progress: bool = False) -> dict:
    """Every experiment of the case study and the verdicts (``result["claims"]``, a Table)."""
    return case_study.compute(model, case_study.Progress(quiet=not progress))


def report(result: dict) -> str:
    """The verdicts in plain text, then each claim's measurement and criterion."""
    lines = [f"Claims at a glance ({result['model']}):", verdicts.console(result["claims"]), ""]
    for row in result["claims"]:
        lines += [f"{row['claim']} ({row['section']}): {row['verdict'].upper()}",
                  f"  paper:     {row['paper']}", f"  measured:  {row['measured']}",
                  f"  criterion: {row['criterion']}", f"  why:       {row['why']}"]
    return "\n".join(lines)
