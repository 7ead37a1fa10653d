"""Reports: the Markdown tables, CSV files and PNG charts the pipeline writes, in one place.

Design: computing a result (reasoning.scaling, reasoning.metrics, the final_eval stage) and
rendering it are separate; every renderer takes plain rows (dicts), so a table can be rebuilt
from stored records without a model, and every file is written atomically (a reader never sees
half a chart). matplotlib is imported inside the chart functions with the Agg backend: files
only, no display, and no import cost for code that writes no chart.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import atomic_write_bytes, atomic_write_text
from .metrics import compare_records, seed_spread


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    """`rows` as CSV with columns `fields` (other keys ignored), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_figure(fig: Any, path: str | Path) -> None:
    """Save a matplotlib figure as PNG (120 dpi) atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------
# Inference scaling: the book's chapter 4/5 tables and the accuracy-vs-tokens frontier

TABLE_FIELDS = ("method", "budget", "label", "accuracy", "ci_low", "ci_high", "diff", "diff_ci_low",
                "diff_ci_high", "p_value", "pass_at_k", "tokens_per_problem", "tokens_total", "wall_time_s",
                "truncation_rate", "n")


def scaling_table(rows: Sequence[dict[str, Any]], model: str) -> str:
    """Markdown table shaped like the book's chapter 4/5 tables, with intervals and tokens added."""
    lines = ["| # | Method | Setting | Model | Accuracy [95% CI] | vs #1 [95% CI], p | pass@k "
             "| Tokens / problem | Tokens | Time |",
             "|---|--------|---------|-------|-------------------|-------------------|--------"
             "|------------------|--------|------|"]
    for i, r in enumerate(rows, 1):
        pass_k = "-" if r["pass_at_k"] is None else f"{100 * r['pass_at_k']:.1f}%"
        diff = "-" if r["diff"] is None else (f"{100 * r['diff']:+.1f} [{100 * r['diff_ci_low']:+.1f}, "
                                             f"{100 * r['diff_ci_high']:+.1f}], p={r['p_value']:.2g}")
        lines.append(f"| {i} | {r['label']} | {r['method']}@{r['budget']} | {model} | "
                     f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] | "
                     f"{diff} | {pass_k} | "
                     f"{r['tokens_per_problem']:.1f} | {r['tokens_total']} | {_duration(r['wall_time_s'])} |")
    n = rows[0]["n"] if rows else 0
    lines.append(f"\n{n} problems. Accuracy in %, with its 95% Wilson interval; \"vs #1\": the paired "
                 "accuracy difference to row 1 on the same problems (points, 95% bootstrap interval, "
                 "McNemar's exact p). pass@k: unbiased estimate from all samples of the method (an upper "
                 "bound on any selection). Time: generation time of the samples (and critiques) each row "
                 "uses, a batch's time split by generated tokens, plus scoring; rows of one method come "
                 "from one run at its largest budget.")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats (cost <= and accuracy >=, one
    strictly), sorted by cost; of exact duplicates the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    frontier, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            frontier.append(i)
            best = points[i][1]
    return frontier


