"""Inference-time scaling: votes, scorers, selection at budgets, the runner (sampling, sharing, refinement,
resume), log-prob scoring on the real engine, outputs, and the `inference_scaling` stage CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from reasoning.config import from_dict
from reasoning.generate import Completion, Generator, SamplingConfig
from reasoning.grading import answers_equivalent
from reasoning.files import read_json, read_jsonl
from reasoning.metrics import mean_pass_at_k
from reasoning.prompts import COT_SUFFIX, PromptConfig, render
from reasoning.report import pareto_frontier
from reasoning.scaling import (
    MethodConfig, ScalingConfig, answer_suffix, best_setting, budget_metrics, budget_records,
    continuation_logprobs, grid_metrics, heuristic_score, load_best, run_grid, run_method, sample_score, select,
    vote, write_outputs,
)
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model
from stages.inference_scaling import main as stage_main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread
TOPP = SamplingConfig(max_new_tokens=16, temperature=0.9, top_p=0.9)


def problems(n: int = 6) -> list[dict]:
    return [{"id": f"p{i}", "problem": f"What is {i} + {i}?" + " Think." * (i % 3), "answer": str(2 * i),
             "solution": "", "level": 1, "subject": "arithmetic"} for i in range(n)]


class FakeGenerator:
    """Stands in for `Generator`: `answer(prompt, sample_index)` gives (text, logprobs) of a completion;
    after `fail_after` calls it raises (a kill). Records every call."""

    model_id = ""

    def __init__(self, answer, fail_after: int | None = None):
        self.answer, self.fail_after = answer, fail_after
        self.calls: list[tuple[list[str], int, SamplingConfig]] = []

    def generate(self, prompts, sampling, n=1, seeds=None, stream=None):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append((list(prompts), n, sampling))
        out = []
        for p in prompts:
            comps = []
            for j in range(n):
                text, logprobs = self.answer(p, j)
                # real token ids when a tokenizer is attached (log-prob scoring reads them)
                tokens = self.tokenizer.encode(text) if hasattr(self, "tokenizer") else [0] * len(logprobs)
                comps.append(Completion(tokens=tokens, logprobs=logprobs, text=text, finish_reason="stop"))
            out.append(comps)
        return out


def problem_index(prompt: str) -> int:
    return int(prompt.split("What is ")[1].split(" +")[0])


# --- votes, scorers, selection ------------------------------------------------------------------

@pytest.mark.parametrize("answers, scores, expected", [
    (["3", "4", "4", "3", "4"], None, 1),  # plain majority: the first sample of the winning class
    (["1/2", "0.5", "\\frac{1}{2}", "7", "7"], None, 0),  # equivalent forms vote together (3 vs 2)
    ([None, "", "5", None], None, 2),  # samples without an answer do not vote
    ([None, None], None, None),  # nobody answered
    ([None, ""], None, None),  # an empty answer is no answer either
    (["3", "1/2", "1 / 2"], None, 1),  # grader-equal spellings join one class, which then outvotes "3"
    (["3", "4", "4", "3"], None, 0),  # 2-2 tie: the class seen first
    (["3", "4", "4", "3"], [-1.0, -0.2, -0.4, -1.0], 1),  # tie: higher mean score wins (-0.3 > -1.0)
    (["3", "4", "4", "3"], [-0.1, -0.9, -0.9, -0.3], 0),  # ... whichever class that is
    (["3", "4"], [-0.5, -0.5], 0),  # equal means: first appearance
    (["4", "3", "3", "4", "5"], [9.0, 0.0, 0.0, 9.0, 99.0], 0),  # scores only break ties of the largest
])
def test_vote_hand_cases(answers, scores, expected):
    assert vote(answers, scores) == expected


def reference_vote(answers: list[str | None]) -> int | None:
    """Majority vote by brute force: each answered sample counts its grader-equivalent samples; the
    winner is the earliest sample among those with the top count (= the first sample of the class
    seen first among the largest); None when nobody answered."""
    counts = {i: sum(bool(b) and bool(answers_equivalent(a, b)) for b in answers)
              for i, a in enumerate(answers) if a}
    if not counts:
        return None
    top = max(counts.values())
    return min(i for i, c in counts.items() if c == top)


def test_vote_first_tie_break_agrees_with_a_brute_force_majority():
    import random

    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice(["1", "2", "3", None, "", "2.0"]) for _ in range(rng.randint(1, 7))]
        assert vote(answers) == reference_vote(answers), answers


def test_heuristic_score_hand_cases():
    assert heuristic_score("so \\boxed{5}") == pytest.approx(2 + 1.5 * math.exp(-len("so \\boxed{5}") / 500))
    assert heuristic_score("the answer is 5") == pytest.approx(1 + 1.5 * math.exp(-15 / 500))
    assert heuristic_score("no idea") == pytest.approx(1.5 * math.exp(-7 / 500))
    # boxed beats a bare number even when much longer; among boxed answers, shorter wins
    assert heuristic_score("x" * 300 + " \\boxed{5}") > heuristic_score("5")
    assert heuristic_score("\\boxed{5}") > heuristic_score("work " * 20 + "\\boxed{5}")


def test_sample_score_and_missing_values():
    s = {"completion": "\\boxed{2}", "avg_logprob": -0.5, "answer_logprob": None}
    assert sample_score(s, "avg_logprob") == -0.5
    assert sample_score(s, "answer_logprob") == -math.inf  # no answer to score: ranks last
    assert sample_score(s, "heuristic") == heuristic_score("\\boxed{2}")
    with pytest.raises(ValueError, match="does not score"):
        sample_score(s, "none")


def test_method_config_validation_and_params():
    with pytest.raises(ValueError, match="greedy samples are all the same"):
        MethodConfig("sc", n=4, aggregate="majority")
    with pytest.raises(ValueError, match="need a scorer"):
        MethodConfig("bon", sampling=TOPP, n=4, aggregate="best_of_n")
    with pytest.raises(ValueError, match="budgets"):
        MethodConfig("sc", sampling=TOPP, n=4, aggregate="majority", budgets=(2, 8))
    with pytest.raises(ValueError, match="uses one sample"):
        MethodConfig("one", sampling=TOPP, n=3)
    with pytest.raises(ValueError, match="refine_iters >= 1"):
        MethodConfig("r", aggregate="refine")
    with pytest.raises(ValueError, match="scorer 'logp' is unknown"):
        MethodConfig("x", scorer="logp")
    with pytest.raises(ValueError, match="names a file"):
        MethodConfig("a/b")
    assert MethodConfig("sc", sampling=TOPP, n=4, aggregate="majority").budgets == (4,)
    assert MethodConfig("r", aggregate="refine", refine_iters=2).budgets == (2,)
    cfg = from_dict(ScalingConfig, yaml.safe_load("""
        batch_size: 8
        methods:
          - {name: direct, sampling: {max_new_tokens: 8}}
          - name: sc
            prompt: {cot_suffix: " Explain step by step."}
            sampling: {max_new_tokens: 8, temperature: 0.9, top_p: 0.9, stop_strings: ["\\n\\n"]}
            n: 4
            aggregate: majority
            budgets: [1, 2, 4]
    """))
    sampling = replace(TOPP, max_new_tokens=8, stop_strings=("\n\n",))
    assert cfg.methods[1] == MethodConfig("sc", PromptConfig(cot_suffix=COT_SUFFIX), sampling, 4, "majority",
                                          budgets=(1, 2, 4))
    with pytest.raises(ValueError, match=r"methods\[0\]: unknown key"):
        from_dict(ScalingConfig, {"methods": [{"name": "a", "temprature": 1}]})
    with pytest.raises(ValueError, match="unique"):
        from_dict(ScalingConfig, {"methods": [{"name": "a"}, {"name": "a"}]})


def test_pareto_frontier_hand_points():
    # (tokens, accuracy)
    points = [(10, 0.2), (20, 0.5), (15, 0.1), (40, 0.5), (80, 0.7), (5, 0.2), (30, 0.45), (80, 0.6)]
    assert pareto_frontier(points) == [5, 1, 4]  # (5,.2) beats (10,.2); (40,.5) adds no accuracy
    assert pareto_frontier([(1, 0.3)]) == [0]
    assert pareto_frontier([(1, 0.3), (1, 0.3)]) == [0]


# --- the runner ---------------------------------------------------------------------------------

def sc_answer(prompt: str, j: int) -> tuple[str, list[float]]:
    """Problem i, sample j: right on samples 0 and 3 (mod 5), wrong (one class) otherwise; the
    log-probs prefer the right samples on even problems only."""
    i = problem_index(prompt)
    right = j % 5 in (0, 3)
    text = f"so \\boxed{{{2 * i if right else 2 * i + 1}}}"
    return text, [-0.1 if right == (i % 2 == 0) else -1.0] * 3


def test_budgets_come_from_one_run_and_match_the_metrics_module(tmp_path):
    gen = FakeGenerator(sc_answer)
    sc = MethodConfig("sc", sampling=TOPP, n=5, aggregate="majority", budgets=(1, 2, 3, 5))
    records = run_method(gen, problems(), sc, tmp_path / "sc.jsonl", progress=False)
    assert len(gen.calls) == 1 and gen.calls[0][1] == 5  # one batch of all problems, n = 5 each
    assert [len(r["samples"]) for r in records] == [5] * 6
    answers = [[s["extracted"] for s in r["samples"]] for r in records]
    correct = [[s["correct"] for s in r["samples"]] for r in records]
    for k in sc.budgets:
        m = budget_metrics(records, sc, k)
        winners = [reference_vote(a[:k]) for a in answers]  # maj@k on each problem's first k samples
        assert m["accuracy"] == pytest.approx(
            sum(w is not None and c[w] for w, c in zip(winners, correct)) / len(records))
        assert m["pass_at_k"] == pytest.approx(mean_pass_at_k(correct, k))
        assert m["tokens_total"] == 6 * 3 * k
    # maj@1 right, maj@2 tie -> first (right), maj@3: 2 wrong vs 1 right, maj@5: 3 wrong vs 2 right
    assert [budget_metrics(records, sc, k)["accuracy"] for k in sc.budgets] == [1.0, 1.0, 0.0, 0.0]


def test_majority_budgets_count_no_answer_as_wrong_and_need_k_samples():
    # per problem, the extracted answer of samples 0..4 (None: no answer); gold 5, 2, 8
    table = [["5", "4", "4", "5", "5"], ["1", "2", "3", "2", "2"], [None, None, "9", "8", "8"]]
    gold = ["5", "2", "8"]
    probs = [{**p, "answer": gold[i]} for i, p in enumerate(problems(3))]

    def answer(prompt, j):
        a = table[problem_index(prompt)][j]
        return (f"so \\boxed{{{a}}}" if a else "I cannot say."), [-0.5] * 3

    sc = MethodConfig("sc", sampling=TOPP, n=5, aggregate="majority", budgets=(1, 3, 5))
    records = run_method(FakeGenerator(answer), probs, sc, progress=False)
    assert [[s["extracted"] for s in r["samples"]] for r in records] == table
    # k=1: "5" right, "1" wrong, no answer (wrong); k=3: "4" (2 of 3) wrong, 1-1-1 tie -> "1" wrong,
    # "9" wrong; k=5: "5", "2", "8" all right
    accuracy = [budget_metrics(records, sc, k)["accuracy"] for k in sc.budgets]
    assert accuracy == pytest.approx([1 / 3, 0.0, 1.0])
    unanswered = budget_records(records, sc, 1)[2]
    assert [unanswered[key] for key in ("extracted", "correct", "reason")] == [None, False, "no-answer"]
    assert select(records[2], sc, 1) is None
    with pytest.raises(ValueError, match="budget 6 needs 6"):
        select(records[0], sc, 6)


def test_best_of_n_picks_the_highest_scoring_sample():
    gen = FakeGenerator(sc_answer)
    bon = MethodConfig("bon", sampling=TOPP, n=5, aggregate="best_of_n", scorer="avg_logprob",
                       budgets=(1, 2, 5))
    records = run_method(gen, problems(), bon, progress=False)
    for r in records:
        scores = [sample_score(s, "avg_logprob") for s in r["samples"]]
        for k in bon.budgets:
            i = select(r, bon, k)
            assert scores[i] == max(scores[:k]) and scores.index(scores[i]) == i
    # even problems: the scorer prefers right samples; odd problems: wrong ones (once one is in the first k)
    assert [r["samples"][select(r, bon, 2)]["correct"] for r in records] == [True, False] * 3


def test_grid_shares_samples_between_methods_with_the_same_sampling(tmp_path):
    gen = FakeGenerator(sc_answer)
    methods = [MethodConfig("single", sampling=TOPP),
               MethodConfig("sc", sampling=TOPP, n=3, aggregate="majority"),
               MethodConfig("bon", sampling=TOPP, n=5, aggregate="best_of_n", scorer="heuristic"),
               MethodConfig("cot", prompt=PromptConfig(cot_suffix=COT_SUFFIX), sampling=TOPP)]
    records = run_grid(gen, problems(), methods, tmp_path, progress=False)
    assert sorted(n for _, n, _ in gen.calls) == [1, 5]  # bon (largest n) sampled; single and sc reuse it
    for name, n in (("single", 1), ("sc", 3)):
        assert [r["samples"] for r in records[name]] == [r["samples"][:n] for r in records["bon"]]
    # one journal per method, named by its configuration: a changed method is a new journal
    assert {p.name for p in tmp_path.iterdir()} == {f"{m.name}-{m.hash(0)}.jsonl" for m in methods}


def test_resume_after_kill_continues_without_duplicates(tmp_path):
    path = tmp_path / "sc.jsonl"
    sc = MethodConfig("sc", sampling=TOPP, n=4, aggregate="majority")
    full = run_method(FakeGenerator(sc_answer), problems(), sc, progress=False)
    with pytest.raises(KeyboardInterrupt):  # 2 problems a batch (batch_size 8 // n 4): killed after 2 batches
        run_method(FakeGenerator(sc_answer, fail_after=2), problems(), sc, path, batch_size=8, progress=False)
    assert len(read_jsonl(path)) == 4
    gen = FakeGenerator(sc_answer)
    resumed = run_method(gen, problems(), sc, path, batch_size=8, progress=False)
    assert sum(len(p) for p, _, _ in gen.calls) == 2  # only the 2 problems left
    def untimed(rs):
        return [[{k: v for k, v in s.items() if k != "seconds"} for s in r["samples"]] for r in rs]

    assert untimed(resumed) == untimed(full)
    assert [r["id"] for r in read_jsonl(path)] == [p["id"] for p in problems()]
    with pytest.raises(ValueError, match="different configuration"):
        run_method(gen, problems(), replace(sc, sampling=replace(TOPP, temperature=0.5)), path,
                   progress=False)
    gen.model_id = "other"
    with pytest.raises(ValueError, match="records of model '', not 'other'"):
        run_method(gen, problems(), sc, path, progress=False)
    gen.model_id = ""
    # budgets are not part of the record: a new set of budgets reuses the file without generating
    gen = FakeGenerator(sc_answer, fail_after=0)
    run_method(gen, problems(), replace(sc, budgets=(1, 2, 4)), path, progress=False)


def refine_answer(prompt: str, j: int) -> tuple[str, list[float]]:
    """Drafts are wrong and boxed; critiques say 'fix it'; revisions are right but unboxed on odd problems."""
    if prompt.startswith("Check the draft"):
        return "fix it", [-1.0] * 2
    i = problem_index(prompt.split("Question:\n")[1])
    if prompt.startswith("Rewrite the answer"):
        return (f"\\boxed{{{2 * i}}}" if i % 2 == 0 else f"The answer is {2 * i}"), [-0.5] * 4
    return f"\\boxed{{{2 * i + 1}}}", [-0.5] * 4


@pytest.mark.parametrize("accept_if_better", [False, True])
def test_refinement_iterations_and_acceptance(accept_if_better):
    gen = FakeGenerator(refine_answer)
    method = MethodConfig("ref", sampling=TOPP, aggregate="refine", scorer="heuristic", refine_iters=2,
                          accept_if_better=accept_if_better, critique_tokens=7, budgets=(0, 1, 2))
    records = run_method(gen, problems(4), method, progress=False)
    # one draft batch, then (critique, refine) per iteration, all problems in each batch
    assert [len(p) for p, _, _ in gen.calls] == [4] * 5
    assert [s.max_new_tokens for _, _, s in gen.calls] == [16, 7, 16, 7, 16]
    assert all(len(r["samples"]) == 3 and len(r["critiques"]) == 2 for r in records)
    odd = [r for r in records if int(r["id"][1:]) % 2]
    even = [r for r in records if not int(r["id"][1:]) % 2]
    assert all(r["current"] == [0, 1, 2] for r in even)  # boxed revisions: accepted either way
    # unboxed revisions score lower under the heuristic: kept out only with scorer-based acceptance
    assert all(r["current"] == ([0, 0, 0] if accept_if_better else [0, 1, 2]) for r in odd)
    acc = [budget_metrics(records, method, k)["accuracy"] for k in (0, 1, 2)]
    assert acc == ([0.0, 0.5, 0.5] if accept_if_better else [0.0, 1.0, 1.0])
    # tokens: draft + each round's critique and revision
    assert [budget_metrics(records, method, k)["tokens_per_problem"] for k in (0, 1, 2)] == [4, 10, 16]
    # the critique of round 2 reviews the current answer
    for prompt in gen.calls[3][0]:
        r = records[problem_index(prompt.split("Question:\n")[1])]
        assert "Draft answer:\n" + r["samples"][r["current"][1]]["completion"] + "\n" in prompt


# --- the real engine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), batch_size=16)


def test_smaller_budget_equals_running_at_that_budget(engine):
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.95)
    big = run_method(engine, problems(4), MethodConfig("sc", sampling=sampling, n=6, aggregate="majority"),
                     seed=3, progress=False)
    small = run_method(engine, problems(4), MethodConfig("sc", sampling=sampling, n=2, aggregate="majority"),
                       seed=3, batch_size=4, progress=False)  # other batches too
    def strip(samples):
        return [{k: s[k] for k in ("completion", "generated_tokens", "truncated")} for s in samples]

    assert [strip(r["samples"][:2]) for r in big] == [strip(r["samples"]) for r in small]
    assert len({s["completion"] for r in big for s in r["samples"]}) > 4  # the samples do differ


def test_continuation_logprobs_match_generation_and_single_rows(engine):
    tok, model = engine.tokenizer, engine.model
    prompts = [render(p["problem"]) for p in problems(3)]
    [[a], [b], [c]] = engine.generate(prompts, SamplingConfig(max_new_tokens=6))
    ids = [tok.encode(p) for p in prompts]
    batched = continuation_logprobs(model, ids, [a.tokens, b.tokens, c.tokens])
    for got, comp in zip(batched, (a, b, c)):  # the engine's own log-probs of its greedy tokens
        assert got == pytest.approx(sum(comp.logprobs) / len(comp.logprobs), abs=1e-4)
    tiny_chunks = continuation_logprobs(model, ids, [a.tokens, b.tokens, c.tokens], max_logits=1)
    assert tiny_chunks == pytest.approx(batched, abs=1e-5)
    assert continuation_logprobs(model, ids[:1], [[]]) == [None]


def test_answer_logprob_scorer_uses_the_prompt_and_boxed_answer(engine):
    method = MethodConfig("bon", sampling=SamplingConfig(max_new_tokens=8, temperature=1.0), n=3,
                          aggregate="best_of_n", scorer="answer_logprob")

    def answer(prompt, j):
        return ["\\boxed{2}", "no answer here", "It is \\boxed{3}"][j], [-1.0]

    [r] = run_method(_with_engine(answer, engine), problems(1), method, progress=False)
    tok = engine.tokenizer
    prompt_ids = tok.encode(render(problems(1)[0]["problem"]))
    want = continuation_logprobs(engine.model, [prompt_ids] * 2,
                                 [tok.encode(answer_suffix(a)) for a in ("2", "3")])
    assert [s["answer_logprob"] for s in r["samples"]] == pytest.approx([want[0], None, want[1]])
    assert select(r, method, 3) == (0 if want[0] >= want[1] else 2)


def test_refinement_rescores_revisions_under_the_method_prompt(engine):
    def answer(prompt, j):  # drafts, critiques and revisions with known text
        if prompt.startswith("Check the draft"):
            return "fix it", [-1.0]
        return ("So \\boxed{2}" if prompt.startswith("Rewrite") else "\\boxed{1}"), [-0.25, -0.75]

    method = MethodConfig("ref", sampling=TOPP, aggregate="refine", scorer="avg_logprob", refine_iters=1,
                          accept_if_better=True)
    records = run_method(_with_engine(answer, engine), problems(2), method, progress=False)
    tok = engine.tokenizer
    for r in records:
        draft, revision = r["samples"]
        assert draft["score"] == draft["avg_logprob"] == -0.5  # the draft's own generation log-probs
        # generated after the refine prompt, the revision is scored by a forward pass after the method prompt
        want = continuation_logprobs(engine.model, [tok.encode(r["prompt"])],
                                     [tok.encode("So \\boxed{2}")])[0]
        assert revision["score"] == revision["avg_logprob"] == pytest.approx(want, abs=1e-5)
        assert r["current"] == [0, 1 if want >= -0.5 else 0]


def _with_engine(answer, engine) -> FakeGenerator:
    fake = FakeGenerator(answer)
    fake.model, fake.tokenizer = engine.model, engine.tokenizer
    return fake


# --- outputs and the stage --------------------------------------------------------------------------

def test_outputs_table_plot_metrics_and_best(tmp_path):
    methods = [MethodConfig("single", sampling=TOPP),
               MethodConfig("sc", sampling=TOPP, n=5, aggregate="majority", budgets=(1, 2, 3, 5)),
               MethodConfig("bon", sampling=TOPP, n=5, aggregate="best_of_n", scorer="avg_logprob",
                            budgets=(2, 5))]
    records = run_grid(FakeGenerator(sc_answer), problems(), methods, tmp_path / "records", progress=False)
    metrics = write_outputs(tmp_path, methods, records, "toy")
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == 1 + 4 + 2  # one line per (method, budget) under the header
    assert 'Self-consistency (n=3) + "Top-p"' in table and "Best-of-N (n=5, avg_logprob)" in table
    csv_lines = (tmp_path / "table.csv").read_text().splitlines()
    assert len(csv_lines) == 8 and csv_lines[0].startswith("method,budget,label,accuracy")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = read_json(tmp_path / "metrics.json")
    assert saved == metrics
    assert set(saved) == {"single/1", "sc/1", "sc/2", "sc/3", "sc/5", "bon/2", "bon/5", "best"}
    assert saved["sc/2"]["tokens_total"] == 6 * 2 * 3 and saved["sc/2"]["n"] == 6
    # best: accuracy 1.0 is reached by single@1, sc@1 and sc@2; the fewest tokens wins (single@1 first)
    best = read_json(tmp_path / "best.json")
    assert (best["method"], best["budget"], best["accuracy"]) == ("single", 1, 1.0)
    config, best_records = load_best(tmp_path)
    assert config == methods[0]
    assert [r["correct"] for r in best_records] == [r["samples"][0]["correct"] for r in records["single"]]
    rows = grid_metrics(methods, records)
    assert rows[0]["diff"] is None and "| - |" in table.splitlines()[2]
    # sc@3 is wrong on all 6 problems single@1 gets right: McNemar p = 2 / 2**6
    assert (rows[3]["method"], rows[3]["budget"], rows[3]["diff"]) == ("sc", 3, -1.0)
    assert rows[3]["p_value"] == pytest.approx(2 / 2**6) and rows[3]["diff_ci_high"] == -1.0
    assert "-100.0 [-100.0, -100.0], p=0.031" in table
    sc_best = best_setting(rows[1:], methods[1:])  # sc at budget 1 runs as a single sample
    assert (sc_best["config"]["n"], sc_best["config"]["aggregate"]) == (1, "single")
    assert sc_best["source_config"]["n"] == 5
    with pytest.raises(FileNotFoundError, match="inference_scaling"):
        load_best(tmp_path / "nope")


def test_stage_cli_end_to_end(tiny_ckpt, tmp_path, capsys):
    from reasoning.data import write_dataset

    data = tmp_path / "test.jsonl"
    write_dataset(problems(4), data, source="test")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"inference_scaling": {"batch_size": 8, "device": "cpu", "methods": [
        {"name": "greedy", "sampling": {"max_new_tokens": 6}},
        {"name": "sc", "sampling": {"max_new_tokens": 6, "temperature": 1.0}, "n": 3, "aggregate": "majority",
         "budgets": [1, 3]},
    ]}}))
    out = tmp_path / "scaling"
    metrics = stage_main(["--model", str(tiny_ckpt), "--data", str(data), "--out", str(out),
                          "--state", str(tmp_path / "runs"),
                          "--params", str(params), "--no-progress"])
    assert set(metrics) == {"greedy/1", "sc/1", "sc/3", "best", "peak_memory_bytes"}
    for name in ("table.md", "table.csv", "frontier.png", "metrics.json", "best.json", "records/sc.jsonl"):
        assert (out / name).exists(), name
    assert "| 3 |" in capsys.readouterr().out
    again = stage_main(["--out", str(out), "--params", str(params), "--report"])  # no model needed
    assert again == metrics


def test_stage_help():
    result = subprocess.run([sys.executable, "-m", "stages.inference_scaling", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Pareto frontier" in result.stdout
