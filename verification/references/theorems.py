"""The paper's two theorems and their lemmas as plain numerical checks (Section 4.3.3, 5.1, 5.2;
Appendices B and C). Each function returns numbers; ``verification.report`` turns them into checks.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, minimize

import refimpl
from refimpl.propagation import jacobians


# ------------------------------------------------------------------ Theorem 1
def theorem1_bound(d: int) -> float:
    """2 arccos(sqrt(1 - 1/(d - 1))): the paper's bound on E[theta(x; n)] for d >= 8."""
    return 2.0 * np.arccos(np.sqrt(1.0 - 1.0 / (d - 1)))


def angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between a and b over the last axis, in radians."""
    return np.arccos(np.clip(refimpl.cosine(a, b), -1.0, 1.0))


def theorem1_monte_carlo(d: int, samples: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of theta(x; n), the angle between n and grad_x n . (Px/|Px|), x, n ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    thetas = []
    for start in range(0, samples, 4096):
        m = min(4096, samples - start)
        x, n = rng.standard_normal((m, d)), rng.standard_normal((m, d))
        thetas.append(angle(n, jacobians.ideal_layer_norm_vjp(x, n)))
    theta = np.concatenate(thetas)
    return float(theta.mean()), float(theta.std(ddof=1) / np.sqrt(samples))


def theorem1_closed_form_gradient(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The paper's (1/|Px|) P (I - Px Px^T / |Px|^2) n, written densely."""
    d = x.shape[-1]
    P = np.eye(d) - 1.0 / d
    Px = P @ x
    return P @ (np.eye(d) - np.outer(Px, Px) / (Px @ Px)) @ n / np.linalg.norm(Px)


def _g(t: float) -> float:
    return float(np.arccos(np.sqrt(1.0 - t)))


def _g_prime(t: float) -> float:
    return 1.0 / (2.0 * np.sqrt(t) * np.sqrt(1.0 - t))


def theorem1_constant() -> float:
    """The least root c of g'(c) = (pi - 2 g(c)) / (2 (1 - c)), g(t) = arccos(sqrt(1 - t)) (Appendix B).

    The paper prints 0.155241; the root is 0.1554211... (a digit transposition, erratum).
    """
    h = lambda c: _g_prime(c) - (np.pi - 2.0 * _g(c)) / (2.0 * (1.0 - c))  # noqa: E731
    grid = np.linspace(1e-6, 0.5, 2001)  # the least root lies where g is convex, below 0.5
    values = [h(c) for c in grid]
    for a, b, va, vb in zip(grid, grid[1:], values, values[1:]):
        if va == 0 or va * vb < 0:
            return float(brentq(h, a, b, xtol=1e-16, rtol=4 * np.finfo(float).eps))
    raise RuntimeError("no root of the Theorem 1 constant's equation found on (0, 0.5]")


