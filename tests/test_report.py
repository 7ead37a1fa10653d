"""Every chart the pipeline writes reads at a glance: rendered with worst-case inputs (the longest labels
the pipeline produces, the real world's 21 inference-scaling rows, accuracy 0 and 1 with their intervals
at the edges, long training curves), no text is cut off, labels on the axes and next to points are short,
the full descriptions are in a caption, and the values people compare are printed."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reasoning import report
from reasoning.config import load_section
from reasoning.metrics import accuracy_summary
from reasoning.scaling import ScalingConfig, describe

ROOT = Path(__file__).resolve().parents[1]
DPI = 120  # save_figure's
SHORT = 30  # the most characters of a label on an axis or next to a point


@dataclass
class Drawn:
    text: str
    box: Any  # the text's extent in the saved image, pixels
    size: tuple[float, float]  # the saved image (the canvas the text was drawn on), pixels
    artist: Any


def render(chart: Callable[[Path], None], path: Path) -> tuple[Any, list[Drawn]]:
    """Call `chart(path)` and return (the figure, every non-empty text drawn into the PNG it saved there)."""
    from matplotlib.text import Text

    drawn: list[Drawn] = []
    draw = Text.draw

    def recording_draw(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(Drawn(self.get_text(), self.get_window_extent(renderer), (renderer.width, renderer.height),
                               self))

    mp = pytest.MonkeyPatch()
    mp.setattr(Text, "draw", recording_draw)
    try:
        chart(path)
    finally:
        mp.undo()
    assert drawn, "the chart drew no text"
    return drawn[0].artist.get_figure(root=True), drawn


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def flat(text: str) -> str:
    return " ".join(text.split())


def check_fits(fig: Any, drawn: list[Drawn], path: Path) -> None:
    """Every drawn text lies within the saved image (1 px slack), and the image is the whole figure."""
    width, height = fig.get_size_inches() * DPI
    assert png_size(path) == pytest.approx((width, height), abs=1)  # the saved image is the whole figure
    for d in drawn:
        assert d.size == pytest.approx((width, height), abs=1)
        b = d.box
        assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= width + 1 and b.y1 <= height + 1, (
            f"{d.text!r} is cut off: its box {[round(v) for v in b.extents]} leaves the {width:.0f} x "
            f"{height:.0f} px figure")


def check_short(fig: Any, drawn: list[Drawn]) -> None:
    """Tick labels and the texts next to points (the axes' own texts) are short."""
    near = {id(t) for ax in fig.axes for t in [*ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts]}
    on_plot = [d.text for d in drawn if id(d.artist) in near]
    assert on_plot, "no tick label or point label was drawn"
    long = [t for t in on_plot if max(map(len, t.splitlines())) > SHORT]
    assert not long, f"labels longer than {SHORT} characters on the plot: {long}"


def captions(fig: Any) -> str:
    """The text of every legend (captions are figure legends), whitespace flattened."""
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return " | ".join(flat(t.get_text()) for lg in legends for t in lg.get_texts())


def shown(drawn: list[Drawn]) -> str:
    return " | ".join(flat(d.text) for d in drawn)


def summary(k: int, n: int) -> dict[str, float]:
    return accuracy_summary([True] * k + [False] * (n - k))


# --- worst-case inputs ----------------------------------------------------------------------------------

N = 500  # MATH-500


def scaling_rows() -> list[dict[str, Any]]:
    """The real world's inference_scaling grid (params/real.yaml: 21 rows), labels as scaling.describe
    writes them, accuracies from 0 to 1 (intervals at the edges), tokens spread over two decades."""
    cfg = load_section(ScalingConfig, "inference_scaling", ROOT / "params" / "real.yaml")
    settings = [(m, k) for m in cfg.methods for k in m.budgets]
    rows = []
    for i, (m, k) in enumerate(settings):
        correct = [0, N][i] if i < 2 else (37 * i) % N
        rows.append({"method": m.name, "budget": k, "label": describe(m, k), **summary(correct, N),
                     "tokens_per_problem": 180.0 * k * (1 + i % 3) + 7 * i})
    return rows


def final_rows() -> list[dict[str, Any]]:
    """comparison_rows of the real world: base, sft, grpo and the best inference-scaling setting (its
    longest label), one at accuracy 0 and one at 1."""
    longest = max((r["label"] for r in scaling_rows()), key=len)
    rows = []
    for name, k in [("base", 0), ("sft", 287), ("grpo", N), (f"base + {longest}", 143)]:
        row = {"model": name, **summary(k, N), "mean_generated_tokens": 900.0, "wall_time_s": 60.0}
        if name != "base":
            row.update(diff_vs_baseline=k / N, diff_ci_low=k / N - 0.05, diff_ci_high=min(1.0, k / N + 0.05),
                       p_value=1e-6)
        rows.append(row)
    return rows


def compute_points() -> dict[str, list[dict[str, Any]]]:
    """final_eval.compute [4, 16] for three models, one always right and one always wrong."""
    out = {}
    for name, ks in [("base", (0, 0, 0)), ("sft", (250, 280, 300)), ("grpo", (N, N, N))]:
        out[name] = [{"label": label, **summary(k, N), "tokens_per_problem": t}
                     for label, k, t in zip(("greedy", "SC@4", "SC@16"), ks, (600.0, 2400.0, 9600.0))]
    return out


def loss_curves(steps: int = 2000, every: int = 200) -> tuple[list[dict], list[dict]]:
    curve = [{"step": s, "loss": 6.0 * math.exp(-s / 300) + 0.4 + 0.2 * math.sin(s), "lr": 3e-4}
             for s in range(1, steps + 1)]
    val = [{"step": s, "val_loss": 6.0 * math.exp(-s / 300) + 0.5} for s in range(every, steps + 1, every)]
    return curve, val


def grpo_curves(steps: int = 500, every: int = 50) -> tuple[list[dict], list[dict]]:
    curve = [{"step": s, "reward_mean": min(1.0, s / steps + 0.1 * math.sin(s)), "reward_std": 0.4}
             for s in range(1, steps + 1)]
    # as grpo's log holds them: every value a float, n too
    evals = [{"step": s, **{k: float(v) for k, v in summary(round(N * s / steps), N).items()}}
             for s in range(0, steps + 1, every)]
    return curve, evals


# --- the charts ------------------------------------------------------------------------------------------


def test_accuracy_chart_reads_at_a_glance(tmp_path):
    rows, path = final_rows(), tmp_path / "chart.png"
    fig, drawn = render(lambda p: report.accuracy_chart(rows, p), path)
    check_fits(fig, drawn, path)
    check_short(fig, drawn)
    assert all(len(t.get_text()) <= report.LABEL_CHARS for t in fig.axes[0].get_yticklabels())
    assert flat(rows[3]["model"]) in captions(fig)  # the long name, written out under the plot
    for r in rows:  # each bar's accuracy, and the paired difference of the compared rows
        assert f"{100 * r['accuracy']:.1f}%" in shown(drawn)
    assert "+100.0 pts" in shown(drawn) and "+28.6 pts" in shown(drawn)


def test_accuracy_chart_grows_with_the_rows(tmp_path):
    few, many = tmp_path / "few.png", tmp_path / "many.png"
    rows = final_rows()
    report.accuracy_chart(rows[:2], few)
    report.accuracy_chart(rows * 5, many)
    (w_few, h_few), (w_many, h_many) = png_size(few), png_size(many)
    assert w_few == w_many and h_many > h_few + 15 * 0.4 * DPI  # 18 more bars, ~0.45 in each


def test_frontier_reads_at_a_glance(tmp_path):
    rows, path = scaling_rows(), tmp_path / "frontier.png"
    assert len(rows) == 21 and max(len(r["label"]) for r in rows) > 60
    title = "Qwen3-0.6B-Base: accuracy vs. generated tokens (500 problems)"
    fig, drawn = render(lambda p: report.plot_frontier(rows, p), path)
    check_fits(fig, drawn, path)
    check_short(fig, drawn)
    front = report.pareto_frontier([(r["tokens_per_problem"], r["accuracy"]) for r in rows])
    assert 1 in front  # the row at accuracy 1: its value and ring sit at the plot's top edge
    for i in front:  # named by table row, accuracy printed, setting spelled out in the caption
        assert f"#{i + 1} {100 * rows[i]['accuracy']:.1f}%" in shown(drawn)
        assert flat(rows[i]["label"]) in captions(fig)
    assert {f"#{i + 1}" for i in range(len(rows)) if i not in front} <= {d.text for d in drawn}
    fig, drawn = render(lambda p: report.plot_frontier(rows, p, title), path)
    check_fits(fig, drawn, path)


def test_compute_chart_reads_at_a_glance(tmp_path):
    points, path = compute_points(), tmp_path / "compute.png"
    fig, drawn = render(lambda p: report.compute_chart(points, p, 9600.0), path)
    check_fits(fig, drawn, path)
    check_short(fig, drawn)
    for name, pts in points.items():
        for p in pts:
            assert f"{p['label']} {100 * p['accuracy']:.1f}%" in shown(drawn)
    assert "9600 tokens per problem" in captions(fig)
    assert any(line.get_xdata()[0] == 9600.0 for line in fig.axes[0].get_lines())  # the budget line


@pytest.mark.parametrize("val", [True, False])
def test_loss_chart_reads_at_a_glance(tmp_path, val):
    curve, val_curve = loss_curves()
    path = tmp_path / "loss.png"
    fig, drawn = render(lambda p: report.loss_chart(curve, val_curve if val else [], p, "distillation SFT"), path)
    check_fits(fig, drawn, path)
    check_short(fig, drawn)
    assert f"{curve[-1]['loss']:.3f}" in shown(drawn)  # the last training loss
    if val:
        printed = [r for r in val_curve if f"{r['val_loss']:.3f}" in shown(drawn)]
        assert val_curve[-1] in printed and len(printed) >= len(val_curve) // 2  # up to 8, evenly spread
    assert "mean of 81 steps" in captions(fig)  # 2000 steps: a centred mean over 81


def test_loss_chart_of_a_loaded_model_says_it_has_no_steps(tmp_path):
    path = tmp_path / "loss.png"
    fig, drawn = render(lambda p: report.loss_chart([], [], p, "base model"), path)
    check_fits(fig, drawn, path)
    assert "no training steps" in shown(drawn)


def test_grpo_chart_reads_at_a_glance(tmp_path):
    curve, evals = grpo_curves()
    path = tmp_path / "grpo.png"
    fig, drawn = render(lambda p: report.grpo_chart(curve, evals, p, "GRPO from sft"), path)
    check_fits(fig, drawn, path)
    check_short(fig, drawn)
    printed = [e for e in evals if f"{100 * e['accuracy']:.1f}%" in shown(drawn)]
    assert evals[0] in printed and evals[-1] in printed and len(printed) >= 6  # 0% and 100% among them
    assert f"{curve[-1]['reward_mean']:.3f}" in shown(drawn)
    assert "first 500 test problems" in captions(fig)


def test_short_labels_keep_short_ones_and_number_the_long_ones():
    long = 'base + Best-of-N (n=16, avg_logprob) + "Top-p" + "CoT"'
    shown, notes = report._short_labels(["base", long, "x" * 40])
    assert shown == ["base", "base + Best-of-N [1]", "x" * 23 + "… [2]"]
    assert notes == [f"[1] {long}", f"[2] {'x' * 40}"]
    assert all(len(s) <= report.LABEL_CHARS for s in shown)
