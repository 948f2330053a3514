"""GPT-2: its ``config.json`` fields and the one audited conversion of its checkpoint to TransformerLens names.

GPT-2 stores every projection as a Conv1D ``[in, out]`` (out = x @ W + b: already the oracle's row
convention, so nothing is transposed but the optional ``lm_head``). ``c_attn`` fuses the three input
projections: columns ``0:d`` are the queries, ``d:2d`` the keys, ``2d:3d`` the values, and within each
block head h owns columns ``h*dh:(h+1)*dh``; ``c_proj`` rows ``h*dh:(h+1)*dh`` belong to head h. Every
tensor below is a view of the stored one (no copy). No LayerNorm folding, no centring, no value-bias
folding: the weights are the checkpoint's.

| TransformerLens name         | checkpoint key (``transformer.`` prefix optional) | conversion                         |
|------------------------------|---------------------------------------------------|------------------------------------|
| embed.W_E [V, d]             | wte.weight [V, d]                                 | as stored                          |
| pos_embed.W_pos [n_ctx, d]   | wpe.weight [n_ctx, d]                             | as stored                          |
| blocks.l.ln1.w / .b [d]      | h.l.ln_1.weight / .bias                           | as stored                          |
| blocks.l.attn.W_Q [H, d, dh] | h.l.attn.c_attn.weight [d, 3d], columns 0:d       | reshape [d, H, dh], heads first    |
| blocks.l.attn.W_K, W_V       | the same, columns d:2d and 2d:3d                  | as W_Q                             |
| blocks.l.attn.b_Q [H, dh]    | h.l.attn.c_attn.bias [3d], entries 0:d            | reshape [H, dh]                    |
| blocks.l.attn.b_K, b_V       | the same, entries d:2d and 2d:3d                  | as b_Q                             |
| blocks.l.attn.W_O [H, dh, d] | h.l.attn.c_proj.weight [d, d]                     | reshape [H, dh, d]                 |
| blocks.l.attn.b_O [d]        | h.l.attn.c_proj.bias                              | as stored                          |
| blocks.l.ln2.w / .b [d]      | h.l.ln_2.weight / .bias                           | as stored                          |
| blocks.l.mlp.W_in [d, m]     | h.l.mlp.c_fc.weight [d, m]                        | as stored                          |
| blocks.l.mlp.b_in [m]        | h.l.mlp.c_fc.bias                                 | as stored                          |
| blocks.l.mlp.W_out [m, d]    | h.l.mlp.c_proj.weight [m, d]                      | as stored                          |
| blocks.l.mlp.b_out [d]       | h.l.mlp.c_proj.bias                               | as stored                          |
| ln_final.w / .b [d]          | ln_f.weight / .bias                               | as stored                          |
| unembed.W_U [d, V]           | wte.weight (tied, the default); lm_head.weight [V, d] when untied | transpose          |

Ignored (buffers, not parameters): ``h.l.attn.bias`` (the causal mask) and ``h.l.attn.masked_bias``.
Attention: scores q . k / sqrt(d_head) (``scale_attn_weights``, default true), further divided by
layer + 1 under ``scale_attn_by_inverse_layer_idx``; every layer global. ``reorder_and_upcast_attn`` only
changes where transformers rounds (it computes the same scores in float32): the oracle computes them
exactly. Cross-attention (``add_cross_attention``) is refused.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from refimpl.oracle.config import SUPPORTED_ACTIVATIONS, Config, _field, _short
from refimpl.errors import CheckpointError, ConfigError
from refimpl.families.base import Family
from refimpl.families.checkpoint_keys import check_keys_and_shapes

IGNORED_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def _flag(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"config field {key!r} must be true or false, got {_short(value)}")
    return value


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Parse the fields of a Hugging Face GPT-2 config dict; anything unsupported is a ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    if raw.get("model_type") != "gpt2":
        raise ConfigError(f"model_type is {_short(raw.get('model_type'))}; this parser reads only 'gpt2'")
    act = raw.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"activation_function {_short(act)} is not supported; supported: {list(SUPPORTED_ACTIVATIONS)}")
    if _flag(raw, "add_cross_attention", False):
        raise ConfigError("add_cross_attention is true: GPT-2 with cross-attention (an encoder-decoder) is not supported")
    _flag(raw, "reorder_and_upcast_attn", False)  # precision only in transformers; the oracle is exact either way
    d_model = _field(raw, "n_embd", int)
    n_layers = _field(raw, "n_layer", int)
    n_heads = _field(raw, "n_head", int)
    if d_model % n_heads:
        raise ConfigError(f"n_embd {d_model} is not divisible by n_head {n_heads}")
    n_ctx = _field(raw, "n_positions", int)
    d_head = d_model // n_heads
    base = d_head ** 0.5 if _flag(raw, "scale_attn_weights", True) else 1.0
    by_layer = _flag(raw, "scale_attn_by_inverse_layer_idx", False)
    divisors = tuple(base * (layer + 1) if by_layer else base for layer in range(n_layers))
    return Config(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_mlp=4 * d_model if raw.get("n_inner") is None else _field(raw, "n_inner", int),
        d_vocab=_field(raw, "vocab_size", int),
        n_ctx=n_ctx,
        window_size=n_ctx,  # unused: every layer is global
        eps=_field(raw, "layer_norm_epsilon", float, 1e-5),
        attention_kinds=("global",) * n_layers,
        act_fn=act,
        family="gpt2",
        attn_divisors=None if all(v == 1.0 for v in divisors) else divisors,
        tied=_flag(raw, "tie_word_embeddings", True),
    )


def checkpoint_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every parameter key a GPT-2 checkpoint must hold (prefix stripped), with its stored shape."""
    d, m = cfg.d_model, cfg.d_mlp
    shapes = {"wte.weight": (cfg.d_vocab, d), "wpe.weight": (cfg.n_ctx, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for layer in range(cfg.n_layers):
        p = f"h.{layer}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, m), p + "mlp.c_fc.bias": (m,),
            p + "mlp.c_proj.weight": (m, d), p + "mlp.c_proj.bias": (d,),
        })
    if not cfg.tied:
        shapes["lm_head.weight"] = (cfg.d_vocab, d)
    return shapes


