"""Stage `final_eval`: every model of the pipeline on the same test split, compared with the baseline.

Writes OUT/table.md and table.csv (accuracy, 95% Wilson interval, paired accuracy
difference to the baseline with its 95% bootstrap interval and McNemar's exact p-value, mean
generated tokens, wall time), chart.png, compute.png (every model at matched compute: greedy and
by self-consistency at `compute`'s budgets), metrics.json and each model's records. Glue only:
params `final_eval` (which models) + `evaluate` (how: the one set of evaluation settings) ->
reasoning.scaling.evaluate_at_budgets -> reasoning.report. With `runs` (other training seeds'
final_eval outputs) the table adds each model's mean [min, max] over them. With `scaling` set, the inference_scaling
stage's best setting joins the table as a row "<baseline> + <setting>", read from that stage's
records (same problems, nothing generated again; checked before any model is evaluated). Each
model's records are journaled under STATE with the evaluate stage's key, so the baseline's records
of the evaluate stage are reused and a killed run resumes, under `dvc repro` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reasoning.checkpoint import data_parallel
from reasoning.config import load_section
from reasoning.devices import rank_device, resolve_device
from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, metrics_from_records
from reasoning.files import atomic_write_text, read_json, sha256_file, write_json, write_jsonl
from reasoning.grading import GRADER_VERSION
from reasoning.report import (COMPARISON_FIELDS, accuracy_chart, comparison_rows, comparison_table, compute_chart,
                              check_spread_runs, scaling_role, seed_spread_rows, seed_spread_table, write_csv)
from reasoning.scaling import ComputeConfig, best_on, best_within, describe, evaluate_at_budgets

from .common import rank0, run_facts, stage_config, stage_parser


@dataclass(frozen=True)
class FinalEvalConfig:
    models: dict[str, str] = field(default_factory=lambda: {"base": "data/models/base"})  # name -> checkpoint dir
    baseline: str = "base"
    scaling: str | None = None  # inference_scaling output dir: its best setting becomes a row; null: none
    compute: ComputeConfig = ComputeConfig()  # every model also by self-consistency: accuracy at matched tokens
    runs: tuple[str, ...] = ()  # final_eval output dirs of this pipeline run with other training seeds:
    # table.md and metrics.json add each model's accuracy as mean [min, max] over this run and those
    n_boot: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.baseline not in self.models:
            raise ValueError(f"final_eval.baseline {self.baseline!r} is not one of final_eval.models "
                             f"{sorted(self.models)}")


def main(argv: Sequence[str] | None = None) -> dict:
    args = stage_parser("final_eval", __doc__, [
        ("--data", "test split, e.g. data/datasets/test.jsonl"), ("--out", "output directory, e.g. data/final"),
        ("--state", "journal directory (the evaluate stage's, to reuse its records), e.g. runs/evaluate"),
    ]).parse_args(argv)
    cfg = stage_config(FinalEvalConfig, "final_eval", args)
    eval_cfg = load_section(EvalConfig, "evaluate", args.params)
    skipped: dict[str, int] = {}  # rows without an id, problem or answer: skipped, counted, warned about
    problems = read_dataset(args.data, skipped=skipped)[:eval_cfg.limit]
    best = best_on(cfg.scaling, problems, eval_cfg.limit) if cfg.scaling else None
    missing = [r for r in cfg.runs if not (Path(r) / "metrics.json").is_file()]
    if missing:  # checked before any model runs
        raise FileNotFoundError(f"final_eval.runs: no metrics.json in {missing}; list the output dirs of finished "
                                "final_eval runs, e.g. runs/bench_seeds/seed1/data/final (python -m bench.seeds)")
    others = [read_json(Path(r) / "metrics.json") for r in cfg.runs]
    check_spread_runs(others, cfg.runs, [*cfg.models, *([scaling_role(cfg.baseline)] if best else [])],
                      len(problems), cfg.baseline, GRADER_VERSION)
    results, points = {}, {}
    with data_parallel(rank_device(resolve_device(eval_cfg.device, eval_cfg.dtype)[0])) as comm:
        for name, path in cfg.models.items():  # torchrun: each model's problems split over the ranks
            records, metrics, points[name] = evaluate_at_budgets(Path(path), problems, eval_cfg, args.state,
                                                                 sha256_file(args.data), cfg.compute, comm)
            results[name] = (records, metrics)
            if rank0():
                write_jsonl(args.out / "records" / f"{name}.jsonl", results[name][0])
                print(f"{name}: accuracy {results[name][1]['accuracy']:.3f} on {results[name][1]['n']} problems")
    if not rank0():
        return {}
    if best:
        method, records = best
        results[f"{cfg.baseline} + {describe(method, method.budgets[-1])}"] = (records, metrics_from_records(records))
    rows = comparison_rows(results, cfg.baseline, cfg.n_boot, cfg.seed)
    budget = points[cfg.baseline][-1]["tokens_per_problem"] if cfg.compute.budgets else None
    if budget is not None:  # train, or spend inference compute? each model within the baseline's largest budget
        for r in rows:
            if r["model"] in points:
                r["best_at_budget"] = best_within(points[r["model"]], budget)
        compute_chart(points, args.out / "compute.png", budget)
    grader = {k: results[cfg.baseline][1][k] for k in ("grader", "grader_version")}  # one grader judged all
    metrics = {"baseline": cfg.baseline, "models": {r.pop("model"): r for r in [dict(r) for r in rows]},
               "compute": {name: {p.pop("label"): p for p in map(dict, pts)} for name, pts in points.items()},
               **grader, **run_facts(skipped)}
    table = comparison_table(rows, cfg.baseline)
    if others:  # the seed spread: what the figures move by with the training seed (or the machine)
        metrics["spread"] = seed_spread_rows([metrics, *others], cfg.baseline)
        table += "\n" + seed_spread_table(metrics["spread"], cfg.baseline)
    atomic_write_text(args.out / "table.md", table)
    write_csv(args.out / "table.csv", rows, COMPARISON_FIELDS)
    accuracy_chart(rows, args.out / "chart.png")
    write_json(args.out / "metrics.json", metrics)
    print(table)
    return metrics


if __name__ == "__main__":
    main()
