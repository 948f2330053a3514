"""Model configuration: a Hugging Face ``config.json`` parsed into a small frozen dataclass.

``Config`` and the field checks are shared by every family; ``config_from_dict`` parses GPT-Neo's fields
(GPT-2's parser is ``refimpl.families.gpt2``); ``load_config`` reads the file and lets the family named by
its ``model_type`` parse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

SUPPORTED_ACTIVATIONS = ("gelu_new",)
ATTENTION_KINDS = ("global", "local")
MAX_CONFIG_BYTES = 16 * 1024 * 1024
# Sane upper bounds, checked before anything is allocated (the largest GPT-Neo, 2.7B, has 32 layers,
# d_model 2560, vocab 50257, 2048 positions; GPT-2 XL 48 layers, d_model 1600). The tensors present are checked against the config later.
LIMITS = {
    "num_layers": 4096,
    "hidden_size": 1 << 17,
    "num_heads": 1 << 12,
    "intermediate_size": 1 << 20,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 24,
    "window_size": 1 << 24,
    # the same bounds under GPT-2's field names
    "n_layer": 4096,
    "n_embd": 1 << 17,
    "n_head": 1 << 12,
    "n_inner": 1 << 20,
    "n_positions": 1 << 24,
}


@dataclass(frozen=True)
class Config:
    """Shapes and constants of one GPT-Neo model (TransformerLens field names)."""

    d_model: int  # residual width (hidden_size)
    n_layers: int  # number of blocks (num_layers)
    n_heads: int  # attention heads per block (num_heads)
    d_mlp: int  # MLP hidden width (intermediate_size, or 4 * d_model when null)
    d_vocab: int  # vocabulary size (vocab_size)
    n_ctx: int  # rows of the position table (max_position_embeddings)
    window_size: int  # keys visible to a query in a local layer, itself included
    eps: float  # LayerNorm epsilon, inside the square root (layer_norm_epsilon)
    attention_kinds: tuple[str, ...]  # "global" or "local", one per layer
    act_fn: str = "gelu_new"
    family: str = "gpt_neo"  # the model family (a key of refimpl.families.FAMILIES)
    attn_divisors: tuple[float, ...] | None = None  # per layer: attention scores are q.k / divisor (None: unscaled)
    tied: bool = True  # unembedding = embedding^T unless the checkpoint (GPT-Neo) or config (GPT-2) says otherwise

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def attn_divisor(self, layer: int) -> float | None:
        """What ``layer``'s scores q . k are divided by (None: not scaled, as in GPT-Neo)."""
        return None if self.attn_divisors is None else self.attn_divisors[layer]

    def window(self, layer: int) -> int | None:
        """Keys visible to a query in ``layer``: ``window_size`` for local layers, None (all causal) for global."""
        return self.window_size if self.attention_kinds[layer] == "local" else None


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


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _field(raw: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"config.json lacks required field {key!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"config field {key!r} must be a positive integer, got {_short(value)}")
        if value > LIMITS.get(key, value):
            raise ConfigError(f"config field {key!r} is {value}, above the sane limit {LIMITS[key]}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config field {key!r} must be a finite number > 0, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"config field {key!r} must be a finite number > 0, got {_short(value)}")
    return number


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


def load_config(path: str | Path, folder: str | Path | None = None) -> Config:
    """Read ``config.json`` (a regular file, inside ``folder`` when given) and parse it with the parser of
    the family its ``model_type`` names."""
    from .families import family_of
    from .safetensors_reader import read_regular, strict_json

    path = Path(path)
    data = read_regular(path, folder, MAX_CONFIG_BYTES, ConfigError, what=f"config.json at {path}"
                        if path.name != "config.json" else str(path))
    raw = strict_json(data, str(path), ConfigError, allow_constants=True)
    return family_of(raw).config_from_dict(raw)
