"""An argparse parser whose errors are one line on stderr with exit status 2 (no usage block)."""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """``error`` prints "PROG: error: MESSAGE" as one line and exits with status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
