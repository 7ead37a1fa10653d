"""Stage `final_eval`: every model of the pipeline on the same test split, compared with the baseline.

Writes OUT/table.md and table.csv (accuracy, 95% Wilson interval, paired accuracy
difference to the baseline with its 95% bootstrap interval and McNemar's exact p-value, mean
generated tokens, wall time), chart.png, metrics.json and each model's records. Glue only:
params `final_eval` (which models) + `evaluate` (how: the one set of evaluation settings) ->
reasoning.evaluate -> reasoning.report. With `scaling` set, the inference_scaling
stage's best setting joins the table as a row "<baseline> + <setting>", read from that stage's
records (same problems, nothing generated again; checked before any model is evaluated). Each
model's records are journaled under STATE with the evaluate stage's key, so the baseline's records
of the evaluate stage are reused and a killed run resumes, under `dvc repro` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reasoning.checkpoint import Dist, data_parallel
from reasoning.config import from_dict, load_section
from reasoning.devices import rank_device, resolve_device
from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, evaluate, evaluation_journal, metrics_from_records
from reasoning.files import atomic_write_text, read_json, sha256_file, write_json, write_jsonl
from reasoning.generate import load_generator
from reasoning.prompts import PromptConfig
from reasoning.records import journal
from reasoning.report import (COMPARISON_FIELDS, accuracy_chart, comparison_rows, comparison_table, compute_chart,
                              write_csv)
from reasoning.scaling import ComputeConfig, best_within, compute_points, describe, load_best, run_method

from .common import rank0, run_facts, stage_config, stage_parser


@dataclass(frozen=True)
class FinalEvalConfig:
    models: dict[str, str] = field(default_factory=lambda: {"base": "data/models/base"})  # name -> checkpoint dir
    baseline: str = "base"
    scaling: str | None = None  # inference_scaling output dir: its best setting becomes a row; null: none
    compute: ComputeConfig = ComputeConfig()  # every model also by self-consistency: accuracy at matched tokens
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


def evaluate_model(path: Path, problems: list[dict], cfg: EvalConfig, state: Path, data_sha: str,
                   compute: ComputeConfig = ComputeConfig(budgets=()),
                   comm: Dist | None = None) -> tuple[list, dict, list]:
    """(records, metrics, compute points) of the checkpoint `path` on `problems`, behind the prompt it
    was trained for: greedy, then by self-consistency at `compute`'s budgets (scaling.compute_points).

    Journaled under `state` with the evaluate stage's key (model, data, settings): with the same
    --state, the baseline's records of the evaluate stage are reused, and a killed run resumes."""
    cfg = model_eval_config(path, cfg)
    generator = load_generator(path, cfg)
    records, metrics = evaluate(generator, problems, cfg, evaluation_journal(state, generator.model_id, data_sha,
                                                                             cfg), progress=False, comm=comm)
    method = compute.method(cfg.prompt, cfg.sampling) if compute.budgets else None
    sampled = run_method(generator, problems, method, journal(state, {
        "model": generator.model_id, "data": data_sha, "method": method.hash(cfg.seed)}), cfg.seed, cfg.batch_size,
        progress=False, comm=comm) if method else None
    return records, metrics, compute_points(metrics, sampled, method)


def scaling_row(scaling: str, problems: list[dict], eval_limit: int | None) -> tuple:
    """(best setting, its records) of the inference_scaling stage, checked before anything is generated:
    the paired comparisons need the very problems final_eval measures the models on."""
    method, records = load_best(scaling)
    have, want = [r["id"] for r in records], [str(p["id"]) for p in problems]
    if have != want:
        detail = "other problems" if len(have) == len(want) else f"{len(have)} problems"
        raise ValueError(f"{scaling} holds records of {detail}, while final_eval measures the models on the first "
                         f"{len(want)} test problems (evaluate.limit: {eval_limit}): set inference_scaling.limit and "
                         "evaluate.limit to the same value (null: the whole split; for a trial run of the whole "
                         "pipeline, set pipeline.limit instead) and rerun inference_scaling")
    return method, records


def main(argv: Sequence[str] | None = None) -> dict:
    args = stage_parser("final_eval", __doc__, [
        ("--data", "test split, e.g. data/datasets/test.jsonl"), ("--out", "output directory, e.g. data/final"),
        ("--state", "journal directory (the evaluate stage's, to reuse its records), e.g. runs/evaluate"),
    ]).parse_args(argv)
    cfg = stage_config(FinalEvalConfig, "final_eval", args)
    eval_cfg = load_section(EvalConfig, "evaluate", args.params)
    skipped: dict[str, int] = {}  # rows without an id, problem or answer: skipped, counted, warned about
    problems = read_dataset(args.data, skipped=skipped)[:eval_cfg.limit]
    best = scaling_row(cfg.scaling, problems, eval_cfg.limit) if cfg.scaling else None
    results, points = {}, {}
    with data_parallel(rank_device(resolve_device(eval_cfg.device, eval_cfg.dtype)[0])) as comm:
        for name, path in cfg.models.items():  # torchrun: each model's problems split over the ranks
            records, metrics, points[name] = evaluate_model(Path(path), problems, eval_cfg, args.state,
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
    table = comparison_table(rows, cfg.baseline)
    atomic_write_text(args.out / "table.md", table)
    write_csv(args.out / "table.csv", rows, COMPARISON_FIELDS)
    accuracy_chart(rows, args.out / "chart.png")
    grader = {k: results[cfg.baseline][1][k] for k in ("grader", "grader_version")}  # one grader judged all
    metrics = {"baseline": cfg.baseline, "models": {r.pop("model"): r for r in [dict(r) for r in rows]},
               "compute": {name: {p.pop("label"): p for p in map(dict, pts)} for name, pts in points.items()},
               **grader, **run_facts(skipped)}
    write_json(args.out / "metrics.json", metrics)
    print(table)
    return metrics


if __name__ == "__main__":
    main()
