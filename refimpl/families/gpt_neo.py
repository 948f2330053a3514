"""GPT-Neo: its ``config.json`` fields and the one audited conversion of its checkpoint to TransformerLens names.

Checkpoint ``nn.Linear`` weights are stored ``[out, in]`` (column convention, out = W x); the oracle uses
TransformerLens' row convention (out = x @ W). Every tensor below is either passed through or
transposed/reshaped as a *view* (no copy): head h of q/k/v_proj is rows h*dh:(h+1)*dh, head h of
out_proj is columns h*dh:(h+1)*dh. No LayerNorm folding, no centring: the weights are the checkpoint's.

| TransformerLens name        | checkpoint key (``transformer.`` prefix optional) | conversion                        |
|-----------------------------|---------------------------------------------------|-----------------------------------|
| embed.W_E [V, d]            | wte.weight [V, d]                                 | as stored                         |
| pos_embed.W_pos [n_ctx, d]  | wpe.weight [n_ctx, d]                             | as stored                         |
| blocks.l.ln1.w / .b [d]     | h.l.ln_1.weight / .bias                           | as stored                         |
| blocks.l.attn.W_Q [H, d, dh]| h.l.attn.attention.q_proj.weight [H*dh, d]        | reshape [H, dh, d], swap last two |
| blocks.l.attn.W_K, W_V      | k_proj.weight, v_proj.weight                      | same as W_Q                       |
| blocks.l.attn.W_O [H, dh, d]| h.l.attn.attention.out_proj.weight [d, H*dh]      | transpose, reshape [H, dh, d]     |
| blocks.l.attn.b_O [d]       | h.l.attn.attention.out_proj.bias                  | as stored                         |
| blocks.l.ln2.w / .b [d]     | h.l.ln_2.weight / .bias                           | as stored                         |
| blocks.l.mlp.W_in [d, m]    | h.l.mlp.c_fc.weight [m, d]                        | transpose                         |
| blocks.l.mlp.b_in [m]       | h.l.mlp.c_fc.bias                                 | as stored                         |
| blocks.l.mlp.W_out [m, d]   | h.l.mlp.c_proj.weight [d, m]                      | transpose                         |
| blocks.l.mlp.b_out [d]      | h.l.mlp.c_proj.bias                               | as stored                         |
| ln_final.w / .b [d]         | ln_f.weight / .bias                               | as stored                         |
| unembed.W_U [d, V]          | lm_head.weight [V, d], else wte.weight (tied)     | transpose                         |

Ignored (buffers, not parameters): ``h.l.attn.attention.bias`` and ``h.l.attn.attention.masked_bias``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from refimpl.errors import ConfigError
from refimpl.families.base import Family
from refimpl.families.checkpoint_keys import check_keys_and_shapes
from refimpl.oracle.config import LIMITS, SUPPORTED_ACTIVATIONS, Config, _field, _short

ATTENTION_KINDS = ("global", "local")


def expand_attention_types(attention_types: Any, n_layers: int | None = None) -> tuple[str, ...]:
    """``[[["global", "local"], 12]]`` -> ("global", "local", ..., 24 entries): each pattern repeated its count.

    The total is computed (and compared with ``n_layers`` when given) before anything is expanded.
    """
    shape = "attention_types must look like [[['global', 'local'], 12]]"
    if not isinstance(attention_types, list):
        raise ConfigError(f"{shape}, got {_short(attention_types)}")
    total = 0
    for item in attention_types:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise ConfigError(f"{shape}; the entry {_short(item)} is not a [pattern, count] pair")
        pattern, repeat = item
        if not isinstance(pattern, (list, tuple)) or not all(isinstance(k, str) for k in pattern):
            raise ConfigError(f"{shape}; the pattern {_short(pattern)} is not a list of layer kinds")
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise ConfigError(f"{shape}; the repeat count {_short(repeat)} is not a non-negative integer")
        unknown = sorted({k for k in pattern if k not in ATTENTION_KINDS})
        if unknown:
            raise ConfigError(f"attention_types holds unknown kinds {unknown}; supported: {list(ATTENTION_KINDS)}")
        total += len(pattern) * repeat
    limit = LIMITS["num_layers"] if n_layers is None else n_layers
    if total > limit:
        raise ConfigError(f"attention_types expand to {total} layers but num_layers is {limit}"
                          if n_layers is not None else f"attention_types expand to {total} layers, more than "
                          f"the limit of {limit}")
    kinds: list[str] = []
    for pattern, repeat in attention_types:
        kinds.extend(list(pattern) * repeat)
    return tuple(kinds)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Parse the fields of a Hugging Face GPT-Neo config dict; anything unsupported is a ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type != "gpt_neo":
        raise ConfigError(f"model_type is {_short(model_type)}; this oracle implements only 'gpt_neo'")
    act = raw.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"activation_function {_short(act)} is not supported; supported: {list(SUPPORTED_ACTIVATIONS)}")
    d_model = _field(raw, "hidden_size", int)
    n_layers = _field(raw, "num_layers", int)
    n_heads = _field(raw, "num_heads", int)
    if d_model % n_heads:
        raise ConfigError(f"hidden_size {d_model} is not divisible by num_heads {n_heads}")
    kinds = raw.get("attention_types", [[["global", "local"], n_layers // 2]])
    kinds = expand_attention_types(kinds, n_layers)
    if len(kinds) != n_layers:
        raise ConfigError(f"attention_types expand to {len(kinds)} layers but num_layers is {n_layers}")
    d_mlp = raw.get("intermediate_size")
    return Config(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        d_mlp=4 * d_model if d_mlp is None else _field(raw, "intermediate_size", int),
        d_vocab=_field(raw, "vocab_size", int),
        n_ctx=_field(raw, "max_position_embeddings", int),
        window_size=_field(raw, "window_size", int, 256),
        eps=_field(raw, "layer_norm_epsilon", float, 1e-5),
        attention_kinds=kinds,
        act_fn=act,
    )


IGNORED_BUFFER = re.compile(r"^h\.\d+\.attn\.attention\.(bias|masked_bias)$")


def checkpoint_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every parameter key a GPT-Neo checkpoint must hold (prefix stripped), with its stored shape."""
    d, m = cfg.d_model, cfg.d_mlp
    shapes = {
        "wte.weight": (cfg.d_vocab, d),
        "wpe.weight": (cfg.n_ctx, d),
        "ln_f.weight": (d,),
        "ln_f.bias": (d,),
    }
    for layer in range(cfg.n_layers):
        p = f"h.{layer}."
        shapes.update({
            p + "ln_1.weight": (d,),
            p + "ln_1.bias": (d,),
            p + "attn.attention.q_proj.weight": (d, d),
            p + "attn.attention.k_proj.weight": (d, d),
            p + "attn.attention.v_proj.weight": (d, d),
            p + "attn.attention.out_proj.weight": (d, d),
            p + "attn.attention.out_proj.bias": (d,),
            p + "ln_2.weight": (d,),
            p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (m, d),
            p + "mlp.c_fc.bias": (m,),
            p + "mlp.c_proj.weight": (d, m),
            p + "mlp.c_proj.bias": (d,),
        })
    return shapes


