"""Stage `final_eval`: every model of the pipeline on the same test split, compared with the baseline.

Writes OUT/table.md and table.csv (accuracy, 95% Wilson interval, paired accuracy
difference to the baseline with its 95% bootstrap interval and McNemar's exact p-value, mean
generated tokens, wall time), chart.png, metrics.json and each model's records. Glue only:
params `final_eval` (which models) + `evaluate` (how: the one set of evaluation settings) ->
reasoning.evaluate -> reasoning.report. With `scaling` set, the inference_scaling
stage's best setting joins the table as a row "<baseline> + <setting>", read from that stage's
records (same test split, nothing generated again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reasoning.config import from_dict, load_section
from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, evaluate, metrics_from_records
from reasoning.files import atomic_write_text, read_json, write_json
from reasoning.generate import load_generator
from reasoning.prompts import PromptConfig
from reasoning.report import COMPARISON_FIELDS, accuracy_chart, comparison_rows, comparison_table, write_csv
from reasoning.scaling import describe, load_best

from .common import stage_config, stage_parser


@dataclass(frozen=True)
class FinalEvalConfig:
    models: dict[str, str] = field(default_factory=lambda: {"base": "data/models/base"})  # name -> checkpoint dir
    baseline: str = "base"
    scaling: str | None = None  # inference_scaling output dir: its best setting becomes a row; null: none
    n_boot: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.baseline not in self.models:
            raise ValueError(f"final_eval.baseline {self.baseline!r} is not one of final_eval.models "
                             f"{sorted(self.models)}")


def model_eval_config(path: Path, cfg: EvalConfig) -> EvalConfig:
    """The shared settings, with the prompt a model was trained for when its metadata.json names one
    (the sft and grpo stages record it): each model is measured the way it is meant to be used."""
    meta = path / "metadata.json"
    prompt = read_json(meta).get("prompt") if meta.exists() else None
    return dataclasses.replace(cfg, prompt=from_dict(PromptConfig, prompt)) if prompt else cfg


def evaluate_model(path: Path, problems: list[dict], cfg: EvalConfig, records: Path) -> tuple[list, dict]:
    """(records, metrics) of the checkpoint `path` on `problems`, behind the prompt it was trained for."""
    cfg = model_eval_config(path, cfg)
    return evaluate(load_generator(path, cfg), problems, cfg, records, progress=False)


def main(argv: Sequence[str] | None = None) -> dict:
    args = stage_parser("final_eval", __doc__, [("--data", "test split, e.g. data/datasets/test.jsonl"),
                                                ("--out", "output directory, e.g. data/final")]).parse_args(argv)
    cfg = stage_config(FinalEvalConfig, "final_eval", args)
    eval_cfg = load_section(EvalConfig, "evaluate", args.params)
    problems = read_dataset(args.data)
    results = {}
    for name, path in cfg.models.items():
        results[name] = evaluate_model(Path(path), problems, eval_cfg, args.out / "records" / f"{name}.jsonl")
        print(f"{name}: accuracy {results[name][1]['accuracy']:.3f} on {results[name][1]['n']} problems")
    if cfg.scaling:
        method, records = load_best(cfg.scaling)
        if [r["id"] for r in records] != [str(p["id"]) for p in problems]:
            raise ValueError(f"{cfg.scaling} was measured on other problems than {args.data}; rerun "
                             "inference_scaling")
        results[f"{cfg.baseline} + {describe(method, method.budgets[-1])}"] = (records, metrics_from_records(records))
    rows = comparison_rows(results, cfg.baseline, cfg.n_boot, cfg.seed)
    table = comparison_table(rows, cfg.baseline)
    atomic_write_text(args.out / "table.md", table)
    write_csv(args.out / "table.csv", rows, COMPARISON_FIELDS)
    accuracy_chart(rows, args.out / "chart.png")
    metrics = {"baseline": cfg.baseline, "models": {r.pop("model"): r for r in [dict(r) for r in rows]}}
    write_json(args.out / "metrics.json", metrics)
    print(table)
    return metrics


if __name__ == "__main__":
    main()
