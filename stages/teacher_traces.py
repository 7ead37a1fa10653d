"""Stage `teacher_traces`: verified reasoning traces from a teacher, for distillation (chapter 8).

Samples a teacher (a checkpoint run by the engine, an OpenAI-compatible endpoint whose key is read
from the environment variable named in the params, a file of published traces, or in the toy world
the task's reference solutions in varied orders: reasoning.teacher.ToyTeacher) n times per
training problem, keeps the traces whose final answer the grader verifies, and drops training
problems that overlap the test split. Writes OUT/traces.jsonl (verified traces, the SFT input),
OUT/rejected.jsonl (every other sample with its reason) and METRICS (counts by reason,
contamination drops, teacher provenance). Glue only: params section -> TracesConfig ->
reasoning.distill.generate_traces. Raw samples are journaled under STATE (git-ignored), keyed by
the teacher and sampling settings: a killed run continues there, and a rerun samples nothing again.
"""

from __future__ import annotations

from collections.abc import Sequence

from reasoning.checkpoint import data_parallel
from reasoning.data import read_dataset
from reasoning.distill import TracesConfig, generate_traces
from reasoning.files import write_json, write_jsonl
from reasoning.teacher import load_teacher

from .common import add_run_flags, rank0, run_facts, stage_config, stage_parser


def main(argv: Sequence[str] | None = None) -> dict:
    ap = stage_parser("teacher_traces", __doc__, [
        ("--train", "training split, e.g. data/datasets/train.jsonl"),
        ("--test", "test split, for the contamination check"),
        ("--out", "output directory, e.g. data/traces"),
        ("--metrics", "metrics file"),
        ("--state", "journal directory for resuming, e.g. runs/teacher_traces"),
    ])
    add_run_flags(ap, "clean training problems")
    args = ap.parse_args(argv)

    cfg = stage_config(TracesConfig, "teacher_traces", args)
    skipped: dict[str, int] = {}  # rows without an id, problem or answer: skipped, counted, warned about
    train, test = read_dataset(args.train, skipped=skipped), read_dataset(args.test, skipped=skipped)
    teacher = load_teacher(cfg.teacher, cfg.sampling, train)
    with data_parallel(teacher.device) as comm:  # torchrun: the problems split over the ranks
        kept, rejected, metrics = generate_traces(teacher, train, test, cfg, args.state,
                                                  progress=not args.no_progress, comm=comm)
    if not rank0():
        return metrics
    write_jsonl(args.out / "traces.jsonl", kept)
    write_jsonl(args.out / "rejected.jsonl", rejected)
    metrics.update(run_facts(skipped))
    write_json(args.metrics, metrics)
    print(f"{args.out}: kept {metrics['kept']} of {metrics['samples']} samples on {metrics['problems_sampled']} "
          f"problems (coverage {metrics['coverage']:.1%}); rejected {metrics['rejected']}; "
          f"contamination dropped {metrics['contaminated']}")
    return metrics


if __name__ == "__main__":
    main()
