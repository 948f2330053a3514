"""A plain function as a peer: ``features(weights, n) -> [n_layers, n_heads, d_model]``.

``weights`` is the oracle's read-only mapping of the checkpoint's raw weights with TransformerLens names
(``blocks.{l}.attn.W_V [H, d, dh]``, ``blocks.{l}.attn.W_O [H, dh, d]``, ``unembed.W_U [d, V]``, ... see
README), as numpy arrays in the compute dtype; ``n`` is the observable as a vector over the vocabulary
(numpy, ``[d_vocab]``). The function must return the per-head feature vectors W_OV^T W_U^T n (row
convention ``W_V[h] @ W_O[h] @ W_U @ n``). Only features are validated for such a peer.
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from verification.peers.base import Peer, PeerError


def resolve(spec: str) -> Callable:
    """"package.module:function" -> the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise PeerError(f"--peer {spec!r}: expected transformer-lens, transformers or module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PeerError(f"--peer {spec!r}: cannot import {module_name!r} ({exc})") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise PeerError(f"--peer {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise PeerError(f"--peer {spec!r}: {attr!r} is not callable")
    return fn


class UserFunctionPeer(Peer):
    def __init__(self, function: Callable | str, weights, dtype: str = "float64", spec: str | None = None):
        self.spec = spec or (function if isinstance(function, str) else
                             f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', '?')}")
        self.function = resolve(function) if isinstance(function, str) else function
        self.name = f"function {self.spec}"
        self._weights, self.dtype = weights, dtype

    def snippet_constructor(self) -> str:
        return f"UserFunctionPeer({self.spec!r}, model.weights, dtype={self.dtype!r})"

    def features(self, n):
        out = self.function(self._weights, np.array(n))
        return np.asarray(out)
