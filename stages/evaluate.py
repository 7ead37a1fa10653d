"""Stage `evaluate`: score a checkpoint on a dataset split.

Writes OUT/records.jsonl (one record per problem: prompt, completion, extracted answer, verdict,
tokens, seconds) and OUT/metrics.json (accuracy with a 95% Wilson interval, mean tokens,
truncation rate, tokens/s). Glue only: params section `evaluate` -> EvalConfig ->
reasoning.evaluate. Records are journaled under STATE/<hash of model, data, settings> (outside
DVC's outputs): a killed run resumes there, under `dvc repro` too, and a rerun generates nothing
again. `--regrade` recomputes verdicts and metrics from OUT/records.jsonl without a model.
"""

from __future__ import annotations

from collections.abc import Sequence

from reasoning.checkpoint import data_parallel
from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, evaluate, evaluation_journal, regrade
from reasoning.files import sha256_file, write_json, write_jsonl
from reasoning.generate import load_generator

from .common import add_run_flags, earlier_run_facts, rank0, run_facts, stage_config, stage_parser


def main(argv: Sequence[str] | None = None) -> dict:
    ap = stage_parser("evaluate", __doc__, [
        ("--model", "checkpoint directory or hub id (hf:Qwen/Qwen3-0.6B-Base)"),
        ("--data", "dataset JSONL, e.g. data/datasets/test.jsonl"),
        ("--out", "output directory, e.g. data/eval/base"),
        ("--state", "journal directory for resuming, e.g. runs/evaluate"),
    ], optional_paths=("--model", "--data", "--state"))
    add_run_flags(ap)
    ap.add_argument("--regrade", action="store_true",
                    help="regrade OUT/records.jsonl and rewrite OUT/metrics.json, without a model")
    args = ap.parse_args(argv)

    records_path = args.out / "records.jsonl"
    if args.regrade:
        metrics = {**regrade(records_path), **earlier_run_facts(args.out / "metrics.json")}
    else:
        if not args.model or not args.data or not args.state:
            ap.error("--model, --data and --state are required (unless --regrade)")
        cfg = stage_config(EvalConfig, "evaluate", args)
        generator = load_generator(args.model, cfg)
        skipped: dict[str, int] = {}  # rows without an id, problem or answer: skipped, counted, warned about
        with data_parallel(generator.model.device) as comm:  # torchrun: the problems split over the ranks
            records, metrics = evaluate(generator, read_dataset(args.data, skipped=skipped), cfg,
                                        evaluation_journal(args.state, generator.model_id, sha256_file(args.data),
                                                           cfg), progress=not args.no_progress, comm=comm)
        metrics.update(run_facts(skipped))
        if not rank0():
            return metrics
        write_jsonl(records_path, records)
    write_json(args.out / "metrics.json", metrics)
    print(f"{args.out}: accuracy {metrics['accuracy']:.3f} "
          f"[{metrics['ci_low']:.3f}, {metrics['ci_high']:.3f}] "
          f"on {metrics['n']} problems, {metrics['mean_generated_tokens']:.1f} tokens/answer, "
          f"truncated {metrics['truncation_rate']:.1%}, {metrics['tokens_per_s']:.1f} tok/s")
    return metrics


if __name__ == "__main__":
    main()
