"""Stage `inference_scaling`: a fixed model with more inference compute, on one test split.

Chain-of-thought, sampling, self-consistency, best-of-N and self-refinement at several budgets,
each sampled once at its largest budget. Writes OUT/records/<method>.jsonl, OUT/table.md and
OUT/table.csv (accuracy with 95% interval, paired difference to row 1, tokens, time),
OUT/frontier.png (accuracy vs. tokens with the Pareto frontier), OUT/metrics.json and
OUT/best.json (the most accurate setting). Glue only: params section `inference_scaling` ->
ScalingConfig -> reasoning.scaling.run_grid -> write_outputs. A killed run resumes from its
journal under STATE/<hash of model and data> (outside DVC's outputs, so under `dvc repro` too);
`--report` rebuilds the outputs from OUT/records without a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from reasoning.checkpoint import data_parallel
from reasoning.data import read_dataset
from reasoning.config import run_dir
from reasoning.files import read_jsonl, sha256_file
from reasoning.generate import load_generator
from reasoning.scaling import ScalingConfig, run_grid, write_outputs

from .common import add_run_flags, earlier_run_facts, rank0, run_facts, stage_config, stage_parser


def main(argv: Sequence[str] | None = None) -> dict:
    ap = stage_parser("inference_scaling", __doc__, [
        ("--model", "checkpoint directory or hub id, e.g. data/models/base"),
        ("--data", "dataset JSONL, e.g. data/datasets/test.jsonl"),
        ("--out", "output directory, e.g. data/scaling"),
        ("--state", "journal directory for resuming, e.g. runs/inference_scaling"),
    ], optional_paths=("--model", "--data", "--state"))
    add_run_flags(ap)
    ap.add_argument("--methods", nargs="+", metavar="NAME", help="run only these methods of the section")
    ap.add_argument("--report", action="store_true", help="rebuild the outputs from OUT/records without a model")
    args = ap.parse_args(argv)

    cfg = stage_config(ScalingConfig, "inference_scaling", args)
    if args.methods:
        unknown = sorted(set(args.methods) - {m.name for m in cfg.methods})
        if unknown:
            ap.error(f"--methods {unknown} not in {args.params}:inference_scaling; "
                     f"it has {[m.name for m in cfg.methods]}")
        cfg = dataclasses.replace(cfg, methods=tuple(m for m in cfg.methods if m.name in args.methods))
    records_dir = args.out / "records"
    skipped: dict[str, int] = {}  # rows without an id, problem or answer: skipped, counted, warned about
    if args.report:
        missing = [m.name for m in cfg.methods if not (records_dir / f"{m.name}.jsonl").exists()]
        if missing:
            ap.error(f"no records for {missing} in {records_dir}: run without --report first")
        records = {m.name: read_jsonl(records_dir / f"{m.name}.jsonl") for m in cfg.methods}
    else:
        if not args.model or not args.data or not args.state:
            ap.error("--model, --data and --state are required (unless --report)")
        problems = read_dataset(args.data, skipped=skipped)[:cfg.limit]
        generator = load_generator(args.model, cfg)
        journals = run_dir(args.state, {"model": generator.model_id, "data": sha256_file(args.data)})
        with data_parallel(generator.model.device) as comm:  # torchrun: the problems split over the ranks
            records = run_grid(generator, problems, cfg.methods, journals, cfg.seed, cfg.batch_size,
                               progress=not args.no_progress, comm=comm)
        if not rank0():
            return {}
    # the table's model column: the checkpoint's name, else (--report alone) its weights' hash
    model = (args.model.name or str(args.model)) if args.model else records[cfg.methods[0].name][0]["model_id"]
    facts = earlier_run_facts(args.out / "metrics.json") if args.report else run_facts(skipped)
    metrics = write_outputs(args.out, cfg.methods, records, model, facts)
    print((args.out / "table.md").read_text())
    best = metrics["best"]
    print(f"best: {best['method']}@{best['budget']} accuracy {best['accuracy']:.3f} "
          f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}] -> {args.out / 'best.json'}")
    return metrics


if __name__ == "__main__":
    main()
