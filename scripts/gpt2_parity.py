"""Float64 parity of the oracle with transformers' GPT2LMHeadModel on random GPT-2 checkpoints stored as F32, F16
and BF16 (non-trivial LayerNorms and biases): max |oracle - transformers| / max |logit| per stored dtype and shape.

    python scripts/gpt2_parity.py          # the figures tests/test_gpt2.py asserts to be <= 1e-12
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import refimpl  # noqa: E402
from verification.peers import torch_peer  # noqa: E402
from verification.policy.tolerances import relative_error, tolerance  # noqa: E402

SHAPES = [dict(d_model=24, n_layers=1, n_heads=3), dict(d_model=20, n_layers=3, n_heads=5, d_mlp=36)]


def main() -> None:
    for stored in ("float32", "float16", "bfloat16"):
        errors = []
        for seed, spec in enumerate(SHAPES):
            with tempfile.TemporaryDirectory() as tmp:
                folder = torch_peer.make_random_gpt2_checkpoint(tmp, seed=seed, dtype=stored, vocab=97, n_ctx=32, **spec)
                ids = np.random.default_rng(seed).integers(0, 97, size=(2, 13))
                logits, _ = torch_peer.peer_forward(torch_peer.load_peer(folder, "float64"), ids)
                errors.append(relative_error(refimpl.load(folder, dtype="float64").forward(ids), logits))
        print(f"stored {stored:9s} relative error per shape: {', '.join(f'{e:.1e}' for e in errors)} "
              f"(tolerance {tolerance('forward_parity', 'float64'):.0e})")


if __name__ == "__main__":
    main()
