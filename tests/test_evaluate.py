"""Evaluation: records, metrics, resume, config checks, regrade, and the `evaluate` stage CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from reasoning.chat_template import BUILTIN_TEMPLATE, ChatTemplate
from reasoning.config import from_dict
from reasoning.data import write_dataset
from reasoning.evaluate import EvalConfig, evaluate, metrics_from_records, regrade
from reasoning.seeds import problem_seed
from reasoning.generate import Completion, Generator, SamplingConfig
from reasoning.grading import GRADER_NAME, GRADER_VERSION
from reasoning.files import read_json, read_jsonl
from reasoning.metrics import wilson_interval
from reasoning.prompts import PromptConfig, render
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model
from stages.evaluate import main as stage_main
from tests.conftest import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIME_KEYS = ("wall_time_s", "tokens_per_s")


def make_problems(n: int = 10) -> list[dict]:
    # Different lengths, so batches are not in dataset order.
    return [{"id": f"p{i}", "problem": f"What is {i} + {i}?" + " Be careful." * (i % 3), "answer": str(2 * i),
             "solution": "", "level": 1, "subject": "arithmetic"} for i in range(n)]


def fake_answer(i: int) -> tuple[str, int, str]:
    """(text, tokens, finish_reason) the fake model gives problem i: truncated when i % 4 == 1,
    else right when i % 3 == 0, else wrong by one."""
    if i % 4 == 1:
        return "Let me think about", 8, "length"
    return (f"So \\boxed{{{2 * i}}}" if i % 3 == 0 else f"So \\boxed{{{2 * i + 1}}}"), 3 + i, "stop"


class FakeGenerator:
    """Stands in for `Generator`: answers by `fake_answer`; `fail_after` batches, it raises (a kill). Its
    tokenizer holds only a chat template, the built-in one."""

    model_id = ""
    tokenizer = SimpleNamespace(chat_template=ChatTemplate(BUILTIN_TEMPLATE))

    def __init__(self, problems: list[dict], prompt: PromptConfig, fail_after: int | None = None):
        self.index = {render(p["problem"], prompt, self.tokenizer.chat_template): int(p["id"][1:])
                      for p in problems}
        self.fail_after = fail_after
        self.calls: list[tuple[list[str], list[int]]] = []

    def generate(self, prompts, sampling, n=1, seeds=None, stream=None):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append((list(prompts), list(seeds)))
        out = []
        for p in prompts:
            text, ntok, finish = fake_answer(self.index[p])
            out.append([Completion(tokens=list(range(ntok)), text=text, finish_reason=finish)])
        return out

    @property
    def n_generated(self) -> int:
        return sum(len(p) for p, _ in self.calls)


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIME_KEYS}


CFG = EvalConfig(batch_size=3, sampling=SamplingConfig(max_new_tokens=8))


def test_records_and_metrics(tmp_path):
    problems = make_problems()
    path = tmp_path / "records.jsonl"
    records, metrics = evaluate(FakeGenerator(problems, CFG.prompt), problems, CFG, path, progress=False)

    assert [r["id"] for r in records] == [p["id"] for p in problems]
    assert read_jsonl(path) == records  # the file is rewritten in problem order
    r3, r2, r1 = records[3], records[2], records[1]
    assert r3["prompt"] == render(problems[3]["problem"], CFG.prompt)
    assert (r3["completion"], r3["extracted"], r3["correct"], r3["gold"]) == ("So \\boxed{6}", "6", True, "6")
    assert (r2["extracted"], r2["correct"], r2["truncated"], r2["generated_tokens"]) == ("5", False, False, 5)
    assert r1["truncated"] and not r1["correct"] and r1["generated_tokens"] == 8
    assert all(isinstance(r["reason"], str) and r["seconds"] >= 0 for r in records)
    assert {r["config_hash"] for r in records} == {CFG.hash}

    right = [i for i in range(10) if i % 4 != 1 and i % 3 == 0]  # 0, 3, 6
    tokens = [fake_answer(i)[1] for i in range(10)]
    assert metrics["n"] == 10 and metrics["accuracy"] == pytest.approx(len(right) / 10)
    assert (metrics["ci_low"], metrics["ci_high"]) == pytest.approx(wilson_interval(len(right), 10))
    assert metrics["mean_generated_tokens"] == pytest.approx(sum(tokens) / 10)
    assert metrics["truncation_rate"] == pytest.approx(3 / 10)
    wall = sum(r["seconds"] for r in records)
    assert metrics["wall_time_s"] == pytest.approx(wall)
    assert metrics["tokens_per_s"] == pytest.approx(sum(tokens) / wall)
    assert (metrics["grader"], metrics["grader_version"]) == (GRADER_NAME, GRADER_VERSION)
    assert metrics["prompt_hash"] == PromptConfig().hash
    assert metrics == metrics_from_records(records)


def test_resume_after_kill_continues_without_duplicates(tmp_path):
    problems = make_problems()
    full_records, full_metrics = evaluate(FakeGenerator(problems, CFG.prompt), problems, CFG,
                                          tmp_path / "full.jsonl", progress=False)

    path = tmp_path / "records.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(FakeGenerator(problems, CFG.prompt, fail_after=1), problems, CFG, path, progress=False)
    assert len(read_jsonl(path)) == CFG.batch_size  # the first batch was written before the kill
    with open(path, "a") as f:
        f.write('{"id": "p9", "prom')  # a torn line, as a kill mid-write leaves

    gen = FakeGenerator(problems, CFG.prompt)
    records, metrics = evaluate(gen, problems, CFG, path, progress=False)
    assert gen.n_generated == len(problems) - CFG.batch_size  # only the rest was generated
    on_disk = read_jsonl(path)
    assert sorted(r["id"] for r in on_disk) == sorted(p["id"] for p in problems)  # no duplicates
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(on_disk) == strip(records) == strip(full_records)
    assert without_time(metrics) == without_time(full_metrics)

    # A finished run resumes to the same result without generating anything.
    again = FakeGenerator(problems, CFG.prompt)
    assert evaluate(again, problems, CFG, path, progress=False)[1] == metrics and again.n_generated == 0


def test_changed_config_or_data_is_refused(tmp_path):
    problems = make_problems(4)
    path = tmp_path / "records.jsonl"
    evaluate(FakeGenerator(problems, CFG.prompt), problems, CFG, path, progress=False)

    other = replace(CFG, sampling=SamplingConfig(max_new_tokens=16))
    with pytest.raises(ValueError, match="different evaluation config.*delete it or choose another output"):
        evaluate(FakeGenerator(problems, other.prompt), problems, other, path, progress=False)
    chat = replace(CFG, prompt=PromptConfig(template="chat"))
    with pytest.raises(ValueError, match="different evaluation config"):
        evaluate(FakeGenerator(problems, chat.prompt), problems, chat, path, progress=False)

    edited = [dict(p) for p in problems]
    edited[2]["answer"] = "99"
    retrained = FakeGenerator(problems, CFG.prompt)
    retrained.model_id = "retrained"
    with pytest.raises(ValueError, match="records of model '', not 'retrained'"):
        evaluate(retrained, problems, CFG, path, progress=False)
    with pytest.raises(ValueError, match="'p2' differs.*dataset changed"):
        evaluate(FakeGenerator(edited, CFG.prompt), edited, CFG, path, progress=False)
    # Batch size and limit do not change completions, so they do not block a resume.
    evaluate(FakeGenerator(problems, CFG.prompt), problems, replace(CFG, batch_size=1, limit=2), path,
             progress=False)


def test_limit_and_growing_subset(tmp_path):
    problems = make_problems()
    path = tmp_path / "records.jsonl"
    records, metrics = evaluate(FakeGenerator(problems, CFG.prompt), problems, replace(CFG, limit=4), path,
                                progress=False)
    assert [r["id"] for r in records] == ["p0", "p1", "p2", "p3"] and metrics["n"] == 4
    assert len(read_jsonl(path)) == 4

    gen = FakeGenerator(problems, CFG.prompt)
    records, _ = evaluate(gen, problems, replace(CFG, limit=7), path, progress=False)
    assert gen.n_generated == 3 and [r["id"] for r in records] == [f"p{i}" for i in range(7)]

    with pytest.raises(ValueError, match="limit must be a positive"):
        EvalConfig(limit=0)
    with pytest.raises(ValueError, match="dataset is empty"):
        evaluate(FakeGenerator([], CFG.prompt), [], CFG, progress=False)


def test_seeds_depend_on_problem_id_and_seed_only():
    problems = make_problems()

    def seeds_seen(cfg: EvalConfig) -> dict[str, int]:
        gen = FakeGenerator(problems, cfg.prompt)
        evaluate(gen, problems, cfg, progress=False)
        return {f"p{gen.index[p]}": s for prompts, seeds in gen.calls for p, s in zip(prompts, seeds)}

    by3, by10 = seeds_seen(CFG), seeds_seen(replace(CFG, batch_size=10))
    assert by3 == by10 == {p["id"]: problem_seed(p["id"], 0) for p in problems}
    assert len(set(by3.values())) == len(problems)
    assert set(seeds_seen(replace(CFG, seed=1)).values()).isdisjoint(by3.values())


def test_regrade_reproduces_and_follows_gold_edits(tmp_path):
    problems = make_problems()
    path = tmp_path / "records.jsonl"
    _, metrics = evaluate(FakeGenerator(problems, CFG.prompt), problems, CFG, path, progress=False)
    assert regrade(path) == metrics

    rows = read_jsonl(path)
    assert rows[2]["extracted"] == "5" and not rows[2]["correct"]
    rows[2]["gold"] = "5"  # fix a "wrong" gold answer by hand
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fixed = regrade(path)
    assert fixed["accuracy"] == pytest.approx(metrics["accuracy"] + 0.1)
    assert read_jsonl(path)[2]["correct"] is True
    with pytest.raises(FileNotFoundError, match="run the evaluation first"):
        regrade(tmp_path / "missing.jsonl")


def test_regrade_after_a_grader_version_bump(tmp_path):
    """Records and metrics written by an older grader are judged again by this one, and say so."""
    problems = make_problems(3)
    out = tmp_path / "eval"
    gen = FakeGenerator(problems, CFG.prompt)
    _, metrics = evaluate(gen, problems, CFG, out / "records.jsonl", progress=False)
    old = read_jsonl(out / "records.jsonl")
    # Grader 1.0.0 read a completion cut off inside its last box as the box before it, and credited it.
    old[0].update(completion="So \\boxed{0}. Let me recompute: \\boxed{", extracted="0", correct=True,
                  reason="string-match")
    old[2].update(completion="So \\boxed{4}.\n\n\\boxed{4}", extracted="4, 4", correct=False,
                  reason="mismatch")
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (out / "metrics.json").write_text(json.dumps({**metrics, "grader_version": "1.0.0"}))

    fresh = stage_main(["--out", str(out), "--regrade"])
    assert read_json(out / "metrics.json") == json.loads(json.dumps(fresh))
    assert (fresh["grader"], fresh["grader_version"]) == (GRADER_NAME, GRADER_VERSION)
    assert GRADER_VERSION != "1.0.0"
    r0, r2 = read_jsonl(out / "records.jsonl")[0::2]
    assert (r0["extracted"], r0["correct"], r0["reason"]) == (None, False, "no-answer")
    assert (r2["extracted"], r2["correct"]) == ("4", True)  # a repeated final box is one answer
    assert fresh["accuracy"] == pytest.approx(1 / 3)


def test_eval_config_from_params():
    cfg = from_dict(EvalConfig, {"limit": 5, "prompt": {"template": "chat", "think": True},
                                 "sampling": {"max_new_tokens": 16, "stop_strings": ["\n\n"]}})
    assert cfg.prompt == PromptConfig(template="chat", think=True)
    assert cfg.sampling == SamplingConfig(max_new_tokens=16, stop_strings=("\n\n",))
    assert cfg.hash != EvalConfig().hash
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(EvalConfig, {"sampling": {"max_tokens": 16}})


def test_real_engine_records_match_direct_generation(tiny_ckpt):
    """On the tiny random model: completions are the engine's, and seeded sampling ignores batching.

    The stop string makes rows finish at different steps, so batches compact their caches and the
    next batch of the same shape must start from fresh ones.
    """
    problems = make_problems(6)
    tok = Tokenizer(tiny_ckpt)
    gen = Generator(load_model(tiny_ckpt), tok, batch_size=8)
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, stop_strings=("e",))
    cfg = EvalConfig(batch_size=2, sampling=sampling, seed=3)
    records, metrics = evaluate(gen, problems, cfg, progress=False)
    direct = gen.generate([render(p["problem"]) for p in problems], cfg.sampling,
                          seeds=[problem_seed(p["id"], 3) for p in problems])
    assert [r["completion"] for r in records] == [c.text for [c] in direct]
    assert [r["generated_tokens"] for r in records] == [len(c.tokens) for [c] in direct]
    assert [r["truncated"] for r in records] == [c.truncated for [c] in direct]
    assert all(1 <= r["generated_tokens"] <= 12 for r in records) and metrics["tokens_per_s"] > 0
    assert 0 < metrics["truncation_rate"] < 1  # some rows stopped early, some ran to the limit


def test_stage_cli_end_to_end(tiny_ckpt, tiny_tokenizer_path, tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    write_dataset(make_problems(5), data, source="test")
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  batch_size: 2\n  device: cpu\n  sampling:\n    max_new_tokens: 5\n")
    out = tmp_path / "eval"
    argv = ["--model", str(tiny_ckpt), "--data", str(data), "--out", str(out), "--params", str(params),
            "--state", str(tmp_path / "runs")]

    metrics = stage_main(argv + ["--limit", "3", "--no-progress"])
    records = read_jsonl(out / "records.jsonl")
    assert [r["id"] for r in records] == ["p0", "p1", "p2"]
    assert all(r["generated_tokens"] <= 5 for r in records)
    assert read_json(out / "metrics.json") == json.loads(json.dumps(metrics)) and metrics["n"] == 3
    assert "accuracy" in capsys.readouterr().out
    assert len(records[0]["model_id"]) == 16 and metrics["model_id"] == records[0]["model_id"]

    # a regrade keeps what the generating run needed (its peak memory), not the regrading process's
    assert metrics["peak_memory_bytes"] > 100 * 2**20
    assert stage_main(["--out", str(out), "--regrade"]) == metrics
    # Same command again, its output deleted as `dvc repro` does: everything comes from the journal under
    # --state (nothing regenerated: the timings are the old ones; the process's peak memory may grow).
    shutil.rmtree(out)
    peak = metrics.pop("peak_memory_bytes")
    again = stage_main(argv + ["--limit", "3", "--no-progress"])
    assert again.pop("peak_memory_bytes") >= peak and again == metrics
    assert read_jsonl(out / "records.jsonl") == records
    # Another model is another journal: its own records, never the first model's, and the first stays.
    other = make_checkpoint(tmp_path / "other", "tiny", tiny_tokenizer_path, seed=1)
    other_metrics = stage_main(["--model", str(other)] + argv[2:] + ["--limit", "3", "--no-progress"])
    assert other_metrics["model_id"] != metrics["model_id"] and other_metrics["n"] == 3
    assert {r["model_id"] for r in read_jsonl(out / "records.jsonl")} == {other_metrics["model_id"]}
    assert len(list((tmp_path / "runs").glob("*/records.jsonl"))) == 2
    assert {k: v for k, v in stage_main(argv + ["--limit", "3", "--no-progress"]).items()
            if k != "peak_memory_bytes"} == metrics
    with pytest.raises(SystemExit):
        stage_main(["--out", str(out)])  # neither a model nor --regrade
    with pytest.raises(ValueError, match="unknown key"):
        params.write_text("evaluate:\n  batch: 2\n")
        stage_main(argv)


def test_stage_help():
    res = subprocess.run([sys.executable, "-m", "stages.evaluate", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--regrade" in res.stdout and "records.jsonl" in res.stdout


def test_a_prompt_longer_than_the_context_is_a_record_not_a_stopped_run(tiny_ckpt):
    """One over-long problem among normal ones: its record says "context" (wrong, nothing generated),
    the others are what they would be without it, and the metrics count it."""
    long = {"id": "long", "problem": "What is " + "1 + " * 400 + "1?", "answer": "401", "solution": "", "level": 1,
            "subject": "arithmetic"}
    problems = make_problems(4)
    cfg = EvalConfig(batch_size=2, sampling=SamplingConfig(max_new_tokens=8), device="cpu", dtype="float32")
    generator = Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), batch_size=2)
    assert len(generator.tokenizer.encode(render(long["problem"], cfg.prompt))) + 8 > 512  # the tiny context
    records, metrics = evaluate(generator, problems[:2] + [long] + problems[2:], cfg, progress=False)
    [over] = [r for r in records if r["id"] == "long"]
    assert over["finish_reason"] == "context" and over["completion"] == "" and over["generated_tokens"] == 0
    assert not over["correct"] and not over["truncated"]
    assert metrics["context_overflow"] == 1 and metrics["n"] == 5
    alone, _ = evaluate(generator, problems, cfg, progress=False)
    assert [r for r in records if r["id"] != "long"] == [
        {**r, "seconds": s["seconds"]} for r, s in zip(alone, [r for r in records if r["id"] != "long"])]
    assert all(r["finish_reason"] in ("stop", "length") for r in alone)


def test_stage_skips_rows_without_a_field_and_counts_them(tiny_ckpt, tmp_path, caplog):
    """The reproduction: a JSONL row without `answer` (or `id`) ended the evaluate stage with KeyError."""
    rows = make_problems(4)
    del rows[1]["answer"]
    del rows[2]["id"]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  batch_size: 2\n  device: cpu\n  sampling:\n    max_new_tokens: 4\n")
    metrics = stage_main(["--model", str(tiny_ckpt), "--data", str(tmp_path / "test.jsonl"), "--out",
                          str(tmp_path / "eval"), "--state", str(tmp_path / "runs"), "--params", str(params),
                          "--no-progress"])
    assert metrics["n"] == 2 and metrics["skipped_rows"] == 2
    assert f"{tmp_path / 'test.jsonl'}:2: row skipped: field 'answer' missing or empty" in caplog.text
    assert f"{tmp_path / 'test.jsonl'}:3: row skipped: field 'id' missing or empty" in caplog.text
