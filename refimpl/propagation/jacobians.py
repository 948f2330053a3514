"""Hand-written derivatives (no autograd) of LayerNorm, the idealised LayerNorm, gelu_new and the MLP.

Conventions: row vectors, inputs ``x [..., d]`` (leading axes broadcast). JVP = J u (tangent in input
space), VJP = J^T g (cotangent in output space), ``*_jacobian`` = the dense J with J[i, j] = dy_i/dx_j.
All formulas avoid ``abs``/``max``/conjugation so that complex inputs give complex-step derivatives.
"""

from __future__ import annotations

import numpy as np

from refimpl.oracle import ops


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear (non-conjugating) dot product over the last axis, keeping it.  [..., d] -> [..., 1]"""
    return (a * b).sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------ GPT-Neo LayerNorm
# y = w * c / s + b with c = P x and s = sqrt(c.c / d + eps). Then
#   dy = w * (P dx / s - c (c . dx) / (d s^3)),  i.e.  J = diag(w) (P / s - c c^T / (d s^3)).
def layer_norm_jvp(x: np.ndarray, w: np.ndarray, eps: float, u: np.ndarray) -> np.ndarray:
    """J u = w * (P u / s - c (c.u) / (d s^3)) of GPT-Neo's LayerNorm at x.  [..., d]"""
    c, d = ops.center(x), x.shape[-1]
    s = ops.ln_scale(c, eps)
    return w * (ops.center(u) / s - c * _dot(c, u) / (d * s**3))


def layer_norm_vjp(x: np.ndarray, w: np.ndarray, eps: float, g: np.ndarray) -> np.ndarray:
    """J^T g = P (w g) / s - c (c.(w g)) / (d s^3): the gradient of g . LayerNorm(x).  [..., d]"""
    c, d = ops.center(x), x.shape[-1]
    s = ops.ln_scale(c, eps)
    wg = w * g
    return ops.center(wg) / s - c * _dot(c, wg) / (d * s**3)


