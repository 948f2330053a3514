"""``python -m verification``: run the verification report (or check a conformance file).

    python -m verification [--model DIR_OR_HUB_ID] [--profile default|long] [--out report.json] [--no-torch]
    python -m verification conformance FILE.npz [--model ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "conformance":
        return conformance_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m verification", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model to verify (default: the bundled organism)")
    parser.add_argument("--profile", default=os.environ.get("REFIMPL_HYPOTHESIS_PROFILE", "default"),
                        choices=["default", "long"])
    parser.add_argument("--out", default="verification-report.json", help="where to write the JSON report")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch backend checks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from . import report

    start = time.perf_counter()
    checks = report.run(args.model, args.profile, not args.no_torch, args.seed)
    print(report.format_table(checks))
    failed = [c for c in checks if not c.passed]
    report.write_json(checks, args.out, model=args.model or "organism", profile=args.profile, seed=args.seed,
                      seconds=round(time.perf_counter() - start, 1))
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed ({time.perf_counter() - start:.1f} s); "
          f"report written to {args.out}")
    return 1 if failed else 0


def conformance_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m verification conformance",
                                     description="check a conformance file (see verification/conformance.py)")
    parser.add_argument("file")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    import refimpl

    from .conformance import check_file

    checks = check_file(args.file, refimpl.load(args.model, dtype="float64"), args.model)
    failed = [c for c in checks if not c.passed]
    for c in failed:
        print(f"MISMATCH {c.name}: relative error {c.measured:.3e} > {c.tolerance:g}\n{c.detail}\n")
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
