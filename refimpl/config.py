"""GPT-Neo configuration: a Hugging Face ``config.json`` parsed into a small frozen dataclass."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

SUPPORTED_ACTIVATIONS = ("gelu_new",)
ATTENTION_KINDS = ("global", "local")


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

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def window(self, layer: int) -> int | None:
        """Keys visible to a query in ``layer``: ``window_size`` for local layers, None (all causal) for global."""
        return self.window_size if self.attention_kinds[layer] == "local" else None


def expand_attention_types(attention_types: Any) -> tuple[str, ...]:
    """``[[["global", "local"], 12]]`` -> ("global", "local", ..., 24 entries): each pattern repeated its count."""
    try:
        kinds: list[str] = []
        for pattern, repeat in attention_types:
            if isinstance(pattern, str) or int(repeat) != repeat or repeat < 0:
                raise TypeError
            kinds.extend(list(pattern) * int(repeat))
    except (TypeError, ValueError):
        raise ConfigError(
            f"attention_types must look like [[['global', 'local'], 12]], got {attention_types!r}"
        ) from None
    unknown = sorted({k for k in kinds if k not in ATTENTION_KINDS})
    if unknown:
        raise ConfigError(f"attention_types holds unknown kinds {unknown}; supported: {list(ATTENTION_KINDS)}")
    return tuple(kinds)


def _field(raw: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        raise ConfigError(f"config.json lacks required field {key!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"config field {key!r} must be a positive integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise ConfigError(f"config field {key!r} must be a non-negative number, got {value!r}")
    return kind(value)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Parse the fields of a Hugging Face GPT-Neo config dict; anything unsupported is a ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type != "gpt_neo":
        raise ConfigError(f"model_type is {model_type!r}; this oracle implements only 'gpt_neo'")
    act = raw.get("activation_function", "gelu_new")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"activation_function {act!r} is not supported; supported: {list(SUPPORTED_ACTIVATIONS)}")
    d_model = _field(raw, "hidden_size", int)
    n_layers = _field(raw, "num_layers", int)
    n_heads = _field(raw, "num_heads", int)
    if d_model % n_heads:
        raise ConfigError(f"hidden_size {d_model} is not divisible by num_heads {n_heads}")
    kinds = expand_attention_types(raw.get("attention_types", [[["global", "local"], n_layers // 2]]))
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


def load_config(path: str | Path) -> Config:
    """Read and parse ``config.json``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config.json at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return config_from_dict(raw)
