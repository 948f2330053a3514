"""Model families: what differs between GPT-Neo and GPT-2 (and how GPT-NeoX would fit: ``DESIGN.md``).

``family_of(raw_config)`` picks the family by the config's ``model_type``; ``FAMILIES`` maps each
supported ``model_type`` to its ``Family``.
"""

from __future__ import annotations

from typing import Any, Mapping

from refimpl.oracle.config import _short
from refimpl.errors import ConfigError
from refimpl.families.base import ACTIVATIONS, GELU_NEW, SERIAL, Activation, Family, SerialStructure
from refimpl.families.gpt2 import GPT2
from refimpl.families.gpt_neo import GPT_NEO

FAMILIES: Mapping[str, Family] = {f.name: f for f in (GPT_NEO, GPT2)}

__all__ = ["ACTIVATIONS", "FAMILIES", "GELU_NEW", "SERIAL", "Activation", "Family", "SerialStructure", "family", "family_of"]


def family(name: str) -> Family:
    """The family of ``model_type`` ``name``; a ConfigError naming the supported ones otherwise."""
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError(f"model_type is {_short(name)}; this oracle implements {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(raw: Any) -> Family:
    """The family a parsed ``config.json`` belongs to (by its ``model_type``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
    return family(raw.get("model_type"))
