"""Hand-written Jacobians against central differences, complex steps and their own adjoints."""

import numpy as np
import pytest

from refimpl.propagation import jacobians as J
from refimpl.oracle import ops
from verification.references.derivatives import central_difference_jacobian as central_jacobian
from verification.references.derivatives import complex_step_jacobian as complex_jacobian
from verification.policy.tolerances import relative_error, tolerance

CENTRAL, COMPLEX, SAME = (tolerance(c, "float64") for c in ("central_difference", "complex_step", "identity"))

EPS = 1e-5
rng = np.random.default_rng(0)


@pytest.fixture
def ln_params():
    d = 9
    return rng.normal(size=d) * 2 + 0.5, 1 + 0.3 * rng.normal(size=d), 0.2 * rng.normal(size=d)


def test_layer_norm_dense_vs_differences(ln_params):
    x, w, b = ln_params

    def f(v):
        return ops.layer_norm(v, w, b, EPS)[0]

    dense = J.layer_norm_jacobian(x, w, EPS)
    assert relative_error(dense, central_jacobian(f, x)) <= CENTRAL
    assert relative_error(dense, complex_jacobian(f, x)) <= COMPLEX
    u, g = rng.normal(size=9), rng.normal(size=9)
    assert relative_error(J.layer_norm_jvp(x, w, EPS, u), dense @ u) <= SAME
    assert relative_error(J.layer_norm_vjp(x, w, EPS, g), dense.T @ g) <= SAME


def test_ideal_layer_norm_vs_differences_and_paper_formula():
    x, n = rng.normal(size=11), rng.normal(size=11)
    dense = J.ideal_layer_norm_jacobian(x)
    assert relative_error(dense, central_jacobian(J.ideal_layer_norm, x)) <= CENTRAL
    assert relative_error(dense, complex_jacobian(J.ideal_layer_norm, x)) <= COMPLEX
    P = np.eye(11) - 1 / 11
    Px = P @ x
    paper = P @ (np.eye(11) - np.outer(Px, Px) / (Px @ Px)) @ n / np.linalg.norm(Px)
    assert relative_error(J.ideal_layer_norm_vjp(x, n), paper) <= SAME


def test_gelu_derivative():
    x = np.linspace(-6, 6, 101)
    assert relative_error(J.gelu_new_derivative(x), ops.gelu_new(x + 1j * 1e-30).imag / 1e-30) <= COMPLEX
    assert relative_error(J.gelu_new_derivative(x), (ops.gelu_new(x + 1e-6) - ops.gelu_new(x - 1e-6)) / 2e-6) <= CENTRAL


def test_mlp_jvp_vjp_dense():
    d, m = 6, 10
    W_in, b_in, W_out, b_out = rng.normal(size=(d, m)), rng.normal(size=m), rng.normal(size=(m, d)), rng.normal(size=d)
    x = rng.normal(size=d)

    def f(v):
        return J.mlp(v, W_in, b_in, W_out, b_out)

    dense = J.mlp_jacobian(x, W_in, b_in, W_out)
    assert relative_error(dense, central_jacobian(f, x)) <= CENTRAL
    assert relative_error(dense, complex_jacobian(f, x)) <= COMPLEX
    u, g = rng.normal(size=d), rng.normal(size=d)
    assert relative_error(J.mlp_jvp(x, W_in, b_in, W_out, u), dense @ u) <= SAME
    assert relative_error(J.mlp_vjp(x, W_in, b_in, W_out, g), dense.T @ g) <= SAME


def test_batched_layer_norm_adjoint(ln_params):
    _, w, _ = ln_params
    x, u, g = rng.normal(size=(3, 4, 9)), rng.normal(size=(3, 4, 9)), rng.normal(size=(3, 4, 9))
    lhs = (J.layer_norm_jvp(x, w, EPS, u) * g).sum()
    rhs = (u * J.layer_norm_vjp(x, w, EPS, g)).sum()
    assert abs(lhs - rhs) <= SAME * abs(lhs)


def test_the_mlp_functions_use_the_activation_they_are_given():
    """Every MLP function honours its ``activation`` (a family's, e.g. NeoX's exact gelu): with tanh in place of
    gelu_new the value, JVP, VJP and dense Jacobian are tanh's, checked against the formula and complex step."""
    from refimpl.families import Activation

    tanh = Activation("tanh", np.tanh, lambda x: 1.0 - np.tanh(x) ** 2)
    rng = np.random.default_rng(11)
    d, m = 6, 9
    W_in, b_in, W_out, b_out = rng.normal(size=(d, m)), rng.normal(size=m), rng.normal(size=(m, d)), rng.normal(size=d)
    x, u, g = rng.normal(size=d), rng.normal(size=d), rng.normal(size=d)
    value = J.mlp(x, W_in, b_in, W_out, b_out, tanh)
    assert relative_error(value, np.tanh(x @ W_in + b_in) @ W_out + b_out) <= SAME
    assert relative_error(value, J.mlp(x, W_in, b_in, W_out, b_out)) > 1e-3  # not gelu_new
    dense = complex_jacobian(lambda z: J.mlp(z, W_in, b_in, W_out, b_out, tanh), x)
    assert relative_error(J.mlp_jacobian(x, W_in, b_in, W_out, tanh), dense) <= tolerance("complex_step", "float64")
    assert relative_error(J.mlp_jvp(x, W_in, b_in, W_out, u, tanh), dense @ u) <= SAME
    assert relative_error(J.mlp_vjp(x, W_in, b_in, W_out, g, tanh), dense.T @ g) <= SAME
