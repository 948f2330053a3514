"""Derivative checkers, three ways (the gradcheck / check_grads recipe):

1. dense central differences at small sizes,
2. complex-step derivatives (exact to rounding for code without abs/max on the path),
3. the adjoint identity <J u, v> = <u, J^T v> for random directions at any size, with a dense
   re-check that prints a readable diff when the fast check fails.

Every checker takes its tolerance as an argument (from ``verification.policy.tolerances``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from verification.policy.checks import Check

Array = np.ndarray


def central_difference_jacobian(f: Callable[[Array], Array], x: Array, h: float = 1e-6) -> Array:
    """J[i, j] ~ (f(x + h e_j) - f(x - h e_j))_i / 2h for a vector x [d]."""
    columns = []
    for j in range(x.size):
        e = np.zeros_like(x, dtype=np.float64)
        e.flat[j] = h
        columns.append(((f(x + e) - f(x - e)) / (2 * h)).ravel())
    return np.stack(columns, axis=1)


def complex_step_jacobian(f: Callable[[Array], Array], x: Array, h: float = 1e-30) -> Array:
    """J[i, j] = Im f(x + i h e_j)_i / h."""
    columns = []
    for j in range(x.size):
        e = np.zeros(x.shape, dtype=complex)
        e.flat[j] = 1j * h
        columns.append((np.asarray(f(x + e)).imag / h).ravel())
    return np.stack(columns, axis=1)


def _rel(a: Array, b: Array) -> float:
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / (scale if scale else 1.0)


def readable_diff(actual: Array, expected: Array, limit: int = 5) -> str:
    """The largest entries of |actual - expected|, with their indices, as lines of text."""
    diff = np.abs(actual - expected)
    order = np.argsort(-diff, axis=None)[:limit]
    lines = [f"max |diff| {diff.max():.3e} at {np.unravel_index(order[0], diff.shape)}; largest entries:"]
    for flat in order:
        index = np.unravel_index(flat, diff.shape)
        lines.append(f"  J{list(index)}: got {actual[index]: .6e}, expected {expected[index]: .6e}, diff {diff[index]:.2e}")
    return "\n".join(lines)


def check_dense(name: str, f, jacobian: Array, x: Array, tolerance: float, method: str = "complex",
                seed: int | None = None) -> Check:
    """Compare a hand-written dense Jacobian with central differences or complex steps."""
    reference = complex_step_jacobian(f, x) if method == "complex" else central_difference_jacobian(f, x)
    error = _rel(jacobian, reference)
    detail = "" if error <= tolerance else readable_diff(jacobian, reference)
    return Check(f"{name}: dense vs {'complex step' if method == 'complex' else 'central differences'}",
                 error <= tolerance, error, 0.0, tolerance, seed, detail, group="derivatives")


def check_jvp(name: str, f, jvp: Callable[[Array], Array], x: Array, u: Array, tolerance: float,
              seed: int | None = None) -> Check:
    """J u from the hand-written JVP against the complex-step directional derivative Im f(x + i h u)/h."""
    h = 1e-30
    reference = np.asarray(f(x + 1j * h * u)).imag / h
    error = _rel(jvp(u), reference)
    return Check(f"{name}: JVP vs complex step", error <= tolerance, error, 0.0, tolerance, seed, group="derivatives")


def check_adjoint(name: str, jvp: Callable[[Array], Array], vjp: Callable[[Array], Array], u: Array, v: Array,
                  tolerance: float, seed: int | None = None, dense_limit: int = 64) -> Check:
    """<J u, v> = <u, J^T v>. On failure (and small size) rebuild J from the JVP and J^T from the VJP
    column by column and print where they disagree."""
    lhs = float((np.asarray(jvp(u)) * v).sum())
    rhs = float((u * np.asarray(vjp(v))).sum())
    scale = max(abs(lhs), abs(rhs), 1e-300)
    error = abs(lhs - rhs) / scale
    detail = ""
    if error > tolerance and u.size <= dense_limit and v.size <= dense_limit:
        J_from_jvp = np.stack([np.asarray(jvp(e)).ravel() for e in np.eye(u.size).reshape(u.size, *u.shape)], axis=1)
        JT_from_vjp = np.stack([np.asarray(vjp(e)).ravel() for e in np.eye(v.size).reshape(v.size, *v.shape)], axis=1)
        detail = "dense re-check, J from the JVP vs (J^T from the VJP)^T:\n" + readable_diff(J_from_jvp, JT_from_vjp.T)
    return Check(f"{name}: adjoint <Ju, v> = <u, J^T v>", error <= tolerance, error, 0.0, tolerance, seed, detail,
                 group="derivatives")
