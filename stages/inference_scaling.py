"""Stage `inference_scaling`: a grid of methods x budgets on one test split; writes
OUT/records/<method>.jsonl, OUT/table.md, OUT/table.csv, OUT/frontier.png, OUT/metrics.json and
OUT/best.json.

Glue only: params section -> ScalingConfig -> reasoning.scaling.run_grid -> write_outputs. A killed
run resumes from the records; `--report` rebuilds the outputs from them without a model.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from reasoning.config import load_section, resolve_device, stable_hash
from reasoning.data import read_dataset
from reasoning.generate import Generator
from reasoning.io import read_jsonl, sha256_file
from reasoning.scaling import ScalingConfig, run_grid, write_outputs
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, resolve


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m stages.inference_scaling",
        description="Measure inference-time scaling of a fixed model: chain-of-thought, sampling, "
                    "self-consistency, best-of-N and self-refinement at several budgets, each sampled once "
                    "at its largest budget. Writes a table (accuracy with 95%% interval, tokens, time), an "
                    "accuracy-vs-tokens plot with the Pareto frontier, metrics.json and best.json (the "
                    "most accurate setting).")
    ap.add_argument("--model", default="data/models/base",
                    help="checkpoint directory or hub id (default: %(default)s)")
    ap.add_argument("--data", default="data/datasets/test.jsonl", help="dataset JSONL (default: %(default)s)")
    ap.add_argument("--out", default="data/scaling", type=Path,
                    help="output directory (default: %(default)s)")
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    ap.add_argument("--section", default="inference_scaling",
                    help="section of the parameters file (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="use only the first N problems (overrides the params)")
    ap.add_argument("--methods", nargs="+", metavar="NAME", help="run only these methods of the section")
    ap.add_argument("--report", action="store_true",
                    help="rebuild the outputs from OUT/records without a model")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = ap.parse_args(argv)

    cfg = load_section(ScalingConfig, args.section, args.params)
    if args.limit is not None:
        cfg = dataclasses.replace(cfg, limit=args.limit)
    if args.methods:
        unknown = sorted(set(args.methods) - {m.name for m in cfg.methods})
        if unknown:
            ap.error(f"--methods {unknown} not in {args.params}:{args.section}; "
                     f"it has {[m.name for m in cfg.methods]}")
        cfg = dataclasses.replace(cfg, methods=tuple(m for m in cfg.methods if m.name in args.methods))
    records_dir = args.out / "records"
    if args.report:
        missing = [m.name for m in cfg.methods if not (records_dir / f"{m.name}.jsonl").exists()]
        if missing:
            ap.error(f"no records for {missing} in {records_dir}: run without --report first")
        records = {m.name: read_jsonl(records_dir / f"{m.name}.jsonl") for m in cfg.methods}
    else:
        problems = read_dataset(args.data)[:cfg.limit]
        device, dtype = resolve_device(cfg.device, cfg.dtype)
        ckpt = resolve(args.model)
        generator = Generator(load_model(ckpt, dtype, device), Tokenizer(ckpt), compile=cfg.compile,
                              batch_size=cfg.batch_size)
        model_id = stable_hash([sha256_file(f) for f in sorted(ckpt.glob("*.safetensors"))])  # as evaluate
        records = run_grid(generator, problems, cfg.methods, records_dir, cfg.seed, cfg.batch_size,
                           progress=not args.no_progress, model_id=model_id)
    metrics = write_outputs(args.out, cfg.methods, records, Path(args.model).name or args.model)
    print((args.out / "table.md").read_text())
    best = metrics["best"]
    print(f"best: {best['method']}@{best['budget']} accuracy {best['accuracy']:.3f} "
          f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}] -> {args.out / 'best.json'}")
    return metrics


if __name__ == "__main__":
    main()
