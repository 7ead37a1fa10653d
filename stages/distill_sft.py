"""Stage `distill_sft`: supervised fine-tuning of the student on verified teacher traces (chapter 8).

Trains in the base's own chat template (loss on the response only), with validation loss each
epoch. Writes OUT (a complete HF checkpoint: the base's tokenizer files and template, a
generation_config.json stopping at <|im_end|> or <|endoftext|>, and metadata.json naming the prompt
to evaluate it with), METRICS, CURVE (loss, lr, grad norm, throughput per step) and VAL_CURVE (validation loss
at each epoch's end), JSON lists for DVC plots and MLflow, and CHART (both losses as a PNG). Glue only: params
section -> SFTConfig -> reasoning.distill.build_sft_examples -> reasoning.train. The full training
state lives in STATE/<hash of the run: student weights, traces, settings> (git-ignored): a killed
run resumes there and ends where an uninterrupted one would; it is deleted on success unless
--keep-state. Runs under torchrun unchanged (train.strategy: ddp or fsdp); rank 0 writes the outputs.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence

from reasoning.checkpoint import run_settings
from reasoning.config import run_dir
from reasoning.devices import resolve_device
from reasoning.distill import SFTConfig, build_sft_examples, student_prompt
from reasoning.files import read_jsonl, sha256_file, write_json
from reasoning.generate import hf_generation_config
from reasoning.prompts import prompt_hash
from reasoning.report import loss_chart
from reasoning.tokenizer import Tokenizer
from reasoning.train import train
from reasoning.weights import load_model, model_id, resolve, save_model

from .common import rank0, run_facts, stage_config, stage_parser


def main(argv: Sequence[str] | None = None) -> dict:
    ap = stage_parser("distill_sft", __doc__, [
        ("--model", "student to start from, e.g. data/models/base"),
        ("--traces", "verified traces, e.g. data/traces/traces.jsonl"),
        ("--out", "output checkpoint, e.g. data/models/sft"),
        ("--metrics", "metrics file"), ("--curve", "per-step training curve"),
        ("--val-curve", "validation loss per epoch"), ("--chart", "PNG of the training and validation loss"),
        ("--state", "training-state directory for resuming, e.g. runs/distill_sft"),
    ], epilog="Several processes (train.strategy ddp or fsdp): `torchrun --nproc_per_node N -m stages.distill_sft ...`")
    ap.add_argument("--keep-state", action="store_true", help="keep the training state after success")
    args = ap.parse_args(argv)

    cfg = stage_config(SFTConfig, "distill_sft", args)
    if not args.traces.exists():
        raise FileNotFoundError(f"{args.traces} not found: it is produced by `dvc repro teacher_traces`")
    ckpt = resolve(str(args.model))
    tok = Tokenizer(ckpt)
    train_ex, val_ex, counts = build_sft_examples(read_jsonl(args.traces), tok, cfg, str(args.traces))
    key = {"base": model_id(ckpt), "traces": sha256_file(args.traces), "think": cfg.think, "system": cfg.system,
           "val_problems": cfg.val_problems, "train": run_settings(cfg.train)}
    state = run_dir(args.state, key)
    model = load_model(ckpt)
    result = train(model, train_ex, cfg.train, state, val_ex)
    if not rank0():
        return result

    _, dtype = resolve_device(cfg.train.device, cfg.train.dtype)  # bf16 on CUDA, fp32 on CPU by default
    save_model(model, args.out, tokenizer_path=ckpt, dtype=dtype, generation_config=hf_generation_config(tok))
    prompt = student_prompt(cfg)
    p_hash = prompt_hash(prompt, tok.chat_template)
    write_json(args.out / "metadata.json", {
        "stage": "distill_sft", "base": str(args.model), "base_revision": key["base"], "traces": str(args.traces),
        "traces_sha256": key["traces"], "prompt": dataclasses.asdict(prompt), "prompt_hash": p_hash,
        "dtype": str(dtype).removeprefix("torch."),
    })
    log = read_jsonl(state / "metrics.jsonl")  # DVC plots want one shape per file: steps and validations apart
    curve, val_curve = [r for r in log if "loss" in r], [r for r in log if "val_loss" in r]
    write_json(args.curve, curve)
    write_json(args.val_curve, val_curve)
    loss_chart(curve, val_curve, args.chart, f"distillation SFT of {args.model}")
    metrics = {**result, **counts, "prompt_hash": p_hash, "state_dir": str(state), **run_facts()}
    write_json(args.metrics, metrics)
    if not args.keep_state:
        shutil.rmtree(state)
    print(f"{args.out}: {result['steps']} steps on {counts['train_examples']} traces, train loss "
          f"{result['train_loss']:.4f}, val loss {result['val_loss']}, {result['wall_s']:.0f}s")
    return metrics


if __name__ == "__main__":
    main()