def convert_checkpoint(
    stored: Mapping[str, tuple[str, ...]],
    read: Callable[[str], np.ndarray],
    cfg: Config,
) -> dict[str, np.ndarray]:
    """Check every key and shape of a checkpoint and return its weights under TransformerLens names.

    ``stored`` maps each checkpoint key to its stored shape; ``read(key)`` returns that tensor in the
    compute dtype (a memory-mapped view when no conversion is needed).
    """
    optional = {"lm_head.weight": (cfg.d_vocab, cfg.d_model)}
    by_name = check_keys_and_shapes(stored, checkpoint_shapes(cfg), optional, IGNORED_BUFFER, cfg, "GPT-Neo")

    def get(name: str) -> np.ndarray:
        return read(by_name[name])

    H, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model

    def per_head_in(w: np.ndarray) -> np.ndarray:  # [H*dh, d] -> [H, d, dh]
        return w.reshape(H, dh, d).transpose(0, 2, 1)

    def per_head_out(w: np.ndarray) -> np.ndarray:  # [d, H*dh] -> [H, dh, d]
        return w.T.reshape(H, dh, d)

    weights = {
        "embed.W_E": get("wte.weight"),
        "pos_embed.W_pos": get("wpe.weight"),
    }
    for layer in range(cfg.n_layers):
        p, t = f"h.{layer}.", f"blocks.{layer}."
        weights.update({
            t + "ln1.w": get(p + "ln_1.weight"),
            t + "ln1.b": get(p + "ln_1.bias"),
            t + "attn.W_Q": per_head_in(get(p + "attn.attention.q_proj.weight")),
            t + "attn.W_K": per_head_in(get(p + "attn.attention.k_proj.weight")),
            t + "attn.W_V": per_head_in(get(p + "attn.attention.v_proj.weight")),
            t + "attn.W_O": per_head_out(get(p + "attn.attention.out_proj.weight")),
            t + "attn.b_O": get(p + "attn.attention.out_proj.bias"),
            t + "ln2.w": get(p + "ln_2.weight"),
            t + "ln2.b": get(p + "ln_2.bias"),
            t + "mlp.W_in": get(p + "mlp.c_fc.weight").T,
            t + "mlp.b_in": get(p + "mlp.c_fc.bias"),
            t + "mlp.W_out": get(p + "mlp.c_proj.weight").T,
            t + "mlp.b_out": get(p + "mlp.c_proj.bias"),
        })
    weights["ln_final.w"] = get("ln_f.weight")
    weights["ln_final.b"] = get("ln_f.bias")
    weights["unembed.W_U"] = (get("lm_head.weight") if "lm_head.weight" in by_name else weights["embed.W_E"]).T
    for value in weights.values():
        value.flags.writeable = False
    return weights


GPT_NEO = Family(name="gpt_neo", title="GPT-Neo", config_from_dict=config_from_dict, convert=convert_checkpoint,
                 ignored_buffer=IGNORED_BUFFER)
