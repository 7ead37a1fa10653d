"""Reports: the Markdown tables, CSV files and PNG charts the pipeline writes, in one place.

Design: computing a result (reasoning.scaling, reasoning.metrics, the final_eval stage) and
rendering it are separate; every renderer takes plain rows (dicts), so a table can be rebuilt
from stored records without a model, and every file is written atomically (a reader never sees
half a chart). matplotlib is imported inside the chart functions with the Agg backend: files
only, no display, and no import cost for code that writes no chart. Every chart reads at a glance
by one set of conventions (the chart section below): short labels on the plot with the long ones
in a caption under it, the compared values printed, and a layout that fits every text in the figure.
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
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
# Chart conventions, shared by every chart below. A figure is WIDTH_IN wide and as tall as its
# content (more rows, a taller figure); constrained layout shrinks the axes until every tick label,
# value, legend and caption fits inside the figure, so nothing is cut off. Labels on an axis or next
# to a point are short (at most LABEL_CHARS characters); the full text goes in a caption under the
# plot. The values people compare (accuracy in %, losses) are printed on the chart.

LABEL_CHARS = 28  # the longest label on an axis or next to a point
WIDTH_IN = 8.0    # inches: 960 px at save_figure's 120 dpi
CAPTION_PT = 8    # caption font size (points)


def _short_labels(labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """(labels to show, caption notes). A label of at most LABEL_CHARS characters is shown as it is; a
    longer one as its head (the text before its first " (", cut to fit) with a note number, e.g.
    'base + Best-of-N [1]' and the note '[1] base + Best-of-N (n=16, avg_logprob) + "Top-p" + "CoT"'."""
    shown, notes = [], []
    for label in labels:
        if len(label) <= LABEL_CHARS:
            shown.append(label)
            continue
        notes.append(label)
        mark = f" [{len(notes)}]"
        head = label.split(" (")[0]
        room = LABEL_CHARS - len(mark)
        shown.append((head if len(head) <= room else head[:room - 1].rstrip() + "…") + mark)
    notes = [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return shown, notes


def _wrap(text: str, chars: int) -> str:
    return textwrap.fill(text, chars, break_long_words=True, subsequent_indent="  ")


def _caption(lines: Sequence[str]) -> list[str]:
    """`lines` wrapped to the figure's width: a DejaVu Sans character averages ~0.55 em, 0.6 leaves slack."""
    chars = int(WIDTH_IN * 72 / (0.6 * CAPTION_PT)) - 4
    return [_wrap(line, chars) for line in lines]


def _figure(plot_height_in: float, caption: Sequence[str], nrows: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """(figure, axes): `plot_height_in` inches for the axes plus the caption's height, constrained layout.

    The caption is a figure legend without handles below the axes: constrained layout reserves room for
    it, so it is neither cut off nor drawn over the plot."""
    lines = sum(c.count("\n") + 1 for c in caption)
    height = plot_height_in + (lines * CAPTION_PT * 1.45 / 72 + 0.2 if caption else 0.0)
    fig, axes = _pyplot().subplots(nrows, 1, figsize=(WIDTH_IN, height), layout="constrained", **kwargs)
    if caption:
        from matplotlib.lines import Line2D

        blank = Line2D([], [], linestyle="none")
        fig.legend([blank] * len(caption), caption, loc="outside lower left", fontsize=CAPTION_PT, frameon=False,
                   handlelength=0, handletextpad=0, alignment="left")
    return fig, axes


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _whiskers(rows: Sequence[dict[str, Any]]) -> list[list[float]]:
    """Error-bar lengths below and above each row's accuracy; max: rounding at accuracy 0 or 1."""
    return [[max(0.0, r["accuracy"] - r["ci_low"]) for r in rows], [max(0.0, r["ci_high"] - r["accuracy"])
                                                                   for r in rows]]


def _thinned(n: int, most: int = 8) -> list[int]:
    """Up to `most` indices of range(n), evenly spread, the last always among them: the points whose
    values are printed (every point's value on a long curve would overlap)."""
    step = max(1, math.ceil(n / most))
    return sorted({*range(n - 1, -1, -step)})


def _value(ax: Any, text: str, xy: tuple[float, float], color: str, offset: tuple[float, float] = (0, 8),
           ha: str = "center", **kwargs: Any) -> None:
    """`text` next to the point `xy`, over a white patch so that a line running past does not cross it."""
    ax.annotate(text, xy, textcoords="offset points", xytext=offset, ha=ha, fontsize=8, color=color,
                bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
                **kwargs)


def _tokens_axis(ax: Any) -> None:
    """Generated tokens per problem on a log scale, ticks at 1-2-5 steps written as plain numbers."""
    import matplotlib.ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))  # 50, not 5x10^1
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("generated tokens per problem (log scale)")


