"""Time GPT-2 BPE on 1 MB of hostile and ordinary text: the old quadratic ``_bpe`` against the heap one.

    python scripts/bench_tokenizer.py [--size 1048576] [--old-size 16384]

Inputs: (a) random ASCII letters without whitespace (one 1 MB pre-split chunk, the worst case),
(b) ordinary English-like text, (c) random Unicode (no surrogates). The old algorithm (a verbatim local
copy, below) is super-linear on long chunks, so it runs on ``--old-size`` characters and its 1 MB time
is measured directly when it finishes within ``--budget`` seconds, else extrapolated as c * n^p with p
fitted on the two largest sizes it did run (labelled "extrapolated"). Sizes are UTF-8 bytes. Ids of the
two algorithms are compared on every size the old one ran.
"""

from __future__ import annotations

import argparse
import math
import random
import string
import time

from refimpl.oracle.tokenizer import PRETOKENIZE, gpt2_tokenizer


def old_bpe(ranks: dict, chunk: str) -> tuple[str, ...]:
    """The pre-rewrite ``Tokenizer._bpe`` (no cache): rescan all pairs after every merge, O(n^2)."""
    parts = list(chunk)
    while len(parts) > 1:
        pairs = [(ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(parts, parts[1:]))]
        rank, at = min(pairs)
        if rank == float("inf"):
            break
        first, second = parts[at], parts[at + 1]
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return tuple(parts)


def old_encode(tok, text: str) -> list[int]:
    """The pre-rewrite encode, with its unbounded per-chunk cache (fresh for each call)."""
    ids, cache = [], {}
    for chunk in PRETOKENIZE.findall(text):
        mapped = "".join(tok.byte_encoder[b] for b in chunk.encode("utf-8"))
        if mapped not in cache:
            cache[mapped] = old_bpe(tok.ranks, mapped)
        ids.extend(tok.encoder[p] for p in cache[mapped])
    return ids


def inputs(size: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    letters = "".join(rng.choice(string.ascii_letters) for _ in range(size))
    words = ["the", "model", "she", "attention", "head", "isn't", "observable", "2023", "propagation", "of",
             "a", "feature", "vector", "norm", "layer", "token", ",", ".", "\n"]
    text, length = [], 0
    while length < size:
        text.append(" " + rng.choice(words))
        length += len(text[-1])
    ordinary = "".join(text)[:size]
    chars, length = [], 0
    while length < size:
        c = chr(rng.randrange(0x20, 0x2FFFF))
        if not 0xD800 <= ord(c) <= 0xDFFF and length + len(c.encode()) <= size:
            chars.append(c)
            length += len(c.encode())
        elif length > size - 4:
            chars.append("x" * (size - length))
            length = size
    unicode_text = "".join(chars)
    return {"letters (no whitespace)": letters, "ordinary text": ordinary, "random unicode": unicode_text}


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 20, help="UTF-8 bytes per input (default 1 MiB)")
    parser.add_argument("--old-size", type=int, default=1 << 11, help="bytes the old algorithm starts on")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds after which the old one stops")
    args = parser.parse_args()
    tok = gpt2_tokenizer()
    big = inputs(args.size)
    print(f"{'input (1 MiB = ' + str(args.size) + ' B)':28s} {'new':>8s} {'old':>12s}  {'how the old time was got':44s}"
          f" {'old/new':>8s}  ids equal", flush=True)
    for label, text in big.items():
        tok._cache.clear()
        t_new, _ = timed(tok.encode, text)
        runs, size, equal = [], args.old_size, True
        while True:
            sample = inputs(size)[label]
            t_old, old_ids = timed(old_encode, tok, sample)
            tok._cache.clear()
            equal &= old_ids == tok.encode(sample)
            runs.append((size, t_old))
            if size >= args.size or (len(runs) >= 2 and t_old > args.budget / 4):
                break
            size = min(2 * size, args.size)
        if runs[-1][0] >= args.size:
            t_old_full, how = runs[-1][1], "measured on the full input"
        else:
            (n1, t1), (n2, t2) = runs[-2], runs[-1]
            p = math.log(max(t2, 1e-9) / max(t1, 1e-9)) / math.log(n2 / n1)
            t_old_full = t2 * (args.size / n2) ** p
            how = f"EXTRAPOLATED from {n2} B ({t2:.1f} s) as n^{p:.2f}"
        print(f"{label:28s} {t_new:6.2f} s {t_old_full:10.1f} s  {how:44s} {t_old_full / t_new:7.0f}x  {equal}",
              flush=True)


if __name__ == "__main__":
    main()
