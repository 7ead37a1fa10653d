"""Stage `load_base`: the base model as a checkpoint in our format; writes OUT (+ metadata.json), METRICS, CURVE, CHART.

Glue only: params section -> LoadBaseConfig. `source: toy` pretrains the embedded toy world's
base model on the train split (reasoning.toy.pretrain); `hf:<repo>[@<revision>]` or a local
checkpoint directory is loaded with reasoning.weights and re-saved with its own tokenizer files,
chat template and generation_config.json, so every later stage reads one format. metadata.json
records the source, the resolved revision, the model's identity (the content hash of its weights,
weights.model_id) and the parameter count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reasoning.data import read_dataset
from reasoning.devices import resolve_device
from reasoning.files import write_json
from reasoning.report import loss_chart
from reasoning.toy.pretrain import ToyBaseConfig, build_base
from reasoning.weights import load_model, model_id, resolve, save_model

from .common import run_facts, stage_config, stage_parser

PROGRESS_EVERY = 100  # training steps between progress lines


@dataclass(frozen=True)
class LoadBaseConfig:
    source: str = "toy"  # toy | hf:<repo>[@<revision>] | a local checkpoint directory
    dtype: str = "auto"  # saved weights of a loaded checkpoint; auto: the dtype its config.json names
    toy: ToyBaseConfig = ToyBaseConfig()


def _load_and_resave(cfg: LoadBaseConfig, out: Path) -> dict:
    t0 = time.perf_counter()
    ckpt = resolve(cfg.source, setting="load_base.source")
    hf_cfg = json.loads((ckpt / "config.json").read_text())
    dtype_name = (hf_cfg.get("torch_dtype") or hf_cfg.get("dtype") or "float32") if cfg.dtype == "auto" else cfg.dtype
    _, dtype = resolve_device("cpu", dtype_name)
    model = load_model(ckpt, dtype)
    save_model(model, out, tokenizer_path=ckpt)  # with its own tokenizer files and generation_config.json
    # A hub snapshot lives in .../snapshots/<commit>: that commit pins what was loaded.
    revision = ckpt.name if ckpt.parent.name == "snapshots" else None
    return {"params": model.config.n_params, "load_wall_s": time.perf_counter() - t0, "revision": revision,
            "dtype": str(dtype).removeprefix("torch.")}


def main(argv: Sequence[str] | None = None) -> dict:
    args = stage_parser("load_base", __doc__, [
        ("--train", "training split (the toy world's pretraining corpus), e.g. data/datasets/train.jsonl"),
        ("--out", "output checkpoint directory, e.g. data/models/base"),
        ("--metrics", "metrics file"), ("--curve", "pretraining loss per step (toy world)"),
        ("--chart", "PNG of the pretraining and validation loss"),
    ]).parse_args(argv)
    cfg = stage_config(LoadBaseConfig, "load_base", args)
    curve: list[dict] = []
    val: list[dict] = []  # validation losses: on the chart, not in CURVE (DVC plots want one shape per file)

    def log(step: int, metrics: dict[str, float]) -> None:
        (curve if "loss" in metrics else val).append({"step": step, **metrics})
        if "loss" in metrics and step % PROGRESS_EVERY == 0:
            print(f"step {step}: loss {metrics['loss']:.3f}, {metrics['tokens_per_s']:.0f} tokens/s")

    skipped: dict[str, int] = {}  # rows without an id, problem or answer: skipped, counted, warned about
    if cfg.source == "toy":
        metrics, revision = build_base(read_dataset(args.train, skipped=skipped), args.out, cfg.toy, log=log), None
    else:
        metrics = _load_and_resave(cfg, args.out)
        revision = metrics.pop("revision")
    metrics.update(run_facts(skipped))
    write_json(args.out / "metadata.json", {"source": cfg.source, "revision": revision,
                                            "model_id": model_id(args.out), "params": metrics["params"]})
    write_json(args.metrics, metrics)
    write_json(args.curve, curve)
    loss_chart(curve, val, args.chart, f"base model: pretraining loss ({cfg.source})")
    print(f"{args.out}: {metrics['params']:,} parameters from {cfg.source}")
    return metrics


if __name__ == "__main__":
    main()
