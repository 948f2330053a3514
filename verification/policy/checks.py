"""One check's outcome, as the report prints it and writes it to JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = ("check", "measurement", "skipped")


@dataclass
class Check:
    """``passed`` is decided by comparing ``measured`` with ``reference`` under ``tolerance`` (given, never chosen).

    ``kind``: "check" (can fail; counted in passed/failed), "measurement" (a number shown next to its
    reference for the reader, never counted as a pass; ``passed`` only records that it could be computed)
    or "skipped" (not run; ``detail`` gives the reason).
    """

    name: str
    passed: bool
    measured: float | str
    reference: float | str
    tolerance: float | str
    seed: int | None = None
    detail: str = ""
    group: str = ""
    extra: dict = field(default_factory=dict)
    kind: str = "check"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def failed(self) -> bool:
        """A check that did not pass (measurements and skipped entries never fail)."""
        return bool(self.kind == "check" and not self.passed)

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("measured", "reference", "tolerance"):
            value = out[key]
            if hasattr(value, "item"):
                out[key] = value.item()
        out["passed"] = bool(out["passed"])
        return out


def measurement(name: str, measured, reference, detail: str = "", group: str = "", **info) -> Check:
    """A reported number with its reference (kind "measurement": never a pass or a failure)."""
    return Check(name, True, measured, reference, "measurement", detail=detail, group=group, kind="measurement",
                 **info)


def skipped(name: str, reason: str, group: str = "") -> Check:
    """An entry that was not run, with the reason (kind "skipped")."""
    return Check(name, True, "skipped", "", "", detail=reason, group=group, kind="skipped")


def relative_check(name: str, measured, reference, tolerance: float, **info) -> Check:
    """Passes when max|measured - reference| <= tolerance * max|reference| (absolute when reference is 0)."""
    import numpy as np

    measured_arr, reference_arr = np.asarray(measured, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    scale = float(np.max(np.abs(reference_arr))) if reference_arr.size else 0.0
    error = float(np.max(np.abs(measured_arr - reference_arr))) if reference_arr.size else 0.0
    relative = error / scale if scale else error
    if measured_arr.size == 1:  # a scalar: show both values
        shown_m, shown_r = float(measured_arr), float(reference_arr)
    else:  # an array: the measured value is the relative error, to be compared with 0
        shown_m, shown_r = relative, 0.0
    return Check(name, bool(relative <= tolerance), shown_m, shown_r, tolerance,
                 detail=info.pop("detail", f"max relative error {relative:.3e} over shape {list(reference_arr.shape)}"),
                 **info)
