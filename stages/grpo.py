"""Stage `grpo`: reinforcement learning with verifiable rewards from MODELS/<start_from> (chapters 6, 7).

Glue only: params section -> GRPOStageConfig -> reasoning.grpo.train_grpo -> run_summary. Held-out
accuracy is reasoning.evaluate on the first `eval.limit` test problems (before the first step, every
`train.eval_every` steps, after the last); the last step's model is kept, so nothing is chosen on
them. Writes OUT (a complete HF checkpoint with the start model's tokenizer files and template, the
evaluation's sampling as generation_config.json's defaults, and metadata.json naming the prompt to
evaluate it with), METRICS (start and final accuracy, the paired start-vs-end test, rewards), CURVE
(per step), EVAL_CURVE (per evaluation) and CHART (reward and held-out accuracy, PNG). The training
state lives in STATE/<hash of start model, data, settings>: a killed run resumes there; it is deleted
on success unless --keep-state. Under torchrun rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from reasoning.checkpoint import run_settings
from reasoning.config import run_dir
from reasoning.data import read_dataset
from reasoning.devices import resolve_device
from reasoning.evaluate import EvalConfig, evaluate
from reasoning.files import read_json, read_jsonl, sha256_file, write_json, write_jsonl
from reasoning.generate import Generator, hf_generation_config
from reasoning.grading import GRADER_VERSION
from reasoning.grpo import GRPOConfig, run_summary, train_grpo
from reasoning.prompts import prompt_hash
from reasoning.report import grpo_chart
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, model_id, resolve, save_model

from .common import rank0, run_facts, stage_config, stage_parser


@dataclass(frozen=True)
class GRPOStageConfig:
    start_from: str = "base"  # base | sft: the model in MODELS/<start_from>
    eval: EvalConfig = EvalConfig(limit=200)  # held-out evaluation; device/dtype: the training model's
    train: GRPOConfig = GRPOConfig()

    def __post_init__(self) -> None:
        if self.start_from not in ("base", "sft"):
            raise ValueError(f"grpo.start_from {self.start_from!r} is unknown; use 'base' or 'sft'")
        if self.eval.prompt != self.train.prompt:
            raise ValueError(f"grpo.eval.prompt {self.eval.prompt} differs from grpo.train.prompt "
                             f"{self.train.prompt}: evaluate the model behind the prompt it is trained on")


def main(argv: Sequence[str] | None = None) -> dict:
    ap = stage_parser("grpo", __doc__, [
        ("--models", "directory of the pipeline's models; GRPO starts from MODELS/<start_from>"),
        ("--train", "training split"), ("--test", "held-out split"), ("--out", "output checkpoint"),
        ("--metrics", "metrics file"), ("--curve", "per-step metrics"),
        ("--eval-curve", "held-out accuracy per evaluation"), ("--chart", "PNG of the reward and held-out accuracy"),
        ("--state", "training state for resuming"),
    ], epilog="Several processes: `torchrun --nproc_per_node N -m stages.grpo ...`.")
    ap.add_argument("--keep-state", action="store_true", help="keep the training state after success")
    args = ap.parse_args(argv)

    cfg = stage_config(GRPOStageConfig, "grpo", args)
    ckpt = resolve(str(args.models / cfg.start_from))
    skipped: dict[str, int] = {}  # rows without an id, problem or answer: skipped, counted, warned about
    train_rows = read_dataset(args.train, skipped=skipped)
    held_out = read_dataset(args.test, skipped=skipped)[:cfg.eval.limit]
    trained_for = read_json(ckpt / "metadata.json").get("prompt") if (ckpt / "metadata.json").exists() else None
    if trained_for not in (None, dataclasses.asdict(cfg.train.prompt)):
        warnings.warn(f"{ckpt} was trained behind the prompt {trained_for}, GRPO uses {cfg.train.prompt}; set "
                      "grpo.train.prompt (and grpo.eval.prompt) to it unless the change is deliberate", stacklevel=2)
    key = {"start": model_id(ckpt), "train": sha256_file(args.train), "settings": run_settings(cfg.train),
           "grader": GRADER_VERSION}  # a resume never mixes rewards of two graders
    state = run_dir(args.state, key)
    tok = Tokenizer(ckpt)
    model = load_model(ckpt)  # fp32 master weights; bf16 autocast per train.dtype
    generator: list[Generator] = []  # built on first use, then reused: one engine for every evaluation
    start_records, last_records = state / "eval_start.jsonl", []  # for the paired test, start vs end

    def held_out_metrics(m) -> dict:
        if not generator:
            generator.append(Generator(m, tok, compile=cfg.eval.compile, batch_size=cfg.eval.batch_size,
                                       matmul_dtype=cfg.eval.matmul_dtype))
        records, metrics = evaluate(generator[0], held_out, cfg.eval, progress=False)
        if not start_records.exists():  # the first evaluation is the starting model's (kept for a resume)
            write_jsonl(start_records, records)
        last_records[:] = records
        return metrics

    def log(step: int, m: dict) -> None:
        shown = {k: m[k] for k in ("reward_mean", "frac_zero_std", "completion_len_mean", "eval_accuracy") if k in m}
        print(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()), flush=True)

    ref_model = load_model(ckpt) if cfg.train.beta else None  # frozen copy for the KL penalty
    result = train_grpo(model, ref_model, tok, train_rows, cfg.train, state, eval_fn=held_out_metrics, log=log)
    if not rank0():
        return result
    _, dtype = resolve_device(cfg.train.device, cfg.train.dtype)  # bf16 on CUDA, fp32 on CPU by default
    save_model(model, args.out, tokenizer_path=ckpt, dtype=dtype,
               generation_config=hf_generation_config(tok, cfg.eval.sampling))
    p_hash = prompt_hash(cfg.train.prompt, tok.chat_template)
    write_json(args.out / "metadata.json", {
        "stage": "grpo", "start_from": cfg.start_from, "start_revision": key["start"], "train_sha256": key["train"],
        "prompt": dataclasses.asdict(cfg.train.prompt), "prompt_hash": p_hash,
        "dtype": str(dtype).removeprefix("torch.")})
    curve, evals, metrics = run_summary(read_jsonl(state / "metrics.jsonl"), result, read_jsonl(start_records),
                                        last_records)
    write_json(args.curve, curve)
    write_json(args.eval_curve, evals)
    grpo_chart(curve, evals, args.chart, f"GRPO from {cfg.start_from}")
    metrics.update(prompt_hash=p_hash, state_dir=str(state), **run_facts(skipped))
    write_json(args.metrics, metrics)
    if not args.keep_state:
        shutil.rmtree(state)
    print(f"{args.out}: {result['steps']} GRPO steps, held-out accuracy {metrics['start_accuracy']:.3f} -> "
          f"{metrics['accuracy']:.3f} [{metrics['ci_low']:.3f}, {metrics['ci_high']:.3f}], paired difference "
          f"{metrics['paired_diff']:+.3f} [{metrics['paired_ci_low']:+.3f}, {metrics['paired_ci_high']:+.3f}], "
          f"McNemar p = {metrics['paired_p_value']:.2g}, {result['wall_s']:.0f}s")
    return metrics


if __name__ == "__main__":
    main()
