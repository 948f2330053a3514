"""``load()``: a checkpoint directory, hub id or bundled name -> a ready ``Model``."""

from __future__ import annotations

import os

import numpy as np

from refimpl.sources.checkpoint import DEFAULT_MODEL, open_safetensors, resolve_source
from refimpl.oracle.config import load_config
from refimpl.errors import InputError
from refimpl.families import family
from refimpl.families.checkpoint_keys import normalise_key
from refimpl.oracle.model import Model
from refimpl.oracle.tokenizer import Tokenizer

COMPUTE_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def compute_dtype(dtype) -> np.dtype:
    """'float32' or 'float64', np.float32 / np.float64 or their np.dtype -> np.dtype; anything else
    (None, 'bfloat16', a list, Python's float, ...) is an InputError."""
    if isinstance(dtype, str) and dtype in COMPUTE_DTYPES:
        return COMPUTE_DTYPES[dtype]
    if isinstance(dtype, np.dtype) and dtype in COMPUTE_DTYPES.values():
        return dtype
    if isinstance(dtype, type) and dtype in (np.float32, np.float64):
        return np.dtype(dtype)
    shown = repr(dtype) if len(repr(dtype)) <= 80 else repr(dtype)[:80] + "..."
    raise InputError(f"dtype must be 'float32' or 'float64', got {shown}")


def load(source: str | os.PathLike | None = None, *, dtype="float32", revision: str | None = None,
         mmap: bool = True) -> Model:
    """Load a GPT-Neo or GPT-2 model (the family its ``config.json`` names) computing in ``dtype``.

    ``source``: None or "organism" (the bundled model organism), a local Hugging Face directory
    (``config.json`` + ``model.safetensors`` or a sharded index), or a hub repo id fetched with
    huggingface_hub (config, safetensors and tokenizer files only; honours the HF cache,
    ``HF_HUB_OFFLINE`` and ``revision``). Weights whose stored dtype equals ``dtype`` are memory-mapped;
    ``mmap=False`` reads them into memory instead (a memory-mapped file truncated by another process
    after loading crashes the process with SIGBUS on access; a copy cannot). Every floating weight is
    checked to be finite once, in chunks.
    """
    dt = compute_dtype(dtype)
    if not isinstance(mmap, bool):
        raise InputError(f"mmap must be True or False, got {type(mmap).__name__}")
    folder = resolve_source(source, revision)
    config = load_config(folder / "config.json", folder)
    fam = family(config.family)
    files = open_safetensors(folder, mmap=mmap)
    stored_shapes = {key: f.entries[key][1] for key, f in files.items()}
    weights = fam.convert(stored_shapes, lambda key: files[key].tensor(key, dt), config)
    for key, f in files.items():
        if not fam.ignored_buffer.match(normalise_key(key)):
            f.check_finite(key)
    name = DEFAULT_MODEL if source is None else os.fspath(source)
    return Model(config, weights, Tokenizer.from_folder(folder), source=name, path=folder)
