"""The verification report: every check of the suite, run in order, as a list of Check records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import refimpl
from verification.policy.checks import Check, skipped
from refimpl.oracle.tokenizer import uses_gpt2_vocabulary
from verification.model_sections import errata_checks, experiment_checks, propagation_checks, torch_checks
from verification.sections import (PAPER_PROMPT, block_checks, derivative_checks, theorem1_checks,
                                   theorem1_model_measurements, theorem2_checks, tolerance_policy_checks)

PROFILES = {  # Monte Carlo sample sizes and property-test effort per profile
    "default": {"theorem1_samples": 20000, "theorem2_samples": 40000, "dims": (8, 16, 64, 768, 2048)},
    "long": {"theorem1_samples": 400000, "theorem2_samples": 1000000, "dims": (8, 16, 64, 768, 2048)},
}
def run(model_source=None, profile: str = "default", include_torch: bool = True, seed: int = 0,
        progress=None) -> list[Check]:
    """Every entry of the report, in order. ``progress(message)`` is called before each section."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    say = progress or (lambda message: None)
    settings = PROFILES[profile]
    model = refimpl.load(model_source, dtype="float64")
    ids = model.to_ids(PAPER_PROMPT) if uses_gpt2_vocabulary(model) else np.arange(8) % model.config.d_vocab
    sections = [("tolerance policy", tolerance_policy_checks), ("theorem 1", lambda: theorem1_checks(settings, seed)),
                ("theorem 1 on the model", lambda: theorem1_model_measurements(model, ids)),
                ("theorem 2", lambda: theorem2_checks(settings, seed)), ("derivatives", lambda: derivative_checks(seed)),
                ("blocks", lambda: block_checks(model, ids, seed)),
                ("propagation", lambda: propagation_checks(model, ids)),
                ("errata", lambda: errata_checks(model, ids, seed)), ("experiments", lambda: experiment_checks(model))]
    if include_torch:
        sections.append(("torch backend", lambda: torch_checks(model, ids)))
    checks: list[Check] = []
    for name, section in sections:
        say(name)
        checks += section()
    if not include_torch:
        checks.append(skipped("torch backend", "not run (--no-torch)", "torch"))
    return checks


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_table(checks: list[Check]) -> str:
    """One line per entry, every column as wide as its widest cell (nothing is cut); the result column says
    PASS / FAIL for checks, "measurement" or "skipped" otherwise; failures and skips show their detail."""
    rows = [(c.name, _cell(c.measured), _cell(c.reference), _cell(c.tolerance), "" if c.seed is None else str(c.seed),
             ("PASS" if c.passed else "FAIL") if c.kind == "check" else c.kind) for c in checks]
    header = ("check", "measured", "reference", "tolerance", "seed", "result")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(6)]

    def line(r):
        return (f"{r[0]:{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  "
                f"{r[4]:>{widths[4]}}  {r[5]}")

    lines = [line(header)]
    for c, r in zip(checks, rows):
        lines.append(line(r))
        if (c.failed or c.kind == "skipped") and c.detail:
            lines += ["      " + text for text in c.detail.splitlines()]
    return "\n".join(lines)


def counts(checks: list[Check]) -> dict:
    """Numbers of passed and failed checks, measurements and skipped entries."""
    return {"checks_passed": int(sum(bool(c.kind == "check" and c.passed) for c in checks)),
            "checks_failed": int(sum(bool(c.failed) for c in checks)),
            "measurements": int(sum(c.kind == "measurement" for c in checks)),
            "skipped": int(sum(c.kind == "skipped" for c in checks))}


def format_summary(checks: list[Check]) -> str:
    """'N checks passed, M failed; K measurements; S skipped (reasons)'."""
    n = counts(checks)
    reasons = "; ".join(f"{c.name}: {c.detail}" for c in checks if c.kind == "skipped")
    return (f"{n['checks_passed']} checks passed, {n['checks_failed']} failed; {n['measurements']} measurements; "
            f"{n['skipped']} skipped" + (f" ({reasons})" if reasons else ""))


def write_json(checks: list[Check], path: str | Path, **meta) -> None:
    Path(path).write_text(json.dumps({**meta, "checks": [c.as_dict() for c in checks], **counts(checks),
                                      "summary": format_summary(checks),
                                      "passed": not any(c.failed for c in checks)}, indent=1) + "\n")
