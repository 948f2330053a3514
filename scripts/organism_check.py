"""Check the paper's claims on the model organism (issue 5): does the data-free norm ranking find the
heads that path patching finds, do couplings predict best-fit slopes for high-cosine heads, and does
steering along the top head's feature move the observable as predicted?

    python scripts/organism_check.py [--model DIR] [--k 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import refimpl  # noqa: E402
from refimpl.organism_check import check, report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    print(report(check(refimpl.load(args.model, dtype="float64"), args.k)))


if __name__ == "__main__":
    main()
