"""Stage `distill_sft`: supervised fine-tuning of the student on verified teacher traces (chapter 8).

Glue only: params section -> SFTConfig -> reasoning.distill.build_sft_examples -> reasoning.train.
Writes OUT (an HF-format checkpoint with tokenizer.json and metadata.json naming the prompt to
evaluate it with), METRICS, CURVE (loss, lr, grad norm, throughput per step) and VAL_CURVE
(validation loss at each epoch's end); the curves are JSON lists for DVC plots and MLflow. The
full training state lives in STATE/<hash of base, traces and settings> (git-ignored): a killed
run resumes there and ends where an uninterrupted one would; it is deleted on success unless
--keep-state. Runs under torchrun (DDP) unchanged; rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from reasoning.config import load_section, resolve_device, stable_hash
from reasoning.distill import SFTConfig, build_sft_examples, checkpoint_revision, student_prompt
from reasoning.io import JsonlAppender, read_json, read_jsonl, sha256_file, write_json, write_jsonl
from reasoning.tokenizer import Tokenizer
from reasoning.train import RUN_ONLY_FIELDS, latest_checkpoint, train
from reasoning.weights import load_model, resolve, save_model


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m stages.distill_sft",
        description="Fine-tune the student on verified teacher traces in the chat template (loss on the response "
                    "only), with validation loss each epoch and resumable full-state checkpoints. Launch with "
                    "`torchrun --nproc_per_node N -m stages.distill_sft ...` for DistributedDataParallel.")
    ap.add_argument("--model", default="data/models/base", help="student to start from (default: %(default)s)")
    ap.add_argument("--traces", default="data/traces/traces.jsonl", type=Path,
                    help="verified traces (default: %(default)s)")
    ap.add_argument("--out", default="data/models/sft", type=Path,
                    help="output checkpoint (default: %(default)s)")
    ap.add_argument("--metrics", default="data/metrics/distill_sft.json", type=Path,
                    help="metrics file (default: %(default)s)")
    ap.add_argument("--curve", default="data/plots/distill_sft.json", type=Path,
                    help="per-step training curve (default: %(default)s)")
    ap.add_argument("--val-curve", default="data/plots/distill_sft_val.json", type=Path,
                    help="validation loss per epoch (default: %(default)s)")
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    ap.add_argument("--section", default="distill_sft", help="params section (default: %(default)s)")
    ap.add_argument("--state", type=Path, default=Path("runs/distill_sft"),
                    help="training-state directory for resuming (default: %(default)s)")
    ap.add_argument("--keep-state", action="store_true", help="keep the training state after success")
    args = ap.parse_args(argv)

    cfg = load_section(SFTConfig, args.section, args.params)
    if not args.traces.exists():
        raise FileNotFoundError(f"{args.traces} not found: it is produced by `dvc repro teacher_traces`")
    ckpt = resolve(args.model)
    tok = Tokenizer(ckpt)
    train_ex, val_ex, counts = build_sft_examples(read_jsonl(args.traces), tok, cfg)
    run = {"base": checkpoint_revision(ckpt), "traces": sha256_file(args.traces), "think": cfg.think,
           "system": cfg.system, "val_problems": cfg.val_problems,
           "train": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RUN_ONLY_FIELDS}}
    state = args.state / stable_hash(run)
    rank0 = int(os.environ.get("RANK", "0")) == 0

    model = load_model(ckpt)
    if not rank0:  # train() logs and writes checkpoints on rank 0 only
        return train(model, train_ex, cfg.train, state, val_ex)
    log_path = state / "train_log.jsonl"
    # Drop log rows past the checkpoint we resume from: those steps run, and are logged, again.
    ckpt_dir = latest_checkpoint(state)
    resumed = read_json(ckpt_dir / "state.json")["step"] if ckpt_dir else 0
    write_jsonl(log_path, [r for r in read_jsonl(log_path) if r["step"] <= resumed])
    with JsonlAppender(log_path) as log_file:
        result = train(model, train_ex, cfg.train, state, val_ex,
                       log=lambda step, m: log_file.append({"step": step, **m}))

    _, dtype = resolve_device(cfg.train.device, cfg.train.dtype)  # bf16 on CUDA, fp32 on CPU by default
    save_model(model, args.out, tokenizer_path=ckpt, dtype=dtype)
    prompt = student_prompt(cfg)
    write_json(args.out / "metadata.json", {
        "stage": "distill_sft", "base": args.model, "base_revision": run["base"], "traces": str(args.traces),
        "traces_sha256": run["traces"], "prompt": dataclasses.asdict(prompt), "prompt_hash": prompt.hash,
        "dtype": str(dtype).removeprefix("torch."),
    })
    log = read_jsonl(log_path)  # DVC plots want one shape per file: steps and validations apart
    write_json(args.curve, [r for r in log if "loss" in r])
    write_json(args.val_curve, [r for r in log if "val_loss" in r])
    metrics = {**result, **counts, "prompt_hash": prompt.hash, "state_dir": str(state)}
    write_json(args.metrics, metrics)
    if not args.keep_state:
        shutil.rmtree(state)
    print(f"{args.out}: {result['steps']} steps on {counts['train_examples']} traces, train loss "
          f"{result['train_loss']:.4f}, val loss {result['val_loss']}, {result['wall_s']:.0f}s")
    return metrics


if __name__ == "__main__":
    main()
