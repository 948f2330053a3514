"""Benchmark: data-free feature vectors and the virtual-head scan on a random-weight GPT-Neo shape.

Prints each computation's time next to its FLOP count and the FLOP floor measured in the same run
(a large float32 GEMM), and the memory-bandwidth floor (the computation must read every weight once).

    python scripts/bench_features.py --shape 1.3B
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import refimpl  # noqa: E402
from bench_forward import SHAPES, checkpoint  # noqa: E402


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_flops_per_second(n: int = 3072, repeat: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_time(lambda: a @ b, repeat)


def bytes_per_second(n_bytes: int = 1 << 30, repeat: int = 3) -> float:
    a = np.ones(n_bytes // 4, dtype=np.float32)
    return n_bytes / best_time(lambda: a.sum(), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.3B")
    parser.add_argument("--cache", type=Path, default=REPO / "bench-cache")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = refimpl.load(checkpoint(args.shape, args.cache), dtype="float32")
    cfg = model.config
    L, H, d, dh = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
    obs = refimpl.observable(model, {" she": 1, " he": -1})
    refimpl.head_features(model, obs)  # touch the weights once (page cache -> memory)
    flops, bandwidth = gemm_flops_per_second(), bytes_per_second()

    t_feat = best_time(lambda: refimpl.head_features(model, obs), args.repeat)
    feat_flops = 4 * L * d * d  # W_O (H*dh x d) and W_V per layer, one GEMV each
    feat_bytes = 2 * L * d * d * 4
    t_scan = best_time(lambda: refimpl.virtual_head_norms(model, obs), max(1, args.repeat - 1))
    pairs_after = sum(L - l - 1 for l in range(L)) * H
    scan_flops = (feat_flops + 2 * d * d * pairs_after  # W_O1 @ later features, per earlier layer
                  + 2 * (L - 1) * H * dh * dh * d  # Gram matrices of W_V
                  + 2 * H * dh * dh * pairs_after)  # G @ a
    print(f"GPT-Neo {args.shape} shape, float32, {L * H} heads; GEMM {flops / 1e9:.1f} GFLOP/s, "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s (measured in this run)")
    print(f"{'computation':34}{'time s':>9}{'GFLOP':>8}{'FLOP floor s':>14}{'ratio':>8}{'read floor s':>14}")
    for name, t, f, b in (("all head features (1 observable)", t_feat, feat_flops, feat_bytes),
                          ("all length-2 virtual-head norms", t_scan, scan_flops, feat_bytes)):
        print(f"{name:34}{t:9.3f}{f / 1e9:8.2f}{f / flops:14.3f}{t / (f / flops):8.2f}{b / bandwidth:14.3f}")
    n_pairs = L * (L - 1) // 2 * H * H
    print(f"targets: head features <= 0.2 s, all {n_pairs} virtual-head pairs <= 2 s")


if __name__ == "__main__":
    main()
