"""Exact identities between raw GPT-Neo quantities and the ones a weight-processing step produces.

Every function maps a RAW quantity (computed by the oracle from the checkpoint's own weights) to what
the processed peer must then hold, and its docstring states the equation. Row convention throughout
(``x @ W``), TransformerLens shapes: W_V [H, d, dh], W_O [H, dh, d], W_U [d, V]. ``P = I - 11^T / d`` is
the centring projector of the residual stream (d = d_model).

Why these steps change nothing a model computes: every LayerNorm first subtracts the mean of its
input, so anything written along the all-ones direction 1 of the residual stream is invisible to all
later LayerNorms (hence to the logits up to the unembedding), and a LayerNorm's output before gain and
bias, x^ = P x / sigma, has mean zero, so a matrix that reads it may be centred over its input axis.
Softmax over the vocabulary ignores a constant added to every logit.

The steps TransformerLens 4.3 applies (``ProcessWeights.process_weights``, in this order):
``fold_ln`` (gains into the next matrices, biases into new biases, reading matrices centred over
d_model, ln weights set to 1 and biases to 0), ``center_writing_weights``, ``center_unembed``,
``fold_value_biases``; ``refactor_factored_attn_matrices`` only on request (not checked here).
"""

from __future__ import annotations

import numpy as np

STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def centre(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """P x along ``axis``: x - mean(x) (the projector every LayerNorm applies first)."""
    return x - x.mean(axis=axis, keepdims=True)


# ------------------------------------------------------------------ weights
def fold_gain_into_reader(W: np.ndarray, gamma: np.ndarray, axis: int) -> np.ndarray:
    """fold_ln, gain part: W' = diag(gamma) W along the d_model input ``axis``; then LN(x) @ W = x^ @ W' + b @ W.

    Used for W_Q/W_K/W_V (axis -2 of [H, d, dh]), W_in (axis 0), W_U (axis 0, gamma = ln_final's gain)."""
    shape = [1] * W.ndim
    shape[axis] = -1
    return W * gamma.reshape(shape)


def centre_reader(W: np.ndarray, axis: int) -> np.ndarray:
    """fold_ln with centring: W' = P W over the d_model input axis. Exact because x^ = P x^ (mean zero):
    x^ @ (P W) = (P x^) @ W = x^ @ W."""
    return centre(W, axis=axis)


def fold_bias_into_reader(ln_b: np.ndarray, W: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """fold_ln, bias part: b' = b + ln_b @ W (per head for [H, d, dh]: b'[h] = b[h] + ln_b @ W[h])."""
    out = np.einsum("d,...dk->...k", ln_b, W)
    return out if b is None else out + b


def centre_writer(W: np.ndarray) -> np.ndarray:
    """center_writing_weights: W' = W P, i.e. each row minus its mean over the output d_model axis (-1).
    For W_E, W_pos, W_O[h], W_out and the biases b_O, b_out. A head then writes x @ W_V W_O P: its old
    output minus a multiple of 1, which every later LayerNorm removes."""
    return centre(W, axis=-1)


def centre_unembed(W_U: np.ndarray) -> np.ndarray:
    """center_unembed: W_U' = W_U - mean over the vocabulary (axis -1 of [d, V]); every logit of a
    position moves by the same amount, so n . logits' = n_c . logits with n_c = n - mean(n)."""
    return centre(W_U, axis=-1)


def fold_value_biases(b_O: np.ndarray, b_V: np.ndarray, W_O: np.ndarray) -> np.ndarray:
    """fold_value_biases: b_O' = b_O + sum_h b_V[h] @ W_O[h] and b_V' = 0. Exact because a head's output
    is sum_j A_ij (v_j + b_V) @ W_O = sum_j A_ij v_j @ W_O + b_V @ W_O (attention rows sum to 1)."""
    return b_O + np.einsum("hk,hkd->d", b_V, W_O)


def processed_weights(raw, n_layers: int) -> dict[str, np.ndarray]:
    """Every parameter TransformerLens 4.3's default processing produces, computed from the oracle's raw
    weights (TransformerLens names) by the identities above."""
    out = {"embed.W_E": centre_writer(raw["embed.W_E"]), "pos_embed.W_pos": centre_writer(raw["pos_embed.W_pos"])}
    for l in range(n_layers):
        p = f"blocks.{l}."
        g1, b1, g2, b2 = raw[p + "ln1.w"], raw[p + "ln1.b"], raw[p + "ln2.w"], raw[p + "ln2.b"]
        for m in "QKV":
            W = raw[p + f"attn.W_{m}"]
            out[p + f"attn.W_{m}"] = centre_reader(fold_gain_into_reader(W, g1, axis=-2), axis=-2)
            out[p + f"attn.b_{m}"] = fold_bias_into_reader(b1, W)
        W_O = centre_writer(raw[p + "attn.W_O"])
        out[p + "attn.W_O"] = W_O
        out[p + "attn.b_O"] = centre(fold_value_biases(centre_writer(raw[p + "attn.b_O"]), out[p + "attn.b_V"], W_O))
        out[p + "attn.b_V"] = np.zeros_like(out[p + "attn.b_V"])
        out[p + "mlp.W_in"] = centre_reader(fold_gain_into_reader(raw[p + "mlp.W_in"], g2, axis=0), axis=0)
        out[p + "mlp.b_in"] = raw[p + "mlp.b_in"] + b2 @ raw[p + "mlp.W_in"]
        out[p + "mlp.W_out"] = centre_writer(raw[p + "mlp.W_out"])
        out[p + "mlp.b_out"] = centre_writer(raw[p + "mlp.b_out"])
        for ln in ("ln1", "ln2"):
            out[p + f"{ln}.w"] = np.ones_like(g1)
            out[p + f"{ln}.b"] = np.zeros_like(b1)
    W_U = raw["unembed.W_U"]
    out["unembed.W_U"] = centre_unembed(centre_reader(fold_gain_into_reader(W_U, raw["ln_final.w"], axis=0), axis=0))
    out["unembed.b_U"] = centre(raw["ln_final.b"] @ W_U)
    out["ln_final.w"] = np.ones_like(raw["ln_final.w"])
    out["ln_final.b"] = np.zeros_like(raw["ln_final.b"])
    return out


# ------------------------------------------------------------------ observables, features, path patching
def centred_observable(n: np.ndarray) -> np.ndarray:
    """center_unembed on an observable: W_U' n = W_U n_c with n_c = n - mean(n) 1 (equal to n when the
    observable's weights sum to zero, e.g. " she" - " he")."""
    return n - n.mean()


def processed_feature_residual(u_raw: np.ndarray, gamma_final: np.ndarray) -> np.ndarray:
    """fold_ln on ln_final, then centring W_U over d_model: W_U' n = P (gamma_f * W_U n_c), so the residual
    image of the observable is u' = P (gamma_f * u) with u = W_U n_c (the oracle's raw ``residual``)."""
    return centre(gamma_final * u_raw)


def processed_head_features(raw, n_layers: int, u_raw: np.ndarray) -> np.ndarray:
    """The per-head features a processed peer computes from its own weights, from raw quantities:

        y'[l, h] = W_V'[h] W_O'[h] u' = P ( gamma_1,l * ( W_V[h] @ ( W_O[h] @ P u' ) ) ),
        u' = P (gamma_f * W_U n_c)

    (W_V' = P diag(gamma_1) W_V by fold_ln with centring, W_O' = W_O P by center_writing_weights; P u' = u').
    The oracle's raw head feature y = W_V W_O u is therefore scaled elementwise by ln_1's gain and
    centred, after the observable's image is scaled by ln_final's gain and centred."""
    u = processed_feature_residual(u_raw, raw["ln_final.w"])
    rows = []
    for l in range(n_layers):
        W_V, W_O = raw[f"blocks.{l}.attn.W_V"], raw[f"blocks.{l}.attn.W_O"]
        y = np.einsum("hdk,hk->hd", W_V, np.einsum("hke,e->hk", W_O, centre(u)))
        rows.append(centre(raw[f"blocks.{l}.ln1.w"] * y))
    return np.stack(rows)


def processed_path_patching(raw_effects_of_centred_observable: np.ndarray) -> np.ndarray:
    """Direct-path patching is unchanged by the processing, for the centred observable:

        effect'(n) = effect(n_c).

    fold_ln rewrites ln_final as x^ @ (diag(gamma_f) W_U) + b_f @ W_U (the same logits); centring writing
    weights adds multiples of 1 to the final residual and to the patched difference, which ln_final
    removes; folding value biases moves b_V @ W_O (the same on clean and corrupted runs) out of the
    per-head output; center_unembed shifts every logit by the same amount, seen by n as n_c."""
    return raw_effects_of_centred_observable


# ------------------------------------------------------------------ activations
def centred_residual(x: np.ndarray) -> np.ndarray:
    """center_writing_weights on the residual stream: everything written to it is centred, so each
    residual activation (hook_embed, hook_pos_embed, hook_resid_*, hook_attn_out, hook_mlp_out) becomes
    x' = P x (LayerNorm statistics, hence hook_scale and everything after each LayerNorm, are unchanged)."""
    return centre(x)


def value_without_bias(v: np.ndarray, ln1_b: np.ndarray, W_V: np.ndarray) -> np.ndarray:
    """fold_ln then fold_value_biases on hook_v / hook_z: the folded value bias b_V = ln1_b @ W_V[h] is
    moved into b_O, so v'[..., h, :] = v[..., h, :] - ln1_b @ W_V[h] (and z likewise, attention rows sum to 1)."""
    return v - np.einsum("d,hdk->hk", ln1_b, W_V)


def centred_logits(logits: np.ndarray) -> np.ndarray:
    """center_unembed on the logits: logits' = logits - mean over the vocabulary."""
    return centre(logits)


def pre_gain_normalized(normalized: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TransformerLens 4.3's bridge records ``ln*.hook_normalized`` BEFORE gain and bias (x^ = P x / sigma);
    the oracle (and HookedTransformer 3.x's LayerNorm) record it after: ours = x^ * w + b, so
    x^ = (ours - b) / w. With folded LayerNorms (w = 1, b = 0) the two coincide."""
    return (normalized - b) / w
