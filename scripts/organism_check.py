"""Check the paper's claims on the model organism (or any GPT-Neo): the "Claims at a glance" of
``obsprop demo``'s summary.md, each with what the paper reports, what was measured, the criterion and
the verdict.

    python scripts/organism_check.py [--model DIR_OR_HUB_ID] [--dtype float64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import refimpl  # noqa: E402
from refimpl.case_study.organism_check import check, report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory or hub id (default: the bundled organism)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = parser.parse_args()
    try:
        model = refimpl.load(args.model, dtype=args.dtype)
        print(report(check(model, progress=True)))
    except refimpl.RefimplError as exc:
        print(f"organism_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
