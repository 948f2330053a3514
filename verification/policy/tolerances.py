"""The tolerance policy: every tolerance of the project, in one table, each with its reason.

Tolerances are passed to the code under test, never chosen by it. Values are relative to the scale
named in ``reason`` (e.g. max |logit| of the reference).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    value: float
    reason: str


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("forward_parity", "float32"): Tolerance(
        1e-4, "max |oracle - transformers| / max |logit|: float32 GEMMs in different summation orders (issue 2)"),
    ("forward_parity", "float64"): Tolerance(
        1e-12, "same in float64 with transformers' float32 q/k cast neutralised; a correct port reaches ~1e-15"),
    ("residual_parity", "float32"): Tolerance(
        1e-4, "max |oracle - transformers| / max |residual| per block input, float32 rounding"),
    ("residual_parity", "float64"): Tolerance(
        1e-12, "same in float64; rounding alone gives ~1e-15"),
    ("central_difference", "float64"): Tolerance(
        1e-7, "|J - central difference| / max|J|, h = 1e-6: truncation O(h^2) plus rounding O(eps / h) ~ 1e-10"),
    ("complex_step", "float64"): Tolerance(
        1e-13, "|J - complex step| / max|J|, h = 1e-30: no subtraction, only rounding of the two formulas"),
    ("identity", "float64"): Tolerance(
        1e-12, "two float64 evaluations of one quantity by different summation orders (relative to its scale)"),
    ("identity", "float32"): Tolerance(
        1e-5, "the same in float32 (eps 1.2e-7 times accumulation over hundreds of terms)"),
    ("pipeline", "float64"): Tolerance(
        1e-10, "a multi-step float64 computation against a reference by other algorithms (lstsq vs Polynomial.fit, "
               "brentq vs bisection, analytic vs complex-step gradient): ~1e-14 measured, room for conditioning"),
    ("conformance", "float32"): Tolerance(
        1e-4, "another float32 implementation: |got - oracle| / |that head's oracle feature| (Euclidean), summation over d"),
    ("conformance", "float64"): Tolerance(
        1e-10, "another float64 implementation: rounding only, with room for different GEMM blocking"),
    ("path_autograd", "float64"): Tolerance(
        1e-10, "torch autograd along a frozen path vs the propagated exact-LN feature (issue 6 target)"),
    ("frozen_path", "float64"): Tolerance(
        1e-12, "propagated feature vs the model run along the path by complex step (no subtraction): rounding only"),
    ("monte_carlo", "standard_errors"): Tolerance(
        4.0, "a Monte Carlo mean may sit this many standard errors from its expectation (p ~ 6e-5 per check)"),
    ("optimiser", "float64"): Tolerance(
        1e-6, "scipy SLSQP constrained extremum vs the closed form: solver tolerance, not rounding"),
    ("clearly_nonzero", "share"): Tolerance(
        0.01, "an effect counts as clearly nonzero above 1% of the task's clean-vs-corrupted logit difference"),
    ("root_finding", "float64"): Tolerance(
        1e-9, "|f(root)| relative to |f(x-)| + |f(x+)|: brentq stops at xtol 1e-14 in t, times |f'|, plus rounding"),
    ("singular_vectors", "float64"): Tolerance(
        1e-8, "singular vectors are accurate to eps / (gap between singular values), not to eps"),
    ("printed_digits", "paper"): Tolerance(
        5e-5, "a number the paper prints with 4 decimals is known to half a unit in the last place"),
    ("peer_activation", "float32"): Tolerance(
        1e-4, "an outside implementation's activation vs the oracle's, max |diff| / max |oracle value|: float32 GEMM order"),
    ("peer_activation", "float64"): Tolerance(
        1e-12, "the same in float64 (transformers' float32 q/k cast neutralised): rounding only, ~1e-15 seen"),
    ("peer_path_patching", "float32"): Tolerance(
        1e-4, "per-head patching effect vs the oracle's, max |diff| / max |n . clean logit|: float32 forward passes"),
    ("peer_path_patching", "float64"): Tolerance(
        1e-11, "the same in float64: a difference of two forward passes, rounding of logits ~1e-15 relative"),
    ("dtype_decode", "float16"): Tolerance(
        0.0, "F16 -> float32/64 widening is exact"),
    ("dtype_decode", "bfloat16"): Tolerance(
        0.0, "BF16 -> float32 by a 16-bit shift is exact"),
}


def tolerance(check: str, dtype: str) -> float:
    """The tolerance value for ``check`` in ``dtype``; a KeyError names the missing entry."""
    try:
        return TOLERANCES[(check, str(dtype))].value
    except KeyError:
        raise KeyError(f"no tolerance for check {check!r} in {dtype!r}; add it to verification/policy/tolerances.py") from None


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 when both are 0)."""
    import numpy as np

    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    return diff / scale if scale else diff
