"""The one command line every stage takes, and the one way a stage reads its params section.

Design: a stage's paths are written once, in dvc.yaml's `cmd` (or by the user on the command
line): every path is a flag without a default, so dvc.yaml, the stage and the params never
disagree about where a file lives. `--params` names the parameters file (default params.yaml),
and each stage reads the section named after it; `params_file(argv)` lets the Prefect wrapper
(flows.stage) log exactly the file the stage read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from reasoning.config import load_params, load_section
from reasoning.devices import peak_memory_bytes

T = TypeVar("T")
PARAMS = "params.yaml"


def stage_parser(stage: str, doc: str | None, paths: Sequence[tuple[str, str]], epilog: str | None = None,
                 optional_paths: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of `python -m stages.<stage>`: `--params`, then one `--flag PATH` per (flag, help) of
    `paths`, required unless named in `optional_paths`. `doc` (the module docstring) is the --help text."""
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=doc, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=PARAMS, type=Path,
                    help=f"parameters file; the stage reads its section `{stage}` (default: %(default)s)")
    for flag, help_ in paths:
        ap.add_argument(flag, type=Path, required=flag not in optional_paths, metavar="PATH", help=help_)
    return ap


def add_run_flags(ap: argparse.ArgumentParser, what: str = "problems") -> None:
    """`--limit N` (a quick subset, overriding the params) and `--no-progress`."""
    ap.add_argument("--limit", type=int, metavar="N", help=f"only the first N {what} (overrides the params)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def stage_config(cls: type[T], stage: str, args: argparse.Namespace) -> T:
    """The stage's params section as `cls`, with `--limit` applied when the stage has one and it is given."""
    cfg = load_section(cls, stage, args.params)
    if getattr(args, "limit", None) is not None:
        cfg = dataclasses.replace(cfg, limit=args.limit)  # type: ignore[type-var]
    return cfg


def trial_limit(params: Path) -> int | None:
    """`pipeline.limit` of the params file: a trial run of the whole pipeline on the first N test problems
    (prepare_data cuts the test split, so every evaluating stage sees the same N); None: the whole split."""
    limit = (load_params(params).get("pipeline") or {}).get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{params}:pipeline.limit: expected a positive number of test problems or null, "
                         f"got {limit!r}")
    return limit


def params_file(argv: Sequence[str]) -> Path:
    """The parameters file a stage given `argv` reads (its `--params`, default params.yaml)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--params", default=PARAMS, type=Path)
    return ap.parse_known_args(list(argv))[0].params


def rank0() -> bool:
    """True in a single process and on rank 0 under torchrun: the process that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def run_facts(skipped: dict[str, int] | None = None) -> dict[str, int]:
    """What a stage's metrics record about the run itself: `peak_memory_bytes`, the most memory the
    stage's process held (reasoning.devices.peak_memory_bytes: CUDA's max allocated when the stage
    used a GPU, else the peak resident set size; each stage runs in its own process under `dvc repro`),
    and `skipped_rows` when `read_dataset(..., skipped=skipped)` skipped malformed rows (each named with
    its file, line and field in a warning); clean runs carry no `skipped_rows` key."""
    facts = {"peak_memory_bytes": peak_memory_bytes()}
    if skipped:
        facts["skipped_rows"] = skipped["malformed_rows"]
    return facts


def earlier_run_facts(metrics_path: Path) -> dict[str, int]:
    """The run facts (see `run_facts`) of the metrics file a regrade or report-only pass rewrites: they
    describe the run that produced the records, not the pass that re-reads them; {} without one."""
    if not metrics_path.exists():
        return {}
    earlier = json.loads(metrics_path.read_text())
    return {k: earlier[k] for k in ("peak_memory_bytes", "skipped_rows") if k in earlier}