def plot_frontier(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Accuracy (with 95% intervals) against generated tokens per problem, one line per method,
    the Pareto frontier marked."""
    plt = _pyplot()
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        x = [r["tokens_per_problem"] for r in rs]
        y = [r["accuracy"] for r in rs]
        err = [[max(0.0, r["accuracy"] - r["ci_low"]) for r in rs],  # max: rounding at accuracy 0 or 1
               [max(0.0, r["ci_high"] - r["accuracy"]) for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name, alpha=0.85)
    front = [rows[i] for i in pareto_frontier([(r["tokens_per_problem"], r["accuracy"]) for r in rows])]
    ax.step([r["tokens_per_problem"] for r in front], [r["accuracy"] for r in front], where="post",
            color="black", linestyle="--", linewidth=1, label="Pareto frontier")
    ax.scatter([r["tokens_per_problem"] for r in front], [r["accuracy"] for r in front], s=140,
               facecolors="none", edgecolors="black", zorder=5)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))  # 50, not 5x10^1
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("generated tokens per problem (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Inference-time scaling: accuracy vs. generated tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Final comparison: every model against the baseline

COMPARISON_FIELDS = ("model", "accuracy", "ci_low", "ci_high", "diff_vs_baseline", "diff_ci_low", "diff_ci_high",
                     "p_value", "mean_generated_tokens", "best_at_budget", "wall_time_s", "n")


def comparison_rows(results: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]], baseline: str,
                    n_boot: int = 10_000, seed: int = 0) -> list[dict[str, Any]]:
    """One row per model (name -> (records, metrics)), each but the baseline with its paired accuracy
    difference to the baseline on the same problems (bootstrap interval, McNemar's exact p)."""
    base_records = results[baseline][0]
    rows = []
    for name, (records, m) in results.items():
        row = {"model": name, **{k: m[k] for k in ("accuracy", "ci_low", "ci_high", "mean_generated_tokens",
                                                   "wall_time_s", "n")}}
        if name != baseline:
            c = compare_records(base_records, records, n_boot=n_boot, seed=seed)
            row.update(diff_vs_baseline=c["diff"], diff_ci_low=c["ci_low"], diff_ci_high=c["ci_high"],
                       p_value=c["p_value"])
        rows.append(row)
    return rows


def comparison_table(rows: Sequence[dict[str, Any]], baseline: str) -> str:
    """Markdown table of `comparison_rows`-shaped rows: accuracy, interval, paired difference to the
    baseline with McNemar's p, mean tokens, the best accuracy within the baseline's largest inference
    budget (`best_at_budget`, when the rows have it), wall time."""
    budget = any("best_at_budget" in r for r in rows)
    lines = [f"| model | accuracy | 95% CI | Δ vs {baseline} [95% CI] | McNemar p | mean tokens |"
             + (f" best accuracy at <= {baseline}'s largest budget |" if budget else "") + " wall time (s) | n |",
             "|---|---:|---|---|---:|---:|" + ("---:|" if budget else "") + "---:|---:|"]
    for r in rows:
        diff = (f"{r['diff_vs_baseline']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}]"
                if "p_value" in r else "—")
        p = f"{r['p_value']:.3g}" if "p_value" in r else "—"
        best = r.get("best_at_budget")
        cell = (" — |" if best is None else f" {best:.3f} |") if budget else ""
        lines.append(f"| {r['model']} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {diff} | "
                     f"{p} | {r['mean_generated_tokens']:.1f} |{cell} {r['wall_time_s']:.1f} | {r['n']} |")
    return "\n".join(lines) + "\n"


def accuracy_chart(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Horizontal bars of each row's accuracy with its 95% interval, first row on top."""
    fig, ax = _pyplot().subplots(figsize=(6, 0.6 * len(rows) + 1.2))
    acc = [r["accuracy"] for r in rows]
    err = [[r["accuracy"] - r["ci_low"] for r in rows], [r["ci_high"] - r["accuracy"] for r in rows]]
    ax.barh([r["model"] for r in rows], acc, xerr=err, capsize=4, color="tab:blue")
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # first model on top, as in the table
    ax.set_xlabel(f"accuracy on {rows[0]['n']} test problems (95% Wilson interval)")
    fig.tight_layout()
    save_figure(fig, path)


def compute_chart(points: dict[str, Sequence[dict[str, Any]]], path: str | Path, budget: float | None = None) -> None:
    """Accuracy (95% intervals) against generated tokens per problem: every (model, budget) point of
    `points` (model -> scaling.compute_points), each model's own Pareto frontier as a line, and
    `budget` (the baseline's largest budget) as a vertical line: "train, or spend inference compute?"."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (model, pts) in enumerate(points.items()):
        color = f"C{i}"
        err = [[max(0.0, p["accuracy"] - p["ci_low"]) for p in pts], [max(0.0, p["ci_high"] - p["accuracy"])
                                                                      for p in pts]]
        ax.errorbar([p["tokens_per_problem"] for p in pts], [p["accuracy"] for p in pts], yerr=err, fmt="o",
                    color=color, capsize=3, alpha=0.85)
        front = [pts[j] for j in pareto_frontier([(p["tokens_per_problem"], p["accuracy"]) for p in pts])]
        ax.plot([p["tokens_per_problem"] for p in front], [p["accuracy"] for p in front], color=color,
                label=f"{model} (frontier)")
        for p in pts:
            ax.annotate(p["label"], (p["tokens_per_problem"], p["accuracy"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color=color)
    if budget is not None:
        ax.axvline(budget, color="grey", linestyle=":", label="the baseline's largest budget")
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title("Train, or spend inference compute? Accuracy at matched tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Seed spread: the same pipeline run with other training seeds

def seed_spread_rows(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per model of the first run: its accuracy (and, but for the baseline, its difference to
    the baseline) as mean, min and max over `runs` (final_eval metrics.json dicts of one pipeline run
    with different training seeds; `names` say where each came from, for errors).

    Raises ValueError when a run lacks a model or measured other problems (n) or another grader: their
    figures would not be comparable."""
    first = runs[0]
    for run, name in zip(runs[1:], names[1:]):
        for key in ("n", "grader_version"):
            want = {m.get(key, first.get(key)) for m in first["models"].values()}
            have = {m.get(key, run.get(key)) for m in run["models"].values()}
            if have != want:
                raise ValueError(f"{name}: {key} {sorted(map(str, have))} differs from this run's "
                                 f"{sorted(map(str, want))}; a seed spread needs runs of one pipeline on the "
                                 "same test problems, graded alike")
        missing = sorted(set(first["models"]) - set(run["models"]))
        if missing:
            raise ValueError(f"{name} has no model(s) {missing}: a seed spread needs every model in every run")
    rows = []
    for model, m in first["models"].items():
        row = {"model": model, "accuracy": seed_spread([r["models"][model]["accuracy"] for r in runs])}
        if "diff_vs_baseline" in m:
            row["diff_vs_baseline"] = seed_spread([r["models"][model]["diff_vs_baseline"] for r in runs])
        rows.append(row)
    return rows


def seed_spread_table(rows: Sequence[dict[str, Any]], baseline: str) -> str:
    """Markdown table of `seed_spread_rows`: mean [min, max] of each model's accuracy and difference."""
    n = rows[0]["accuracy"]["n"] if rows else 0
    lines = [f"| model | accuracy, mean [min, max] over {n} runs | Δ vs {baseline}, mean [min, max] |",
             "|---|---|---|"]
    for r in rows:
        a, d = r["accuracy"], r.get("diff_vs_baseline")
        diff = "—" if d is None else f"{d['mean']:+.3f} [{d['min']:+.3f}, {d['max']:+.3f}]"
        lines.append(f"| {r['model']} | {a['mean']:.3f} [{a['min']:.3f}, {a['max']:.3f}] | {diff} |")
    return "\n".join(lines) + "\n"
