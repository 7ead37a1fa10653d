"""final_eval measures each model with the prompt recorded in its metadata.json (sft/grpo), else the shared one."""

from __future__ import annotations

import json
import shutil

import yaml

from reasoning.evaluate import EvalConfig
from reasoning.generate import SamplingConfig
from reasoning.data import write_dataset
from reasoning.grading import GRADER_NAME, GRADER_VERSION
from reasoning.prompts import PromptConfig, prompt_hash, render
from reasoning.tokenizer import Tokenizer
from reasoning.evaluate import model_eval_config
from reasoning.scaling import evaluate_at_budgets
from stages.final_eval import main

PROBLEMS = [{"id": "p1", "problem": "What is 2 + 3?", "answer": "5", "solution": "", "level": 1, "subject": "toy"}]


def test_model_prompt_comes_from_its_metadata(tmp_path, tiny_ckpt):
    cfg = EvalConfig(sampling=SamplingConfig(max_new_tokens=4), device="cpu", dtype="float32")
    plain = tmp_path / "plain"
    shutil.copytree(tiny_ckpt, plain)
    assert model_eval_config(plain, cfg) == cfg  # no metadata: the shared settings

    chat = tmp_path / "chat"
    shutil.copytree(tiny_ckpt, chat)
    prompt = PromptConfig(template="chat", think=True)
    (chat / "metadata.json").write_text(json.dumps({"prompt": {"template": "chat", "think": True}}))
    assert model_eval_config(chat, cfg).prompt == prompt
    records, metrics, _ = evaluate_at_budgets(chat, PROBLEMS, cfg, tmp_path / "runs", "data-sha")
    template = Tokenizer(chat).chat_template
    assert records[0]["prompt"] == render(PROBLEMS[0]["problem"], prompt, template)
    assert metrics["prompt_hash"] == prompt_hash(prompt, template) != prompt.hash  # names the template too


def test_metrics_name_the_grader(tmp_path, tiny_ckpt):
    write_dataset(PROBLEMS, tmp_path / "test.jsonl", source="test")
    params = {"evaluate": {"device": "cpu", "dtype": "float32", "sampling": {"max_new_tokens": 4}},
              "final_eval": {"models": {"base": str(tiny_ckpt)}, "n_boot": 10}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = main(["--data", str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "final"),
                    "--state", str(tmp_path / "runs"), "--params", str(tmp_path / "params.yaml")])
    assert (metrics["grader"], metrics["grader_version"]) == (GRADER_NAME, GRADER_VERSION)
    assert json.loads((tmp_path / "final" / "metrics.json").read_text())["grader_version"] == GRADER_VERSION