# ------------------------------------------------------------------ Theorem 2 and the lemmas
def sample_constrained_sphere(y1: np.ndarray, s: float, k: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform on {|x| = s, x . y1 = k}: the centre k y1/|y1|^2 plus radius sqrt(s^2 - k^2/|y1|^2)
    times a uniform unit vector of the hyperplane orthogonal to y1 (exact construction, no rejection)."""
    y1 = np.asarray(y1, dtype=np.float64)
    q = y1 @ y1
    radius = np.sqrt(max(0.0, s * s - k * k / q))
    z = rng.standard_normal((n, y1.size))
    z -= np.outer(z @ y1 / q, y1)
    norms = np.linalg.norm(z, axis=1)
    while np.any(norms < 1e-8):  # a draw (almost) parallel to y1: draw it again
        bad = norms < 1e-8
        z[bad] = rng.standard_normal((int(bad.sum()), y1.size))
        z[bad] -= np.outer(z[bad] @ y1 / q, y1)
        norms = np.linalg.norm(z, axis=1)
    return k * y1 / q + radius * z / norms[:, None]


def theorem2_monte_carlo(y1, y2, s: float, k: float, n: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of x . y2 over the constrained sphere."""
    x = sample_constrained_sphere(y1, s, k, n, np.random.default_rng(seed))
    values = x @ np.asarray(y2, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(n))


def theorem2_explicit_extremes(y1, y2, s: float, k: float) -> tuple[np.ndarray, np.ndarray]:
    """The minimiser and maximiser: centre -/+ radius times the unit part of y2 orthogonal to y1
    (any unit vector orthogonal to y1 when y2 is parallel to y1)."""
    y1, y2 = np.asarray(y1, float), np.asarray(y2, float)
    q = y1 @ y1
    centre = k * y1 / q
    radius = np.sqrt(max(0.0, s * s - k * k / q))
    e = y2 - (y2 @ y1) / q * y1
    e = e - (e @ y1) / q * y1  # a second Gram-Schmidt pass: y2 nearly parallel to y1 cancels in the first
    if np.linalg.norm(e) < 1e-12 * np.linalg.norm(y2):
        e = np.linalg.svd(y1[None, :])[2][-1]
    e = e / np.linalg.norm(e)
    return centre - radius * e, centre + radius * e


def theorem2_numerical_extremes(y1, y2, s: float, k: float, seed: int = 0) -> tuple[float, float]:
    """min and max of x . y2 on {|x| = s, x . y1 = k} by scipy's SLSQP from several starts."""
    y1, y2 = np.asarray(y1, float), np.asarray(y2, float)
    rng = np.random.default_rng(seed)
    constraints = [{"type": "eq", "fun": lambda x: x @ x - s * s, "jac": lambda x: 2 * x},
                   {"type": "eq", "fun": lambda x: x @ y1 - k, "jac": lambda x: y1}]
    results = []
    for sign in (1.0, -1.0):
        best = None
        for x0 in sample_constrained_sphere(y1, s, k, 4, rng):
            r = minimize(lambda x: sign * (x @ y2), x0, jac=lambda x: sign * y2, constraints=constraints,
                         method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
            if best is None or r.fun < best:
                best = r.fun
        results.append(sign * best)
    return min(results), max(results)


def lemma1_cosine(y: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(cos(y, A y), sqrt(1 - cos(y, v)^2)) with A the projection orthogonal to v: Lemma 1 says equal."""
    Ay = y - (y @ v) / (v @ v) * v
    cos_yv = (y @ v) / (np.linalg.norm(y) * np.linalg.norm(v))
    return float((y @ Ay) / (np.linalg.norm(y) * np.linalg.norm(Ay))), float(np.sqrt(1 - cos_yv**2))


def lemma2_monte_carlo(y: np.ndarray, centre: np.ndarray, radius: float, n: int, seed: int) -> tuple[float, float, float]:
    """(mean, standard error, |y - c|^2 + r^2) of |y - s|^2 for s uniform on a sphere (Lemma 2)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, y.size))
    points = centre + radius * z / np.linalg.norm(z, axis=1, keepdims=True)
    values = ((y - points) ** 2).sum(1)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(n)), float((y - centre) @ (y - centre) + radius**2)


def fact_monte_carlo(y: np.ndarray, n: int, seed: int) -> tuple[float, float, float]:
    """(mean, standard error, |y|^2) of (x . y)^2 for x ~ N(0, I) (Section 5.1's Fact)."""
    x = np.random.default_rng(seed).standard_normal((n, y.size))
    values = (x @ y) ** 2
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(n)), float(y @ y)


# ------------------------------------------------------------------ Theorem 1 on a real model
def layer_norm_turning(model, ids, observable, position: int = -1) -> list[dict]:
    """Per layer: mean angle between n (the observable's residual image) and the gradient of
    n . LN(x) with the model's own ln_1 gains, at the traced inputs x of ln_1 (and without gains)."""
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.config.n_layers)]
    _, trace = model.run_with_trace(np.atleast_2d(ids), names=names)
    n = observable.residual.astype(np.float64)
    rows = []
    for layer, name in enumerate(names):
        x = trace[name][:, position].astype(np.float64)
        w = model.weights[f"blocks.{layer}.ln1.w"].astype(np.float64)
        with_gain = angle(n, jacobians.layer_norm_vjp(x, w, model.config.eps, np.broadcast_to(n, x.shape)))
        ideal = angle(n, jacobians.ideal_layer_norm_vjp(x, np.broadcast_to(n, x.shape)))
        rows.append({"layer": layer, "angle_with_gain": float(with_gain.mean()), "angle_ideal": float(ideal.mean()),
                     "bound": theorem1_bound(model.config.d_model)})
    return rows
