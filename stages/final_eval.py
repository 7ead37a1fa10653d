"""Stage `final_eval`: every model of the pipeline on the same test split, compared with the baseline.

Writes data/final/table.md and table.csv (accuracy, 95% Wilson interval, paired accuracy
difference to the baseline with its 95% bootstrap interval and McNemar's exact p-value, mean
generated tokens, wall time), chart.png, metrics.json and each model's records. Glue only:
params `final_eval` (which models) + `evaluate` (how: the one set of evaluation settings) ->
reasoning.evaluate and reasoning.metrics.compare_records. With `scaling` set, the inference_scaling
stage's best setting joins the table as a row "<baseline> + <setting>", read from that stage's
records (same test split, nothing generated again).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reasoning.config import from_dict, load_section, resolve_device, stable_hash
from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, evaluate, metrics_from_records
from reasoning.generate import Generator
from reasoning.io import atomic_write_bytes, atomic_write_text, read_json, sha256_file, write_json
from reasoning.metrics import compare_records
from reasoning.prompts import PromptConfig
from reasoning.scaling import describe, load_best
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model

from .common import parse_args

OUT = Path("data/final")
TEST = Path("data/datasets/test.jsonl")
COLUMNS = ("model", "accuracy", "ci_low", "ci_high", "diff_vs_baseline", "diff_ci_low", "diff_ci_high",
           "p_value", "mean_generated_tokens", "wall_time_s", "n")


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
    cfg = model_eval_config(path, cfg)
    device, dtype = resolve_device(cfg.device, cfg.dtype)
    model = load_model(path, dtype, device)
    generator = Generator(model, Tokenizer(path), compile=cfg.compile, batch_size=cfg.batch_size)
    model_id = stable_hash([sha256_file(f) for f in sorted(path.glob("*.safetensors"))])
    return evaluate(generator, problems, cfg, records, progress=False, model_id=model_id)


def table_rows(results: dict[str, tuple[list, dict]], cfg: FinalEvalConfig) -> list[dict]:
    base_records = results[cfg.baseline][0]
    rows = []
    for name, (records, m) in results.items():
        row = {"model": name, **{k: m[k] for k in ("accuracy", "ci_low", "ci_high", "mean_generated_tokens",
                                                   "wall_time_s", "n")}}
        if name != cfg.baseline:
            c = compare_records(base_records, records, n_boot=cfg.n_boot, seed=cfg.seed)
            row.update(diff_vs_baseline=c["diff"], diff_ci_low=c["ci_low"], diff_ci_high=c["ci_high"],
                       p_value=c["p_value"])
        rows.append(row)
    return rows


def markdown(rows: list[dict], baseline: str) -> str:
    lines = [f"| model | accuracy | 95% CI | Δ vs {baseline} [95% CI] | McNemar p | mean tokens | wall time (s) | n |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        diff = (f"{r['diff_vs_baseline']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]"
                if "p_value" in r else "—")
        p = f"{r['p_value']:.3g}" if "p_value" in r else "—"
        lines.append(f"| {r['model']} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {diff} | "
                     f"{p} | {r['mean_generated_tokens']:.1f} | {r['wall_time_s']:.1f} | {r['n']} |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 * len(rows) + 1.2))
    acc = [r["accuracy"] for r in rows]
    err = [[r["accuracy"] - r["ci_low"] for r in rows], [r["ci_high"] - r["accuracy"] for r in rows]]
    ax.barh([r["model"] for r in rows], acc, xerr=err, capsize=4, color="tab:blue")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # first model on top, as in the table
    ax.set_xlabel(f"accuracy on {rows[0]['n']} test problems (95% Wilson interval)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args("stages.final_eval", __doc__, argv)
    cfg = load_section(FinalEvalConfig, "final_eval", args.params)
    eval_cfg = load_section(EvalConfig, "evaluate", args.params)
    problems = read_dataset(TEST)
    results = {}
    for name, path in cfg.models.items():
        results[name] = evaluate_model(Path(path), problems, eval_cfg, OUT / "records" / f"{name}.jsonl")
        print(f"{name}: accuracy {results[name][1]['accuracy']:.3f} on {results[name][1]['n']} problems")
    if cfg.scaling:
        method, records = load_best(cfg.scaling)
        if [r["id"] for r in records] != [str(p["id"]) for p in problems]:
            raise ValueError(f"{cfg.scaling} was measured on other problems than {TEST}; rerun inference_scaling")
        results[f"{cfg.baseline} + {describe(method, method.budgets[-1])}"] = (records, metrics_from_records(records))
    rows = table_rows(results, cfg)
    table = markdown(rows, cfg.baseline)
    atomic_write_text(OUT / "table.md", table)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(OUT / "table.csv", buf.getvalue())
    chart(rows, OUT / "chart.png")
    metrics = {"baseline": cfg.baseline, "models": {r.pop("model"): r for r in [dict(r) for r in rows]}}
    write_json(OUT / "metrics.json", metrics)
    print(table)
    return metrics


if __name__ == "__main__":
    main()
