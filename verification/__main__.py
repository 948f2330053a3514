"""``python -m verification``: run the verification report (or check a conformance file).

    python -m verification [--model DIR_OR_HUB_ID] [--profile default|long] [--out report.json] [--no-torch]
    python -m verification conformance FILE.npz [--model ...]
    python -m verification mutants [--fast | --only ID,...] [--list] [--jobs N] [--timeout S]
    python -m verification mechanical [--sample N] [--seed S] [--jobs N] [--triage-only] [--write-result]
    python -m verification validate --peer transformer-lens|transformers|module:function [--model M] [--processed]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from refimpl.commands.argparsing import OneLineParser
from refimpl.errors import RefimplError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "conformance":
        return conformance_main(argv[1:])
    if argv and argv[0] == "validate":
        from verification.peers.validate import main as validate_main

        return validate_main(argv[1:])
    if argv and argv[0] == "mechanical":
        from verification.mutation.mechanical import main as mechanical_main

        return mechanical_main(argv[1:])
    if argv and argv[0] == "mutants":
        from verification.mutation.mutants import main as mutants_main

        return mutants_main(argv[1:])
    parser = OneLineParser(prog="python -m verification", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model to verify (default: the bundled organism)")
    parser.add_argument("--profile", default=os.environ.get("REFIMPL_HYPOTHESIS_PROFILE", "default"),
                        choices=["default", "long"])
    parser.add_argument("--out", default="verification-report.json", help="where to write the JSON report")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch backend checks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from verification import report

    start = time.perf_counter()
    try:
        checks = report.run(args.model, args.profile, not args.no_torch, args.seed,
                            progress=lambda section: print(f"[{time.perf_counter() - start:6.1f} s] {section}",
                                                           file=sys.stderr, flush=True))
        print(report.format_table(checks))
        report.write_json(checks, args.out, model=args.model or "organism", profile=args.profile, seed=args.seed,
                          seconds=round(time.perf_counter() - start, 1))
    except RefimplError as exc:
        print(f"python -m verification: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"python -m verification: error: cannot write {args.out!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"\n{report.format_summary(checks)} ({time.perf_counter() - start:.1f} s); report written to {args.out}")
    return 1 if any(c.failed for c in checks) else 0


def conformance_main(argv: list[str]) -> int:
    parser = OneLineParser(prog="python -m verification conformance",
                           description="check a conformance file (see verification/conformance.py)")
    parser.add_argument("file")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    import refimpl

    from verification.conformance import check_file

    try:
        checks = check_file(args.file, refimpl.load(args.model, dtype="float64"), args.model)
    except RefimplError as exc:
        print(f"python -m verification conformance: error: {exc}", file=sys.stderr)
        return 2
    failed = [c for c in checks if not c.passed]
    for c in failed:
        measured = f"{c.measured:.3e}" if isinstance(c.measured, float) else str(c.measured)
        print(f"MISMATCH {c.name}: {measured} (tolerance {c.tolerance})\n{c.detail}\n")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