def convert_checkpoint(stored: Mapping[str, tuple[int, ...]], read: Callable[[str], np.ndarray],
                       cfg: Config) -> dict[str, np.ndarray]:
    """Check every key and shape of a GPT-2 checkpoint and return its weights under TransformerLens names.

    ``stored`` maps each checkpoint key to its stored shape; ``read(key)`` returns that tensor in the
    compute dtype. A tied model (the default) unembeds with ``wte``; an ``lm_head.weight`` stored beside it
    must then equal ``wte.weight`` (transformers would silently replace it).
    """
    optional = {"lm_head.weight": (cfg.d_vocab, cfg.d_model)} if cfg.tied else {}
    by_name = check_keys_and_shapes(stored, checkpoint_shapes(cfg), optional, IGNORED_BUFFER, cfg, "GPT-2")

    def get(name: str) -> np.ndarray:
        return read(by_name[name])

    H, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model

    def per_head_in(w: np.ndarray, part: int) -> np.ndarray:  # [d, 3d] -> [H, d, dh]
        return w[:, part * d:(part + 1) * d].reshape(d, H, dh).transpose(1, 0, 2)

    def per_head_bias(b: np.ndarray, part: int) -> np.ndarray:  # [3d] -> [H, dh]
        return b[part * d:(part + 1) * d].reshape(H, dh)

    weights = {"embed.W_E": get("wte.weight"), "pos_embed.W_pos": get("wpe.weight")}
    for layer in range(cfg.n_layers):
        p, t = f"h.{layer}.", f"blocks.{layer}."
        qkv, qkv_bias = get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias")
        weights.update({
            t + "ln1.w": get(p + "ln_1.weight"), t + "ln1.b": get(p + "ln_1.bias"),
            t + "attn.W_Q": per_head_in(qkv, 0), t + "attn.W_K": per_head_in(qkv, 1), t + "attn.W_V": per_head_in(qkv, 2),
            t + "attn.b_Q": per_head_bias(qkv_bias, 0), t + "attn.b_K": per_head_bias(qkv_bias, 1),
            t + "attn.b_V": per_head_bias(qkv_bias, 2),
            t + "attn.W_O": get(p + "attn.c_proj.weight").reshape(H, dh, d), t + "attn.b_O": get(p + "attn.c_proj.bias"),
            t + "ln2.w": get(p + "ln_2.weight"), t + "ln2.b": get(p + "ln_2.bias"),
            t + "mlp.W_in": get(p + "mlp.c_fc.weight"), t + "mlp.b_in": get(p + "mlp.c_fc.bias"),
            t + "mlp.W_out": get(p + "mlp.c_proj.weight"), t + "mlp.b_out": get(p + "mlp.c_proj.bias"),
        })
    weights["ln_final.w"], weights["ln_final.b"] = get("ln_f.weight"), get("ln_f.bias")
    if cfg.tied and "lm_head.weight" in by_name and not np.array_equal(get("lm_head.weight"), weights["embed.W_E"]):
        raise CheckpointError(f"{by_name['lm_head.weight']!r} differs from the token embedding, but the config ties "
                              "them (tie_word_embeddings is true): set it false to use the stored lm_head")
    weights["unembed.W_U"] = (weights["embed.W_E"] if cfg.tied else get("lm_head.weight")).T
    for value in weights.values():
        value.flags.writeable = False
    return weights


GPT2 = Family(name="gpt2", title="GPT-2", config_from_dict=config_from_dict, convert=convert_checkpoint,
              ignored_buffer=IGNORED_BUFFER)
