"""The peer interface: one way to ask another implementation for the quantities the oracle computes.

A peer answers, for one checkpoint and in one precision, any subset of:

* ``activations(ids)``: named activations ``{name: array}`` for token ids ``[B, T]``, with TransformerLens
  names (the oracle's trace names) plus ``"logits"`` ``[B, T, V]``;
* ``features(n)``: per-head feature vectors ``[L, H, d_model]`` of the observable ``n . logits``
  (``n``: a vector over the vocabulary), computed from the PEER's own weights as W_OV^T W_U^T n
  (row convention: ``W_V[l, h] @ W_O[l, h] @ W_U @ n``);
* ``path_patching(clean, corrupt, n)``: per-head direct-path patching effects ``[L, H]`` (the authors'
  method: add (corrupted - clean) of one head's output at the final residual, re-apply ln_final, score
  ``n . logits_clean[-1] - n . logits_patched[-1]``, mean over prompt pairs);
* ``weights()``: its own parameters under the oracle's names (``blocks.0.attn.W_V`` ...), as numpy.

A method that the peer cannot answer returns ``None``. ``processing`` lists the weight-processing steps
the peer applied (names of functions in ``verification.peers.identities``); with an empty tuple the
peer is compared to the oracle directly, otherwise through those identities.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


class PeerError(Exception):
    """A peer that cannot be built or queried (missing package, bad spec, wrong output shape)."""


class Peer:
    """Base class: every query unsupported. Subclasses override what they can answer."""

    name: str = "peer"
    dtype: str = "float64"
    processing: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def activations(self, ids: np.ndarray) -> Mapping[str, np.ndarray] | None:
        return None

    def features(self, n: np.ndarray) -> np.ndarray | None:
        return None

    def path_patching(self, clean: np.ndarray, corrupt: np.ndarray, n: np.ndarray) -> np.ndarray | None:
        return None

    def weights(self) -> Mapping[str, np.ndarray] | None:
        return None

    # how the report's reproduction snippets rebuild this peer (a Python expression)
    def snippet_constructor(self) -> str:
        return "None  # this peer cannot be rebuilt from a snippet"


def as_numpy(x) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
