"""Shared stage glue: the command line every stage takes (`--params`, default params.yaml)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse_args(prog: str, doc: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse a stage's arguments; `doc` (the stage module's docstring) is its --help text."""
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    return ap.parse_args(argv)
