"""Stage `grpo`: reinforcement learning with verifiable rewards from the base or SFT model (chapters 6, 7).

Glue only: params section -> GRPOStageConfig -> reasoning.grpo.train_grpo. The held-out metric is
reasoning.evaluate.evaluate (the function every evaluation uses: graded answers, independent of the
training reward) on the first `eval.limit` test problems, before the first step, every
`train.eval_every` steps and after the last; the model kept is the last step's, so nothing is chosen
on those problems. Writes OUT (checkpoint + tokenizer + metadata.json naming the prompt to evaluate
it with), METRICS (start and final held-out accuracy with 95% Wilson intervals, reward summary),
CURVE (one row per step: rewards, zero-variance groups, lengths, truncation, clip ratio, entropy,
KL, grad norm, step time, tokens/s) and EVAL_CURVE (held-out accuracy per evaluation), the curves
as JSON lists for DVC plots and MLflow. The full training state lives in STATE/<hash of start
model, data and settings> (git-ignored): a killed run resumes there and ends as an uninterrupted
one; it is deleted on success unless --keep-state. Under `torchrun` rank 0 evaluates and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reasoning.config import load_section, resolve_device, stable_hash
from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, evaluate
from reasoning.generate import Generator
from reasoning.grpo import RUN_ONLY_FIELDS, GRPOConfig, train_grpo
from reasoning.io import read_json, read_jsonl, sha256_file, write_json, write_jsonl
from reasoning.metrics import compare_records
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, resolve, save_model


@dataclass(frozen=True)
class GRPOStageConfig:
    start_from: str = "base"  # base | sft: the model in data/models/<start_from> (--model overrides)
    eval: EvalConfig = EvalConfig(limit=200)  # held-out evaluation; device/dtype: the training model's
    train: GRPOConfig = GRPOConfig()

    def __post_init__(self) -> None:
        if self.start_from not in ("base", "sft"):
            raise ValueError(f"grpo.start_from {self.start_from!r} is unknown; use 'base' or 'sft'")
        if self.eval.prompt != self.train.prompt:
            raise ValueError(f"grpo.eval.prompt {self.eval.prompt} differs from grpo.train.prompt "
                             f"{self.train.prompt}: evaluate the model behind the prompt it is trained on")


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m stages.grpo", description=__doc__, epilog="Several processes: `torchrun "
        "--nproc_per_node N -m stages.grpo ...`.", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint to start from (default: data/models/<start_from>)")
    for flag, default, what in [
        ("--train", "data/datasets/train.jsonl", "training split"),
        ("--test", "data/datasets/test.jsonl", "held-out split"),
        ("--out", "data/models/grpo", "output checkpoint"),
        ("--metrics", "data/metrics/grpo.json", "metrics file"),
        ("--curve", "data/plots/grpo.json", "per-step metrics"),
        ("--eval-curve", "data/plots/grpo_eval.json", "held-out accuracy per evaluation"),
        ("--params", "params.yaml", "parameters file"),
        ("--state", "runs/grpo", "training state for resuming"),
    ]:
        ap.add_argument(flag, default=default, type=Path, help=f"{what} (default: %(default)s)")
    ap.add_argument("--section", default="grpo", help="params section (default: %(default)s)")
    ap.add_argument("--keep-state", action="store_true", help="keep the training state after success")
    args = ap.parse_args(argv)

    cfg = load_section(GRPOStageConfig, args.section, args.params)
    ckpt = resolve(args.model or f"data/models/{cfg.start_from}")
    train_rows, held_out = read_dataset(args.train), read_dataset(args.test)[:cfg.eval.limit]
    meta = read_json(ckpt / "metadata.json") if (ckpt / "metadata.json").exists() else {}
    if meta.get("prompt", dataclasses.asdict(cfg.train.prompt)) != dataclasses.asdict(cfg.train.prompt):
        warnings.warn(f"{ckpt} was trained behind the prompt {meta['prompt']}, GRPO uses "
                      f"{cfg.train.prompt}; set grpo.train.prompt (and grpo.eval.prompt) to it unless the "
                      "change is deliberate", stacklevel=2)
    run = {"start": stable_hash([sha256_file(f) for f in sorted(ckpt.glob("*.safetensors"))]),
           "train": sha256_file(args.train),
           "settings": {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RUN_ONLY_FIELDS}}
    state = args.state / stable_hash(run)
    tok = Tokenizer(ckpt)
    model = load_model(ckpt)  # fp32 master weights; bf16 autocast per train.dtype
    generator: list[Generator] = []  # built on first use, then reused: one engine for every evaluation
    start_records, last_records = state / "eval_start.jsonl", []  # for the paired test, start vs end

    def held_out_metrics(m) -> dict:
        if not generator:
            generator.append(Generator(m, tok, compile=cfg.eval.compile, batch_size=cfg.eval.batch_size))
        records, metrics = evaluate(generator[0], held_out, cfg.eval, progress=False)
        if not start_records.exists():  # the first evaluation is the starting model's (kept for a resume)
            write_jsonl(start_records, records)
        last_records[:] = records
        return metrics

    def log(step: int, m: dict) -> None:
        keys = ("reward_mean", "frac_zero_std", "completion_len_mean", "eval_accuracy")
        shown = {k: m[k] for k in keys if k in m}
        print(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()), flush=True)

    ref_model = load_model(ckpt) if cfg.train.beta else None  # frozen copy for the KL penalty
    result = train_grpo(model, ref_model, tok, train_rows, cfg.train, state, eval_fn=held_out_metrics,
                        log=log)
    if int(os.environ.get("RANK", "0")) != 0:
        return result
    _, dtype = resolve_device(cfg.train.device, cfg.train.dtype)  # bf16 on CUDA, fp32 on CPU by default
    save_model(model, args.out, tokenizer_path=ckpt, dtype=dtype)
    write_json(args.out / "metadata.json", {
        "stage": "grpo", "start_from": str(args.model or cfg.start_from), "start_revision": run["start"],
        "train_sha256": run["train"], "prompt": dataclasses.asdict(cfg.train.prompt),
        "prompt_hash": cfg.train.prompt.hash, "dtype": str(dtype).removeprefix("torch.")})
    rows = read_jsonl(state / "metrics.jsonl")
    steps = [r for r in rows if "reward_mean" in r]  # DVC plots want one shape per file: steps, evaluations
    evals = [{"step": r["step"], **{k[5:]: v for k, v in r.items() if k.startswith("eval_")}}
             for r in rows if "eval_accuracy" in r]
    write_json(args.curve, [{k: v for k, v in r.items() if not k.startswith("eval_")} for r in steps])
    write_json(args.eval_curve, evals)
    tenth = max(1, len(steps) // 10)
    metrics = {
        **{f"start_{k}": evals[0][k] for k in ("accuracy", "ci_low", "ci_high")},
        **{k: evals[-1][k] for k in ("accuracy", "ci_low", "ci_high", "n")},
        "accuracy_gain": evals[-1]["accuracy"] - evals[0]["accuracy"],
        "reward_first_tenth": sum(r["reward_mean"] for r in steps[:tenth]) / tenth,
        "reward_last_tenth": sum(r["reward_mean"] for r in steps[-tenth:]) / tenth,
        "warnings_reward_up_accuracy_down": sum(r.get("warning_reward_up_accuracy_down", 0) for r in rows),
        "steps": result["steps"], "resumed_from": result["resumed_from"], "wall_s": result["wall_s"],
        "train_s": sum(r["step_time"] for r in steps), "prompt_hash": cfg.train.prompt.hash,
        "state_dir": str(state),
    }
    if last_records:  # paired on the same problems: the test of "GRPO beat its starting model"
        c = compare_records(read_jsonl(start_records), last_records)
        metrics.update({f"paired_{k}": c[k] for k in ("diff", "ci_low", "ci_high", "p_value")})
    write_json(args.metrics, metrics)
    if not args.keep_state:
        shutil.rmtree(state)
    print(f"{args.out}: {result['steps']} GRPO steps, held-out accuracy {metrics['start_accuracy']:.3f} -> "
          f"{metrics['accuracy']:.3f} [{metrics['ci_low']:.3f}, {metrics['ci_high']:.3f}]"
          + (f", paired difference {metrics['paired_diff']:+.3f} [{metrics['paired_ci_low']:+.3f}, "
             f"{metrics['paired_ci_high']:+.3f}], McNemar p = {metrics['paired_p_value']:.2g}"
             if "paired_diff" in metrics else "") + f", {result['wall_s']:.0f}s")
    return metrics


if __name__ == "__main__":
    main()
