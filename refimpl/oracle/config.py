"""Model configuration: a Hugging Face ``config.json`` parsed into a small frozen dataclass.

``Config`` and the field checks are shared by every family; each family parses its own fields
(``refimpl.families.gpt_neo``, ``refimpl.families.gpt2``); ``load_config`` reads the file and lets the family
named by its ``model_type`` parse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from refimpl.errors import ConfigError

SUPPORTED_ACTIVATIONS = ("gelu_new",)
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


def load_config(path: str | Path, folder: str | Path | None = None) -> Config:
    """Read ``config.json`` (a regular file, inside ``folder`` when given) and parse it with the parser of
    the family its ``model_type`` names."""
    from refimpl.families import family_of
    from refimpl.sources.safetensors_reader import read_regular, strict_json

    path = Path(path)
    data = read_regular(path, folder, MAX_CONFIG_BYTES, ConfigError, what=f"config.json at {path}"
                        if path.name != "config.json" else str(path))
    raw = strict_json(data, str(path), ConfigError, allow_constants=True)
    return family_of(raw).config_from_dict(raw)
