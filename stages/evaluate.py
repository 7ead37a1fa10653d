"""Stage `evaluate`: score a checkpoint on a dataset split; writes OUT/records.jsonl and OUT/metrics.json.

Glue only: params section -> EvalConfig -> reasoning.evaluate. A killed run resumes from
OUT/records.jsonl; `--regrade` recomputes verdicts and metrics from it without a model.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from reasoning.config import load_section, resolve_device, stable_hash
from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, evaluate, regrade
from reasoning.generate import Generator
from reasoning.io import sha256_file, write_json
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, resolve


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m stages.evaluate",
        description="Evaluate a model on a dataset split: writes OUT/records.jsonl (one record per problem: "
                    "prompt, completion, extracted answer, verdict, tokens, seconds) and OUT/metrics.json "
                    "(accuracy with a 95% Wilson interval, mean tokens, truncation rate, tokens/s). "
                    "Rerunning after a kill continues where it stopped.")
    ap.add_argument("--model", help="checkpoint directory (or hub id such as hf:Qwen/Qwen3-0.6B)")
    ap.add_argument("--data", help="dataset JSONL, e.g. data/datasets/test.jsonl")
    ap.add_argument("--out", required=True, type=Path, help="output directory, e.g. data/eval/base")
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    ap.add_argument("--section", default="evaluate",
                    help="section of the parameters file holding the EvalConfig (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N problems (overrides the params)")
    ap.add_argument("--regrade", action="store_true",
                    help="regrade OUT/records.jsonl and rewrite OUT/metrics.json, without a model")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)

    records_path = args.out / "records.jsonl"
    if args.regrade:
        metrics = regrade(records_path)
    else:
        if not args.model or not args.data:
            ap.error("--model and --data are required (unless --regrade)")
        cfg = load_section(EvalConfig, args.section, args.params)
        if args.limit is not None:
            cfg = dataclasses.replace(cfg, limit=args.limit)
        problems = read_dataset(args.data)
        device, dtype = resolve_device(cfg.device, cfg.dtype)
        ckpt = resolve(args.model)
        model = load_model(ckpt, dtype, device)
        generator = Generator(model, Tokenizer(ckpt), compile=cfg.compile, batch_size=cfg.batch_size)
        # The weights' hash names the model in every record, so a resume after retraining cannot
        # silently reuse the old model's records (e.g. under DVC with `persist: true`).
        model_id = stable_hash([sha256_file(f) for f in sorted(ckpt.glob("*.safetensors"))])
        _, metrics = evaluate(generator, problems, cfg, records_path, progress=not args.no_progress,
                              model_id=model_id)
    write_json(args.out / "metrics.json", metrics)
    print(f"{args.out}: accuracy {metrics['accuracy']:.3f} "
          f"[{metrics['ci_low']:.3f}, {metrics['ci_high']:.3f}] "
          f"on {metrics['n']} problems, {metrics['mean_generated_tokens']:.1f} tokens/answer, "
          f"truncated {metrics['truncation_rate']:.1%}, {metrics['tokens_per_s']:.1f} tok/s")
    return metrics


if __name__ == "__main__":
    main()