def test_scaling_records_of_other_problems_are_refused_before_any_model_runs(tmp_path, monkeypatch):
    """inference_scaling.limit 3 against the whole split: final_eval stops at once, naming the settings."""
    import pytest
    import yaml

    import stages.final_eval as stage
    from reasoning.data import write_dataset
    from reasoning.scaling import MethodConfig, run_grid, write_outputs
    from tests.test_scaling import TOPP, FakeGenerator, problems, sc_answer

    rows = problems(6)
    methods = [MethodConfig("sc", sampling=TOPP, n=2, aggregate="majority")]
    write_outputs(tmp_path / "scaling", methods,
                  run_grid(FakeGenerator(sc_answer), rows[:3], methods, tmp_path / "journal", progress=False), "toy")
    write_dataset(rows, tmp_path / "test.jsonl", source="test")
    params = {"evaluate": {"limit": None}, "final_eval": {"models": {"base": "nowhere"},
                                                           "scaling": str(tmp_path / "scaling")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def no_model(*args, **kwargs):
        raise AssertionError("a model was evaluated before the inputs were checked")

    monkeypatch.setattr(stage, "evaluate_at_budgets", no_model)
    argv = ["--data", str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "final"),
            "--state", str(tmp_path / "runs"), "--params", str(tmp_path / "params.yaml")]
    expected = (r"holds records of 3 problems, while final_eval measures the models on the first 6 .*"
                r"set inference_scaling.limit and evaluate.limit .*pipeline.limit")
    with pytest.raises(ValueError, match=expected):
        stage.main(argv)
    method, records = stage.best_on(str(tmp_path / "scaling"), rows[:3], 3)  # evaluate.limit: 3 matches
    assert [r["id"] for r in records] == [r["id"] for r in rows[:3]] and method.name == "sc"


def test_matched_compute_puts_every_model_at_the_baselines_largest_budget(tmp_path, tiny_ckpt, tiny_tokenizer_path):
    """Each model greedy and by self-consistency at 2 and 4 samples; the table's extra column is each model's
    best accuracy among its points that spend no more tokens per problem than the baseline's SC@4."""
    from tests.conftest import make_checkpoint

    other = make_checkpoint(tmp_path / "other", "tiny", tiny_tokenizer_path, seed=3)
    rows = [{**PROBLEMS[0], "id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]
    write_dataset(rows, tmp_path / "test.jsonl", source="test")
    params = {"evaluate": {"device": "cpu", "dtype": "float32", "sampling": {"max_new_tokens": 6}},
              "final_eval": {"models": {"base": str(tiny_ckpt), "other": str(other)}, "n_boot": 10,
                             "compute": {"budgets": [2, 4], "temperature": 1.0, "top_p": 1.0}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = main(["--data", str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "final"),
                    "--state", str(tmp_path / "runs"), "--params", str(tmp_path / "params.yaml")])
    points = metrics["compute"]
    assert list(points) == ["base", "other"] and all(list(p) == ["greedy", "SC@2", "SC@4"] for p in points.values())
    for name, p in points.items():
        assert p["greedy"]["accuracy"] == metrics["models"][name]["accuracy"]
        assert p["SC@2"]["tokens_per_problem"] < p["SC@4"]["tokens_per_problem"]  # four samples cost more than two
        assert all(0 <= q["ci_low"] <= q["accuracy"] <= q["ci_high"] <= 1 for q in p.values())
        budget = points["base"]["SC@4"]["tokens_per_problem"]
        inside = [q["accuracy"] for q in p.values() if q["tokens_per_problem"] <= budget]
        assert metrics["models"][name]["best_at_budget"] == (max(inside) if inside else None)
    assert "best accuracy at <= base's largest budget" in (tmp_path / "final" / "table.md").read_text()
    assert (tmp_path / "final" / "compute.png").stat().st_size > 10_000
    assert list(json.loads((tmp_path / "final" / "metrics.json").read_text())["compute"]) == ["base", "other"]


def test_seed_spread_over_other_runs(tmp_path, tiny_ckpt, tiny_tokenizer_path):
    """final_eval.runs: this run's figures and those of the same pipeline with other seeds, as mean [min, max];
    a missing run is refused before any model runs, and runs on other problems are refused by name."""
    import pytest

    from tests.conftest import make_checkpoint

    other = make_checkpoint(tmp_path / "other", "tiny", tiny_tokenizer_path, seed=3)
    rows = [{**PROBLEMS[0], "id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    write_dataset(rows, tmp_path / "test.jsonl", source="test")

    def run(out, runs=(), models=None):
        params = {"evaluate": {"device": "cpu", "dtype": "float32", "sampling": {"max_new_tokens": 4}},
                  "final_eval": {"models": models or {"base": str(tiny_ckpt), "other": str(other)}, "n_boot": 10,
                                 "compute": {"budgets": []}, "runs": [str(r) for r in runs]}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return main(["--data", str(tmp_path / "test.jsonl"), "--out", str(out), "--state", str(tmp_path / "runs"),
                     "--params", str(tmp_path / "params.yaml")])

    first = run(tmp_path / "seed0")
    swapped = run(tmp_path / "seed1", models={"base": str(other), "other": str(tiny_ckpt)})  # another "seed"
    with pytest.raises(FileNotFoundError, match=r"final_eval.runs: no metrics.json in \['.*nowhere'\]"):
        run(tmp_path / "x", [tmp_path / "seed1", tmp_path / "nowhere"])
    metrics = run(tmp_path / "final", [tmp_path / "seed0", tmp_path / "seed1"])
    spread = {r["model"]: r for r in metrics["spread"]}
    accs = [metrics["models"]["base"]["accuracy"], first["models"]["base"]["accuracy"],
            swapped["models"]["base"]["accuracy"]]
    assert spread["base"]["accuracy"] == {"mean": sum(accs) / 3, "min": min(accs), "max": max(accs), "n": 3}
    assert "diff_vs_baseline" not in spread["base"] and spread["other"]["diff_vs_baseline"]["n"] == 3
    table = (tmp_path / "final" / "table.md").read_text()
    assert "over 3 runs" in table and f"| base | {sum(accs) / 3:.3f} [{min(accs):.3f}, {max(accs):.3f}] | — |" in table
    fewer = json.loads((tmp_path / "seed1" / "metrics.json").read_text())
    for m in fewer["models"].values():
        m["n"] = 3
    (tmp_path / "seed1" / "metrics.json").write_text(json.dumps(fewer))
    with pytest.raises(ValueError, match=r"final_eval.runs: .*seed1 measured \[3\] problems, this run 4"):
        run(tmp_path / "final", [tmp_path / "seed1"])


def test_seed_spread_pools_each_seeds_best_scaling_setting_and_refuses_what_does_not_pool():
    """Each seed's inference_scaling stage may find another best setting ("base + SC@16" on one, "base +
    Best-of-N" on another): the spread pools that row by its role. A run lacking a model, measured on
    other problems or graded by another version is refused, naming it."""
    import pytest

    from reasoning.report import check_spread_runs, seed_spread_rows

    def run(acc: float, row: str, n: int = 500, grader: str = "2.0.0") -> dict:
        return {"grader_version": grader, "models": {
            "base": {"accuracy": 0.05, "n": n},
            "sft": {"accuracy": acc, "n": n, "diff_vs_baseline": acc - 0.05},
            f"base + {row}": {"accuracy": acc - 0.1, "n": n, "diff_vs_baseline": acc - 0.15}}}

    runs = [run(0.8, "Self-consistency (n=16)"), run(0.6, "Best-of-N (n=16, avg_logprob)")]
    check_spread_runs(runs[1:], ["seed1"], ["base", "sft", "base + best"], 500, "base", "2.0.0")
    rows = {r["model"]: r for r in seed_spread_rows(runs, "base")}
    assert list(rows) == ["base", "sft", "base + best scaling setting"]
    assert rows["base + best scaling setting"]["accuracy"] == pytest.approx({"mean": 0.6, "min": 0.5, "max": 0.7, "n": 2})
    assert rows["sft"]["diff_vs_baseline"]["min"] == pytest.approx(0.55)
    for other, why in ((dict(run(0.6, "x"), models={"base": {"accuracy": 0.1, "n": 500}}), r"has no model\(s\) \['sft'\]"),
                       (run(0.6, "x", n=100), r"measured \[100\] problems, this run 500"),
                       (run(0.6, "x", grader="1.0.0"), r"was graded by version 1.0.0, this run by 2.0.0")):
        with pytest.raises(ValueError, match=rf"final_eval.runs: seed1 {why}"):
            check_spread_runs([other], ["seed1"], ["base", "sft"], 500, "base", "2.0.0")
