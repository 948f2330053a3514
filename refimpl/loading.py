"""``load()``: a checkpoint directory, hub id or bundled name -> a ready ``Model``."""

from __future__ import annotations

import os

import numpy as np

from .checkpoint import DEFAULT_MODEL, open_safetensors, resolve_source
from .config import load_config
from .errors import InputError
from .model import Model
from .tokenizer import Tokenizer
from .weights import convert_checkpoint

COMPUTE_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def compute_dtype(dtype) -> np.dtype:
    """'float32' or 'float64' (or the numpy types) -> np.dtype; anything else is an InputError."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in COMPUTE_DTYPES.values():
        raise InputError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return resolved


def load(source: str | os.PathLike | None = None, *, dtype="float32", revision: str | None = None) -> Model:
    """Load a GPT-Neo model computing in ``dtype``.

    ``source``: None or "organism" (the bundled model organism), a local Hugging Face directory
    (``config.json`` + ``model.safetensors`` or a sharded index), or a hub repo id fetched with
    huggingface_hub (config, safetensors and tokenizer files only; honours the HF cache,
    ``HF_HUB_OFFLINE`` and ``revision``). Weights whose stored dtype equals ``dtype`` are memory-mapped.
    """
    dt = compute_dtype(dtype)
    folder = resolve_source(source, revision)
    files = open_safetensors(folder)
    config = load_config(folder / "config.json")
    stored_shapes = {key: f.entries[key][1] for key, f in files.items()}
    weights = convert_checkpoint(stored_shapes, lambda key: files[key].tensor(key, dt), config)
    name = DEFAULT_MODEL if source is None else str(source)
    return Model(config, weights, Tokenizer.from_folder(folder), source=name, path=folder)