def layer_norm_jacobian(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Dense J[i, j] = w_i (P_ij / s - c_i c_j / (d s^3)) at a single x [d] -> [d, d]."""
    d = x.shape[-1]
    c = ops.center(x)
    s = ops.ln_scale(c, eps)[..., 0]
    P = np.eye(d) - 1.0 / d
    return w[:, None] * (P / s - np.outer(c, c) / (d * s**3))


# ------------------------------------------------------------------ idealised LayerNorm (paper 4.3.3)
# f(x) = P x / |P x|. With c = P x, r = sqrt(c.c), c_hat = c / r:  J = (P - c_hat c_hat^T) / r (symmetric),
# which equals the paper's (1/|Px|) P (I - Px Px^T / |Px|^2) because c_hat is orthogonal to the ones vector.
def ideal_layer_norm(x: np.ndarray) -> np.ndarray:
    """P x / |P x|.  [..., d]"""
    c = ops.center(x)
    return c / np.sqrt(_dot(c, c))


def ideal_layer_norm_jvp(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """J u = (P u - c_hat (c_hat . u)) / |P x|.  [..., d]"""
    c = ops.center(x)
    r = np.sqrt(_dot(c, c))
    c_hat = c / r
    return (ops.center(u) - c_hat * _dot(c_hat, u)) / r


def ideal_layer_norm_vjp(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """J^T g = J g (J is symmetric): the gradient of g . (P x / |P x|).  [..., d]"""
    return ideal_layer_norm_jvp(x, g)


def ideal_layer_norm_jacobian(x: np.ndarray) -> np.ndarray:
    """Dense (P - c_hat c_hat^T) / |P x| at a single x [d] -> [d, d]."""
    d = x.shape[-1]
    c = ops.center(x)
    r = np.sqrt((c * c).sum())
    c_hat = c / r
    return (np.eye(d) - 1.0 / d - np.outer(c_hat, c_hat)) / r


# ------------------------------------------------------------------ gelu_new and the MLP
GELU_A, GELU_B = ops.GELU_C, 0.044715


def gelu_new_derivative(x: np.ndarray) -> np.ndarray:
    """d/dx 0.5 x (1 + tanh(a (x + b x^3))) = 0.5 (1 + t) + 0.5 x (1 - t^2) a (1 + 3 b x^2), t = tanh(..)."""
    t = np.tanh(GELU_A * (x + GELU_B * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_A * (1.0 + 3.0 * GELU_B * x * x)


def _pair(activation) -> tuple:
    """(f, f') of an ``Activation`` (``model.activation``, see refimpl.families); None is gelu_new."""
    return (ops.gelu_new, gelu_new_derivative) if activation is None else (activation.f, activation.derivative)


def mlp(x: np.ndarray, W_in, b_in, W_out, b_out, activation=None) -> np.ndarray:
    """MLP(x) = f(x W_in + b_in) W_out + b_out, f = gelu_new by default (the branch only).  [..., d]"""
    f, _ = _pair(activation)
    return ops.linear(f(ops.linear(x, W_in, b_in)), W_out, b_out)


def mlp_jvp(x: np.ndarray, W_in, b_in, W_out, u: np.ndarray, activation=None) -> np.ndarray:
    """J u = ((u W_in) * f'(x W_in + b_in)) W_out.  [..., d]"""
    _, df = _pair(activation)
    pre = ops.linear(x, W_in, b_in)
    return ops.linear(ops.linear(u, W_in) * df(pre), W_out)


def mlp_vjp(x: np.ndarray, W_in, b_in, W_out, g: np.ndarray, activation=None) -> np.ndarray:
    """J^T g = ((g W_out^T) * f'(x W_in + b_in)) W_in^T: the gradient of g . MLP(x).  [..., d]"""
    f, df = _pair(activation)
    pre = ops.linear(x, W_in, b_in)
    return ops.linear(ops.linear(g, W_out.T) * df(pre), W_in.T)


def mlp_jacobian(x: np.ndarray, W_in, b_in, W_out, activation=None) -> np.ndarray:
    """Dense J[i, j] = dMLP_i/dx_j = (W_in diag(f'(pre)) W_out)[j, i] at a single x [d] -> [d, d]."""
    pre = x @ W_in + b_in
    return ((W_in * _pair(activation)[1](pre)) @ W_out).T


# ------------------------------------------------------------------ a whole block, attention frozen
# With the attention patterns A [H, T, T] held fixed, block(X) for one sequence X [T, d] is
#   mid = X + sum_h A_h (LN1(X) W_V[h] + b_V[h]) W_O[h] + b_O,   out = mid + MLP(LN2(mid)),
# and since every row of A_h sums to 1 the value bias adds the constant sum_h b_V[h] W_O[h] (GPT-2; GPT-Neo
# has no b_V).
def _block_weights(model, layer: int):
    W, p = model.weights, f"blocks.{layer}."
    return (W[p + "ln1.w"], W[p + "ln1.b"], W[p + "attn.W_V"], W[p + "attn.W_O"], W[p + "attn.b_O"],
            W[p + "ln2.w"], W[p + "ln2.b"], W[p + "mlp.W_in"], W[p + "mlp.b_in"], W[p + "mlp.W_out"],
            W[p + "mlp.b_out"])


def _frozen_attention(A: np.ndarray, x: np.ndarray, W_V: np.ndarray, W_O: np.ndarray) -> np.ndarray:
    """sum_h A_h (x W_V[h]) W_O[h].  [H, T, T], [T, d] -> [T, d]"""
    return ((A @ (x @ W_V)) @ W_O).sum(axis=0)  # [H, T, dh] -> [H, T, d] -> [T, d]


def _value_bias_out(model, layer: int):
    """sum_h b_V[h] W_O[h] [d], or 0.0 when the family has no value bias."""
    W, p = model.weights, f"blocks.{layer}.attn."
    return 0.0 if p + "b_V" not in W else np.einsum("hk,hkd->d", W[p + "b_V"], W[p + "W_O"])


def block_frozen_attention(model, layer: int, X: np.ndarray, A: np.ndarray) -> np.ndarray:
    """The block's output with attention patterns A frozen.  [T, d] -> [T, d]"""
    w1, b1, W_V, W_O, b_O, w2, b2, W_in, b_in, W_out, b_out = _block_weights(model, layer)
    eps = model.config.eps
    mid = X + _frozen_attention(A, ops.layer_norm(X, w1, b1, eps)[0], W_V, W_O) + b_O + _value_bias_out(model, layer)
    return mid + mlp(ops.layer_norm(mid, w2, b2, eps)[0], W_in, b_in, W_out, b_out, model.activation)


def block_frozen_attention_jvp(model, layer: int, X: np.ndarray, A: np.ndarray, U: np.ndarray) -> np.ndarray:
    """J U of ``block_frozen_attention`` at X.  [T, d] -> [T, d]"""
    w1, b1, W_V, W_O, b_O, w2, b2, W_in, b_in, W_out, b_out = _block_weights(model, layer)
    eps = model.config.eps
    mid = X + _frozen_attention(A, ops.layer_norm(X, w1, b1, eps)[0], W_V, W_O) + b_O + _value_bias_out(model, layer)
    d_mid = U + _frozen_attention(A, layer_norm_jvp(X, w1, eps, U), W_V, W_O)
    x2 = ops.layer_norm(mid, w2, b2, eps)[0]
    return d_mid + mlp_jvp(x2, W_in, b_in, W_out, layer_norm_jvp(mid, w2, eps, d_mid), model.activation)


def block_frozen_attention_vjp(model, layer: int, X: np.ndarray, A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """J^T G of ``block_frozen_attention`` at X.  [T, d] -> [T, d]"""
    w1, b1, W_V, W_O, b_O, w2, b2, W_in, b_in, W_out, b_out = _block_weights(model, layer)
    eps = model.config.eps
    mid = X + _frozen_attention(A, ops.layer_norm(X, w1, b1, eps)[0], W_V, W_O) + b_O + _value_bias_out(model, layer)
    x2 = ops.layer_norm(mid, w2, b2, eps)[0]
    g_mid = G + layer_norm_vjp(mid, w2, eps, mlp_vjp(x2, W_in, b_in, W_out, G, model.activation))
    g_ln1 = ((A.transpose(0, 2, 1) @ (g_mid @ W_O.transpose(0, 2, 1))) @ W_V.transpose(0, 2, 1)).sum(axis=0)
    # sum_h A_h^T (g W_O[h]^T) W_V[h]^T: [H, T, dh] -> [H, T, d] -> [T, d]
    return g_mid + layer_norm_vjp(X, w1, eps, g_ln1)
