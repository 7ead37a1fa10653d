"""Stage `teacher_traces`: verified reasoning traces from a teacher, for distillation (chapter 8).

Glue only: params section -> TracesConfig -> reasoning.distill.generate_traces. Writes
OUT/traces.jsonl (verified traces, the SFT input), OUT/rejected.jsonl (every other sample with
its reason) and METRICS (counts by reason, contamination drops, teacher provenance). Raw samples
are journaled under WORK (git-ignored), keyed by the teacher and sampling settings: a killed run
continues there, and a rerun samples nothing again.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from reasoning.config import load_section
from reasoning.data import read_dataset
from reasoning.distill import TracesConfig, generate_traces, load_teacher
from reasoning.io import write_json, write_jsonl


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m stages.teacher_traces",
        description="Sample a teacher (a checkpoint run by the engine, an OpenAI-compatible endpoint whose key "
                    "is read from the environment variable named in the params, or a file of published "
                    "traces) n times per training problem, keep the traces whose final answer the grader "
                    "verifies, and drop training problems that overlap the test split. Rerunning after a kill "
                    "continues where it stopped.")
    ap.add_argument("--train", default="data/datasets/train.jsonl", help="training split (default: %(default)s)")
    ap.add_argument("--test", default="data/datasets/test.jsonl",
                    help="test split, for the contamination check (default: %(default)s)")
    ap.add_argument("--out", default="data/traces", type=Path, help="output directory (default: %(default)s)")
    ap.add_argument("--metrics", default="data/metrics/teacher_traces.json", type=Path,
                    help="metrics file (default: %(default)s)")
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    ap.add_argument("--section", default="teacher_traces", help="params section (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=Path("runs/teacher_traces"),
                    help="journal directory for resuming (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="sample only the first N clean problems (overrides the params)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)

    cfg = load_section(TracesConfig, args.section, args.params)
    if args.limit is not None:
        cfg = dataclasses.replace(cfg, limit=args.limit)
    train, test = read_dataset(args.train), read_dataset(args.test)
    teacher = load_teacher(cfg.teacher, cfg.sampling)
    kept, rejected, metrics = generate_traces(teacher, train, test, cfg, args.work, progress=not args.no_progress)
    write_jsonl(args.out / "traces.jsonl", kept)
    write_jsonl(args.out / "rejected.jsonl", rejected)
    write_json(args.metrics, metrics)
    print(f"{args.out}: kept {metrics['kept']} of {metrics['samples']} samples on {metrics['problems_sampled']} "
          f"problems (coverage {metrics['coverage']:.1%}); rejected {metrics['rejected']}; "
          f"contamination dropped {metrics['contaminated']}")
    return metrics


if __name__ == "__main__":
    main()