def _steps_axis(ax: Any, label: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers, even on a 4-step run
    ax.set_xlabel(label)


def _legend_outside(ax: Any, title: str | None = None) -> None:
    """The axes' legend right of the plot (never over a point), its labels wrapped to a narrow column."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [_wrap(label, 22) for label in labels], loc="upper left", bbox_to_anchor=(1.01, 1),
              fontsize=8, title=title, title_fontsize=8, frameon=False)


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
    """Accuracy (%, 95% Wilson intervals) against generated tokens per problem (log scale), one line per
    method, the Pareto frontier dashed and ringed; written atomically as PNG to `path`.

    `rows`: grid_metrics rows (method, label, accuracy, ci_low, ci_high, tokens_per_problem, n), in
    table order. A point is named by its row of scaling_table ("#3"); each frontier point also shows its
    accuracy, and the caption spells out its setting (its `label`)."""
    front = pareto_frontier([(r["tokens_per_problem"], r["accuracy"]) for r in rows])
    caption = _caption([f"{rows[0]['n']} problems. #k: row k of table.md. Whiskers: 95% Wilson intervals. Dashed "
                        "and ringed: the Pareto frontier (no other setting is as accurate with fewer tokens):",
                        *(f"#{i + 1}  {rows[i]['label']}: {_pct(rows[i]['accuracy'])} at "
                          f"{rows[i]['tokens_per_problem']:.0f} tokens per problem" for i in front)])
    fig, ax = _figure(5.0, caption)
    for c, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        index = [i for i, r in enumerate(rows) if r["method"] == name]
        rs = [rows[i] for i in index]
        ax.errorbar([r["tokens_per_problem"] for r in rs], [r["accuracy"] for r in rs], yerr=_whiskers(rs),
                    marker="o", markersize=4, capsize=2, label=name, color=f"C{c % 10}", alpha=0.85)
        for i in index:
            if i not in front:  # frontier points get their name and value below, in black
                ax.annotate(f"#{i + 1}", (rows[i]["tokens_per_problem"], rows[i]["accuracy"]),
                            textcoords="offset points", xytext=(4, -9), fontsize=7, color=f"C{c % 10}")
    fx, fy = [rows[i]["tokens_per_problem"] for i in front], [rows[i]["accuracy"] for i in front]
    ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=1, label="Pareto frontier")
    ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="black", zorder=5)
    for i in front:  # up-left is empty (nothing cheaper is as accurate), except the y-axis left of the first
        _value(ax, f"#{i + 1} {_pct(rows[i]['accuracy'])}", (rows[i]["tokens_per_problem"], rows[i]["accuracy"]),
               "black", offset=(7, 7) if i == front[0] else (-7, 7), ha="left" if i == front[0] else "right",
               fontweight="bold")
    _tokens_axis(ax)
    ax.margins(x=0.08, y=0.1)  # room for the names and values next to the outermost points
    _percent_axis(ax.yaxis)
    ax.set_ylabel("accuracy")
    ax.set_title(_wrap(title or "Inference-time scaling: accuracy vs. generated tokens", 70))
    ax.grid(alpha=0.3)
    _legend_outside(ax, "method")
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
    """Horizontal bars of each row's accuracy (%, 95% Wilson interval as whiskers), first row on top as
    in the table; written atomically as PNG to `path`.

    `rows`: comparison_rows. Each bar's end shows its accuracy and, for a row compared with the baseline
    (it has `diff_vs_baseline`), the paired difference in percentage points. A model name longer than
    LABEL_CHARS is shortened on the axis with a note number, and written out in the caption."""
    names, notes = _short_labels([r["model"] for r in rows])
    baseline = next((r["model"] for r in rows if "diff_vs_baseline" not in r), None)
    versus = (f" pts: the paired difference to {baseline} in percentage points (table.md: its interval and "
              "McNemar's p)." if baseline and len(rows) > 1 else "")
    caption = _caption([f"{rows[0]['n']} test problems. Whiskers: 95% Wilson intervals.{versus}", *notes])
    fig, ax = _figure(0.45 * len(rows) + 0.9, caption)
    ax.barh(range(len(rows)), [r["accuracy"] for r in rows], xerr=_whiskers(rows), height=0.6, capsize=3,
            color="tab:blue", error_kw={"elinewidth": 1})
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # first model on top, as in the table
    ax.set_xlim(0, 1)
    for i, r in enumerate(rows):  # past the whisker's end; constrained layout makes room beyond 100%
        diff = f"  {100 * r['diff_vs_baseline']:+.1f} pts" if "diff_vs_baseline" in r else ""
        ax.text(max(r["ci_high"], r["accuracy"]) + 0.012, i, _pct(r["accuracy"]) + diff, va="center", fontsize=9)
    _percent_axis(ax.xaxis)
    ax.set_xlabel("accuracy")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def compute_chart(points: dict[str, Sequence[dict[str, Any]]], path: str | Path, budget: float | None = None) -> None:
    """Accuracy (%, 95% intervals) against generated tokens per problem: every (model, budget) point of
    `points` (model -> scaling.compute_points), each model's own Pareto frontier as a line, and `budget`
    (the baseline's largest budget, tokens per problem) as a vertical line: "train, or spend inference
    compute?". Each point shows its short label ("greedy", "SC@16") and accuracy; written atomically."""
    caption = _caption(["greedy: one greedy answer per problem; SC@k: self-consistency, the majority answer of "
                        "k sampled ones. Lines: each model's Pareto frontier. Whiskers: 95% Wilson intervals."
                        + (f" Dotted: the baseline's largest budget, {budget:.0f} tokens per problem."
                           if budget is not None else "")])
    fig, ax = _figure(5.0, caption)
    for i, (model, pts) in enumerate(points.items()):
        color = f"C{i % 10}"
        ax.errorbar([p["tokens_per_problem"] for p in pts], [p["accuracy"] for p in pts], yerr=_whiskers(pts),
                    fmt="o", markersize=4, color=color, capsize=2, alpha=0.85)
        front = [pts[j] for j in pareto_frontier([(p["tokens_per_problem"], p["accuracy"]) for p in pts])]
        ax.plot([p["tokens_per_problem"] for p in front], [p["accuracy"] for p in front], color=color, label=model)
        last = max(p["tokens_per_problem"] for p in pts)
        for p in pts:  # right of each point, left of the costliest (which sits at the budget line); above it
            # when no other model's point nearby is higher, else below: two close models' labels do not overlap
            left = p["tokens_per_problem"] == last
            near = [q["accuracy"] for m, qs in points.items() if m != model for q in qs
                    if 1 / 1.6 <= q["tokens_per_problem"] / p["tokens_per_problem"] <= 1.6]
            up = all(a <= p["accuracy"] for a in near)
            _value(ax, f"{p['label']} {_pct(p['accuracy'])}", (p["tokens_per_problem"], p["accuracy"]), color,
                   offset=(-6 if left else 6, 5 if up else -6), ha="right" if left else "left",
                   va="bottom" if up else "top")
    if budget is not None:
        ax.axvline(budget, color="grey", linestyle=":", label="baseline's largest budget")
    _tokens_axis(ax)
    ax.margins(x=0.1, y=0.1)  # room for the labels next to the outermost points
    _percent_axis(ax.yaxis)
    ax.set_ylabel("accuracy")
    ax.set_title("Train, or spend inference compute? Accuracy at matched tokens")
    ax.grid(alpha=0.3)
    _legend_outside(ax, "model (frontier)")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Training curves: the PNG next to each stage's JSON curve (which DVC plots and MLflow read)


def loss_chart(curve: Sequence[dict[str, Any]], val_curve: Sequence[dict[str, Any]], path: str | Path,
               title: str) -> None:
    """Training loss (mean cross-entropy per target token, nats) against optimizer step, with the
    validation loss as points; written atomically as PNG to `path`.

    `curve`: rows {"step", "loss", ...}; `val_curve`: rows {"step", "val_loss"}. From 50 steps on, a
    centred moving mean over a 25th of the steps is drawn over the raw loss. The last training and
    validation losses are printed in the legend, and the validation losses (up to 8, evenly spread)
    next to their points. No steps at all (a checkpoint loaded, not
    trained) gives a chart that says so."""
    caption = _caption(["Loss: mean cross-entropy per target token (nats). "
                        "Validation: the held-out examples' loss at the step it was measured."] if curve else [])
    fig, ax = _figure(4.0, caption)
    ax.set_title(_wrap(title, 70))
    if not curve and not val_curve:
        ax.text(0.5, 0.5, "no training steps: this model was loaded, not trained", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        save_figure(fig, path)
        return
    steps, loss = [r["step"] for r in curve], [r["loss"] for r in curve]
    half = len(loss) // 50 if len(loss) >= 50 else 0  # a centred window of 2 * half + 1 steps
    last = f"last: {loss[-1]:.3f}" if curve else ""
    ax.plot(steps, loss, color="tab:blue", linewidth=1, alpha=0.35 if half else 1.0,
            label=f"training loss per step, {last}" if half else f"training loss, {last}")
    if half:
        windows = [loss[max(0, i - half):i + half + 1] for i in range(len(loss))]
        ax.plot(steps, [sum(w) / len(w) for w in windows], color="tab:blue", linewidth=2,
                label=f"training loss, mean of {2 * half + 1} steps")
    if val_curve:
        vs, vl = [r["step"] for r in val_curve], [r["val_loss"] for r in val_curve]
        ax.plot(vs, vl, "o-", color="tab:orange", markersize=5, label=f"validation loss, last: {vl[-1]:.3f}")
        for i in _thinned(len(vl)):
            _value(ax, f"{vl[i]:.3f}", (vs[i], vl[i]), "tab:orange", fontweight="bold")
    ax.margins(x=0.04, y=0.12)
    _steps_axis(ax, "optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    save_figure(fig, path)


def grpo_chart(curve: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]], path: str | Path,
               title: str = "GRPO") -> None:
    """Two panels over GRPO steps: the mean training reward per step (a band of ±1 standard deviation
    across the step's completions when rows have `reward_std`), and held-out accuracy (%, 95% Wilson
    interval) at each evaluation, the values printed (up to 8, evenly spread, the last among them);
    written atomically as PNG to `path`.

    `curve`, `evals`: grpo.run_summary's step curve (rows {"step", "reward_mean", ...}) and evaluation
    curve (rows {"step", "accuracy", "ci_low", "ci_high", "n"})."""
    caption = _caption(["Reward: mean over each step's completions"
                        + (", band: ±1 standard deviation" if curve and "reward_std" in curve[0] else "")
                        + f". Held-out: accuracy on the first {evals[-1]['n']:.0f} test problems, whiskers: 95% "
                          "Wilson intervals; step 0 is the starting model."])
    fig, (top, bottom) = _figure(5.5, caption, nrows=2, sharex=True)
    top.set_title(_wrap(title, 70))
    steps = [r["step"] for r in curve]
    mean = [r["reward_mean"] for r in curve]
    top.plot(steps, mean, color="tab:green", linewidth=1.5, marker="o" if len(steps) <= 30 else None, markersize=3)
    if curve and "reward_std" in curve[0]:
        std = [r["reward_std"] for r in curve]
        top.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                         color="tab:green", alpha=0.15, linewidth=0)
    if curve:
        _value(top, f"{mean[-1]:.3f}", (steps[-1], mean[-1]), "tab:green", offset=(-4, 6), ha="right",
               fontweight="bold")
    top.set_ylabel("mean reward")
    bottom.errorbar([e["step"] for e in evals], [e["accuracy"] for e in evals], yerr=_whiskers(evals), fmt="o-",
                    color="tab:purple", markersize=5, capsize=3)
    for i in _thinned(len(evals)):
        _value(bottom, _pct(evals[i]["accuracy"]), (evals[i]["step"], evals[i]["accuracy"]), "tab:purple",
               fontweight="bold")
    bottom.set_ylim(-0.05, 1.12)  # the whole 0-100% range: a change reads at its true size; room for values
    _percent_axis(bottom.yaxis)
    bottom.set_ylabel("held-out accuracy")
    _steps_axis(bottom, "GRPO step")
    for ax in (top, bottom):
        ax.margins(x=0.06)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Seed spread: the same pipeline run with other training seeds

def scaling_role(baseline: str) -> str:
    """The name final_eval's inference-scaling row ("<baseline> + <its best setting>") goes by across
    seeds, whose best settings differ."""
    return f"{baseline} + best scaling setting"


def by_role(models: dict[str, Any], baseline: str) -> dict[str, Any]:
    """`models` (final_eval's metrics["models"]) with the inference-scaling row named `scaling_role`, so
    the rows of runs with other seeds line up."""
    return {(scaling_role(baseline) if m.startswith(f"{baseline} + ") else m): v for m, v in models.items()}


def check_spread_runs(runs: Sequence[dict[str, Any]], names: Sequence[str], models: Sequence[str], n: int,
                      baseline: str, grader_version: str) -> None:
    """Refuse, before anything is measured, other runs (final_eval metrics.json dicts, named by `names`)
    that a seed spread cannot pool with this one: a model of `models` missing, another number of
    problems `n`, or another grader version. Raises ValueError naming the run and the fix."""
    want = set(by_role(dict.fromkeys(models), baseline))
    for run, name in zip(runs, names):
        have = by_role(run["models"], baseline)
        problems = sorted({int(m["n"]) for m in have.values()})
        why = (f"has no model(s) {sorted(want - set(have))}" if want - set(have) else
               f"measured {problems} problems, this run {n}" if problems != [n] else
               f"was graded by version {run.get('grader_version')}, this run by {grader_version}"
               if run.get("grader_version") != grader_version else "")
        if why:
            raise ValueError(f"final_eval.runs: {name} {why}; a seed spread pools runs of one pipeline with other "
                             "seeds, on the same test problems and grader: rerun it, or leave it out")


def seed_spread_rows(runs: Sequence[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """One row per model of the first run: its accuracy (and, but for the baseline, its difference to
    the baseline) as mean, min and max over `runs` (final_eval metrics.json dicts of one pipeline run
    with different training seeds, checked by `check_spread_runs`). The inference-scaling row is
    pooled by its role: "<baseline> + best scaling setting", whichever setting each seed found best."""
    models = [by_role(r["models"], baseline) for r in runs]
    rows = []
    for model, m in models[0].items():
        row = {"model": model, "accuracy": seed_spread([ms[model]["accuracy"] for ms in models])}
        if "diff_vs_baseline" in m:
            row["diff_vs_baseline"] = seed_spread([ms[model]["diff_vs_baseline"] for ms in models])
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
