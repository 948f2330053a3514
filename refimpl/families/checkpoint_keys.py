"""The checks every family's conversion makes first: keys (``transformer.`` prefix optional), layer count,
missing, unexpected and duplicate parameters, and every stored shape against the config."""

from __future__ import annotations

import re
from typing import Mapping

from refimpl.oracle.config import Config
from refimpl.errors import CheckpointError

LAYER_KEY = re.compile(r"^h\.(\d{1,9})\.")


def normalise_key(key: str) -> str:
    """A checkpoint key without the optional ``transformer.`` prefix."""
    return key[len("transformer."):] if key.startswith("transformer.") else key


def check_layer_count(names, cfg: Config) -> None:
    """The config's layer count must match the blocks present, checked before any per-layer list is built."""
    layers = {int(m.group(1)) for m in map(LAYER_KEY.match, names) if m}
    if layers != set(range(len(layers))) or len(layers) != cfg.n_layers:
        shown = f"layers 0..{max(layers)}" if layers == set(range(len(layers))) and layers else \
            f"layer indices {sorted(layers)[:8]}{' ...' if len(layers) > 8 else ''}"
        raise CheckpointError(f"config num_layers is {cfg.n_layers} but the checkpoint holds {len(layers)} blocks "
                              f"({shown})")


def check_keys_and_shapes(stored: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                          optional: Mapping[str, tuple[int, ...]], ignored: re.Pattern, cfg: Config,
                          title: str) -> dict[str, str]:
    """Every ``expected`` key present, nothing beyond ``expected``, ``optional`` and ``ignored`` buffers, every
    shape as the config says; returns {key without prefix: key as stored}."""
    by_name: dict[str, str] = {}
    for key in stored:
        name = normalise_key(key)
        if name in by_name:
            raise CheckpointError(f"checkpoint holds both {by_name[name]!r} and {key!r}")
        by_name[name] = key
    check_layer_count(by_name, cfg)
    missing = sorted(set(expected) - set(by_name))
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise CheckpointError(f"checkpoint is missing parameters {missing[:8]}{more}")
    extra = sorted(n for n in by_name if n not in expected and n not in optional and not ignored.match(n))
    if extra:
        more = f" (and {len(extra) - 8} more)" if len(extra) > 8 else ""
        raise CheckpointError(f"checkpoint holds unexpected parameters {extra[:8]}{more}; is it {title}?")
    for name, shape in {**expected, **optional}.items():
        if name in by_name and tuple(stored[by_name[name]]) != shape:
            raise CheckpointError(
                f"tensor {by_name[name]!r} has shape {list(stored[by_name[name]])}, expected {list(shape)} "
                f"(d_model={cfg.d_model}, n_heads={cfg.n_heads}, d_mlp={cfg.d_mlp}, d_vocab={cfg.d_vocab}, "
                f"n_ctx={cfg.n_ctx})"
            )
    return by_name
