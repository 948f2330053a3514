"""``python -m refimpl [PROMPT]``: top next tokens and the per-layer logit lens of a prompt."""

from __future__ import annotations

import argparse
import sys
import time

from refimpl.commands.argparsing import OneLineParser
from refimpl.errors import RefimplError
from refimpl.oracle.lens import layer_lens, top_tokens
from refimpl.loading import load

DEFAULT_PROMPT = "<|endoftext|>So, John really is a great friend, isn't"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m refimpl", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help="text to run (default: %(default)r)")
    parser.add_argument("--model", default=None, help="local HF directory, hub id, or 'organism' (default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--top", type=int, default=5, help="how many next tokens to print (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its message; --help exits 0
        return int(exc.code or 0)
    if args.top < 1:
        print("python -m refimpl: error: --top must be at least 1", file=sys.stderr)
        return 2
    try:
        start = time.perf_counter()
        model = load(args.model, dtype=args.dtype, revision=args.revision)
        loaded = time.perf_counter() - start
        ids = model.to_ids(args.prompt)
        print(f"model: {model!r} (loaded in {loaded:.2f} s from {model.path})")
        print(f"prompt: {args.prompt!r} -> {len(ids)} tokens {ids.tolist()}")
        logits = model.forward(ids)
        print(f"\ntop {args.top} next tokens:")
        for text, token_id, value in top_tokens(model, logits[-1], args.top):
            print(f"  {text!r:>16} (id {token_id:>5})  logit {value:9.4f}")
        print("\nlogit lens at the last position (top 3 tokens read through ln_final):")
        for name, tops in layer_lens(model, args.prompt, k=3):
            shown = ", ".join(f"{t!r} {v:.2f}" for t, _, v in tops)
            print(f"  {name:<28} {shown}")
    except RefimplError as exc:
        print(f"python -m refimpl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
