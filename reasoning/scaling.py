"""Inference-time scaling: chain-of-thought, sampling, self-consistency, best-of-N and
self-refinement as configurations of one runner on the batched engine.

Design choices:
- A method is a frozen `MethodConfig`: a prompt (CoT is a prompt suffix), sampling settings, n
  samples per problem and how they are aggregated ("single", "majority", "best_of_n", "refine").
  One `run_method` runs every method: the n samples of a prompt share its prefill and a batch
  spans problems (both done by `Generator.generate`).
- Records keep every sample (completion, verdict, tokens, scores) and selection is a pure
  function of a record and a budget (`select`), so maj@k, best-of-k and pass@k for every k <= n
  come from one run at the largest n. Sample j of a problem is seeded by (problem id, seed, j)
  only, so the first k of n samples are the samples a run at n = k draws.
- Methods that differ only in how they aggregate share samples (`run_grid`): best-of-N and
  self-consistency with the same prompt, sampling and seed score one set of samples.
- Self-refinement is the book's chapter 5 loop (draft -> critique -> refine, optionally keeping
  the revision only when a scorer rates it no worse), run one step at a time over a batch of
  problems. A record keeps the answer current after each iteration, so a refine method's budgets
  are iteration counts read off one run.
- Votes group answers with the grader's `answers_equivalent`; samples without an answer do not
  vote. Ties between equally large classes go to the class seen first, or to the class with the
  higher mean score (heuristic or average log-prob).
- Scorers (book chapter 5): "heuristic" (a boxed answer > a bare number > nothing, plus a
  brevity bonus); "avg_logprob", the mean log-prob of the completion's tokens given the method's
  prompt (free from generation; recomputed for refinements, which were generated under the
  refine prompt); "answer_logprob", the mean log-prob of "\\n\\boxed{answer}" right after the
  prompt, one extra forward pass per distinct answer.
- Time: a generation batch's wall time is split over its samples in proportion to their
  generated tokens, so the time of a smaller budget is estimated from the samples it uses.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from .config import from_dict, stable_hash
from .evaluate import EvalConfig, evaluate, evaluation_journal, metrics_from_records, model_eval_config
from .generate import Completion, SamplingConfig, check_matmul_dtype, load_generator
from .grading import answers_equivalent, extract_answer
from .files import atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from .metrics import answer_classes, compare_records, mean_pass_at_k
from .prompts import PromptConfig, chat_template_of, prompt_hash, render
from .records import (Record, chunked, expected_fields, grade_record, journal, problem_prompts, resume_records,
                      run_resumable, shard)
from .report import TABLE_FIELDS, plot_frontier, scaling_table, write_csv
from .seeds import problem_seed

if TYPE_CHECKING:
    from .checkpoint import Dist

Aggregate = Literal["single", "majority", "best_of_n", "refine"]
Scorer = Literal["none", "heuristic", "avg_logprob", "answer_logprob"]
TieBreak = Literal["first", "heuristic", "avg_logprob"]
AGGREGATES, SCORERS, TIE_BREAKS = get_args(Aggregate), get_args(Scorer), get_args(TieBreak)

# The chapter 5 critique and refine prompts, in our words.
CRITIQUE_TEMPLATE = (
    "Check the draft answer below for arithmetic mistakes, logical errors and missing steps. If it is "
    "correct, say so briefly; otherwise say what is wrong and how to fix it, in under 120 words.\n\n"
    "Question:\n{problem}\n\nDraft answer:\n{draft}\n\nCritique:"
)
REFINE_TEMPLATE = (
    "Rewrite the answer, fixing what the critique points out. Keep it short and end with the final "
    "result as \\boxed{{ANSWER}}.\n\nQuestion:\n{problem}\n\nPrevious answer:\n{draft}\n\n"
    "Critique:\n{critique}\n\nRevised answer:"
)


@dataclass(frozen=True)
class MethodConfig:
    name: str
    prompt: PromptConfig = PromptConfig()
    sampling: SamplingConfig = SamplingConfig()
    n: int = 1  # samples per problem (1 for single and refine)
    aggregate: Aggregate = "single"
    scorer: Scorer = "none"  # ranks best-of-N samples, gates refinements
    tie_break: TieBreak = "first"  # between equally large vote classes
    refine_iters: int = 0  # critique + refine rounds (refine only)
    accept_if_better: bool = False  # refine: keep a revision only if the scorer rates it no worse
    critique_tokens: int = 192  # refine: max new tokens of a critique
    budgets: tuple[int, ...] = ()  # sample counts k <= n (iterations for refine) to report; () = the largest

    def __post_init__(self) -> None:
        where = f"scaling method {self.name!r}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"{where}: a name needs letters, digits, '_', '.' or '-' only (it names a file)")
        checks = (("aggregate", self.aggregate, AGGREGATES), ("scorer", self.scorer, SCORERS),
                  ("tie_break", self.tie_break, TIE_BREAKS))
        for field, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{where}: {field} {value!r} is unknown; use one of {', '.join(allowed)}")
        if self.n < 1:
            raise ValueError(f"{where}: n must be >= 1, got {self.n}")
        if self.aggregate in ("single", "refine") and self.n != 1:
            raise ValueError(f"{where}: aggregate {self.aggregate!r} uses one sample (n: 1); "
                             "use majority or best_of_n for n > 1")
        if self.n > 1 and self.sampling.greedy:
            raise ValueError(f"{where}: n = {self.n} greedy samples are all the same; "
                             "set sampling.temperature > 0 (1e-5 or more: below that decoding is greedy)")
        if self.aggregate == "refine":
            if self.refine_iters < 1:
                raise ValueError(f"{where}: refine needs refine_iters >= 1")
            if self.critique_tokens < 1:
                raise ValueError(f"{where}: critique_tokens must be >= 1")
        elif self.refine_iters or self.accept_if_better:
            raise ValueError(f"{where}: refine_iters and accept_if_better apply to aggregate: refine only")
        if self.scorer == "none" and (self.aggregate == "best_of_n" or self.accept_if_better):
            raise ValueError(f"{where}: best_of_n and accept_if_better need a scorer "
                             f"({', '.join(SCORERS[1:])})")
        top = self.refine_iters if self.aggregate == "refine" else self.n
        low = 0 if self.aggregate == "refine" else 1
        budgets = tuple(self.budgets) or (top,)
        if list(budgets) != sorted(set(budgets)) or budgets[0] < low or budgets[-1] > top:
            raise ValueError(f"{where}: budgets {list(self.budgets)} must be increasing, between {low} and "
                             f"{top} ({'refine_iters' if self.aggregate == 'refine' else 'n'})")
        object.__setattr__(self, "budgets", budgets)

    @property
    def sample_key(self) -> str:
        """What determines the samples of a sampling method (not how they are aggregated)."""
        return stable_hash({"prompt": self.prompt.hash, "sampling": dataclasses.asdict(self.sampling)})

    def hash(self, seed: int) -> str:
        """What determines a record: everything but the name and the budgets reported."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "budgets", "prompt")}
        return stable_hash({**fields, "prompt": self.prompt.hash, "seed": seed})

    def at_budget(self, k: int) -> "MethodConfig":
        """This method run at budget k alone (n = k, or k refine iterations)."""
        if self.aggregate == "refine":
            return dataclasses.replace(self, refine_iters=k, budgets=(k,)) if k else dataclasses.replace(
                self, aggregate="single", refine_iters=0, accept_if_better=False, scorer="none", budgets=(1,))
        single = k == 1 and self.aggregate == "majority"  # a vote of one is a single sample
        return dataclasses.replace(self, n=k, budgets=(k,), aggregate="single" if single else self.aggregate)


@dataclass(frozen=True)
class ScalingConfig:
    methods: tuple[MethodConfig, ...] = ()
    limit: int | None = None  # run on the first `limit` test problems only
    batch_size: int = 64  # rows (problems x samples) decoded together
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    matmul_dtype: str = "model"  # model | auto | bfloat16 | int8 ...: the weight matmuls' precision (generate.Generator)
    seed: int = 0

    def __post_init__(self) -> None:
        check_matmul_dtype(self.matmul_dtype, "inference_scaling.matmul_dtype")
        # from_dict leaves a list of mappings as dicts: build the methods here
        methods = tuple(from_dict(MethodConfig, m, f"inference_scaling.methods[{i}]") if isinstance(m, dict)
                        else m for i, m in enumerate(self.methods))
        object.__setattr__(self, "methods", methods)
        if not methods:
            raise ValueError("inference_scaling.methods is empty: list at least one method")
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ValueError(f"inference_scaling.methods: names must be unique, got {names}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"inference_scaling.limit must be a positive number of problems or null, "
                             f"got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"inference_scaling.batch_size must be >= 1, got {self.batch_size}")


# ---------------------------------------------------------------------------------------------
# Scorers, votes, selection
# ---------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\s*\{\s*[^\s}]")


def heuristic_score(text: str) -> float:
    """Book chapter 5's heuristic: 2 for a boxed answer, else 1 for any extractable answer, plus a
    brevity bonus 1.5 * exp(-characters / 500)."""
    answer = extract_answer(text)
    bonus = 2.0 if answer and _BOXED.search(text) else 1.0 if answer else 0.0
    return bonus + 1.5 * math.exp(-len(text) / 500)


def sample_score(sample: dict[str, Any], scorer: str) -> float:
    """A sample's score under `scorer`; a sample the scorer cannot rate (no answer) gets -inf."""
    if scorer == "heuristic":
        return heuristic_score(sample["completion"])
    if scorer in ("avg_logprob", "answer_logprob"):
        value = sample.get(scorer)
        return -math.inf if value is None else value
    raise ValueError(f"scorer {scorer!r} does not score samples; use one of {', '.join(SCORERS[1:])}")


def grader_classes(answers: Sequence[str | None]) -> list[list[int]]:
    """Sample indices grouped by grader-equivalent answers (metrics.answer_classes with the grader)."""
    return answer_classes(answers, lambda a, b: bool(answers_equivalent(a, b)))


def vote(answers: Sequence[str | None], scores: Sequence[float] | None = None) -> int | None:
    """Index of the first sample of the largest answer class, or None when no sample answered.

    Equally large classes are separated by the mean of `scores` over their members (when given),
    then by first appearance.
    """
    classes = grader_classes(answers)
    if not classes:
        return None
    top = max(len(c) for c in classes)
    tied = [c for c in classes if len(c) == top]
    if scores is not None and len(tied) > 1:
        # max keeps the first of equal means: first appearance is the last tie-break
        return max(tied, key=lambda c: sum(scores[i] for i in c) / len(c))[0]
    return tied[0][0]


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score (the first of equals)."""
    return max(range(len(scores)), key=lambda i: scores[i])


def select(record: dict[str, Any], method: MethodConfig, k: int) -> int | None:
    """Index (into record["samples"]) of the answer `method` gives at budget k; None: no answer."""
    samples = record["samples"]
    if method.aggregate == "refine":
        return record["current"][k]
    if len(samples) < k:
        raise ValueError(f"record {record['id']} has {len(samples)} samples, budget {k} needs {k}")
    first = samples[:k]
    if method.aggregate == "single":
        return 0
    if method.aggregate == "best_of_n":
        return best_index([sample_score(s, method.scorer) for s in first])
    scores = None if method.tie_break == "first" else [sample_score(s, method.tie_break) for s in first]
    return vote([s["extracted"] for s in first], scores)


def budget_cost(record: dict[str, Any], method: MethodConfig, k: int) -> tuple[int, float]:
    """(generated tokens, estimated seconds) that budget k spends on one problem: the samples (and,
    for refinement, critiques) it uses, plus their share of the record's scoring time."""
    samples = record["samples"][:k + 1] if method.aggregate == "refine" else record["samples"][:k]
    used = samples + record.get("critiques", [])[:k]
    scoring = record.get("scoring_seconds", 0.0) * len(samples) / len(record["samples"])
    return sum(s["generated_tokens"] for s in used), sum(s["seconds"] for s in used) + scoring


# ---------------------------------------------------------------------------------------------
# Log-prob scoring with the model
# ---------------------------------------------------------------------------------------------

@torch.inference_mode()
def continuation_logprobs(model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                          continuations: Sequence[Sequence[int]], max_logits: int = 1 << 27
                          ) -> list[float | None]:
    """Mean log-prob of each continuation's tokens right after its prompt (None when empty).

    Rows are right-padded and run through the causal forward in chunks holding at most
    `max_logits` logits (padding at the end is invisible to earlier positions).
    """
    out: list[float | None] = [None] * len(prompts)
    rows = sorted((i for i in range(len(prompts)) if continuations[i]),
                  key=lambda i: len(prompts[i]) + len(continuations[i]))
    vocab = model.config.vocab_size
    start = 0
    while start < len(rows):
        longest = len(prompts[rows[start]]) + len(continuations[rows[start]])
        end = start + 1
        while end < len(rows):
            longer = max(longest, len(prompts[rows[end]]) + len(continuations[rows[end]]))
            if (end - start + 1) * longer * vocab > max_logits:
                break
            longest, end = longer, end + 1
        chunk = rows[start:end]
        idx = torch.zeros(len(chunk), longest, dtype=torch.long)
        for r, i in enumerate(chunk):
            seq = list(prompts[i]) + list(continuations[i])
            idx[r, :len(seq)] = torch.tensor(seq)
        logits = model(idx.to(model.device))  # (B, T, V) fp32
        for r, i in enumerate(chunk):
            p, c = len(prompts[i]), len(continuations[i])
            logp = torch.log_softmax(logits[r, p - 1:p + c - 1], -1)  # positions predicting the continuation
            out[i] = logp.gather(-1, idx[r, p:p + c, None].to(logp.device)).mean().item()
        start = end
    return out


def answer_suffix(answer: str) -> str:
    return "\n\\boxed{" + answer.strip() + "}"


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------

def _sample(c: Completion, gold: str, seconds: float) -> dict[str, Any]:
    s = {"completion": c.text, "generated_tokens": len(c.tokens), "truncated": c.truncated,
         "finish_reason": c.finish_reason,
         "avg_logprob": sum(c.logprobs) / len(c.logprobs) if c.logprobs else None, "seconds": seconds}
    return _graded(s, gold)


def _graded(sample: dict[str, Any], gold: str) -> dict[str, Any]:
    """The sample with extracted/correct/reason recomputed (evaluate's `grade_record`)."""
    return {k: v for k, v in grade_record({**sample, "gold": gold}).items() if k != "gold"}


def _shares(completions: Sequence[Completion], seconds: float) -> list[float]:
    """A batch's seconds split over its completions in proportion to generated tokens (+1 each)."""
    weights = [len(c.tokens) + 1 for c in completions]
    return [seconds * w / sum(weights) for w in weights]


def _instruction(text: str, cfg: PromptConfig, generator: Any) -> str:
    """A critique/refine instruction as the model sees it: raw for base models, a user turn in the
    model's chat template for chat."""
    if cfg.template == "base":
        return text
    return render(text, dataclasses.replace(cfg, cot_suffix=""), chat_template_of(generator, cfg))


class _Runner:
    """Generation and scoring shared by the sampling and refinement paths of `run_method`."""

    def __init__(self, generator: Any, method: MethodConfig, seed: int):
        self.gen, self.method, self.seed = generator, method, seed

    def generate(self, prompts: list[str], keys: list[str], sampling: SamplingConfig, n: int = 1
                 ) -> tuple[list[list[Completion]], list[list[float]]]:
        t0 = time.perf_counter()
        outs = self.gen.generate(prompts, sampling, n=n, seeds=[problem_seed(k, self.seed) for k in keys])
        flat = _shares([c for comps in outs for c in comps], time.perf_counter() - t0)
        return outs, [flat[i * n:(i + 1) * n] for i in range(len(outs))]

    def logprob_kinds(self) -> set[str]:
        """The log-prob scores the method needs from extra forward passes (not from generation)."""
        m = self.method
        used = {m.scorer} | ({m.tie_break} if m.aggregate == "majority" else set())
        kinds = used & {"answer_logprob"}
        if m.aggregate == "refine" and "avg_logprob" in used:
            kinds.add("avg_logprob")  # revisions were generated under the refine prompt: rescore them
        return kinds

    def add_logprob_scores(self, items: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[float]:
        """Fill the scores `logprob_kinds` names into the samples lacking them, all (prompt, samples)
        items in one batched pass; returns each item's share of the seconds spent."""
        kinds = self.logprob_kinds()
        if not kinds:
            for _, samples in items:
                for s in samples:
                    s.pop("tokens", None)
            return [0.0] * len(items)
        tok = self.gen.tokenizer
        t0 = time.perf_counter()
        # (sample, score key, prompt ids, continuation ids)
        jobs: list[tuple[dict[str, Any], str, tuple[int, ...], tuple[int, ...]]] = []
        counts = []
        for prompt, samples in items:
            prompt_ids, before = tuple(tok.encode(prompt)), len(jobs)
            for s in samples:
                if "answer_logprob" in kinds and "answer_logprob" not in s:
                    if s["extracted"]:
                        answer = tuple(tok.encode(answer_suffix(s["extracted"])))
                        jobs.append((s, "answer_logprob", prompt_ids, answer))
                    else:
                        s["answer_logprob"] = None  # nothing to score: ranks last
                if "tokens" in s:  # a refinement, generated under the refine prompt: rescore under this one
                    ids = tuple(s.pop("tokens"))
                    if "avg_logprob" in kinds:
                        jobs.append((s, "avg_logprob", prompt_ids, ids))
            counts.append(len(jobs) - before)
        unique = sorted({(p, c) for _, _, p, c in jobs})  # equal answers of one problem are scored once
        values = dict(zip(unique, continuation_logprobs(self.gen.model, [p for p, _ in unique],
                                                         [c for _, c in unique])))
        for s, key, p, c in jobs:
            s[key] = values[(p, c)]
        seconds = time.perf_counter() - t0
        return [seconds * k / max(1, len(jobs)) for k in counts]


def run_method(generator: Any, problems: Sequence[dict[str, Any]], method: MethodConfig,
               records_path: str | Path | None = None, seed: int = 0, batch_size: int = 32,
               donor: dict[str, dict[str, Any]] | None = None, progress: bool = True,
               comm: Dist | None = None) -> list[dict[str, Any]]:
    """Run `method` on `problems` (dataset rows); return one record per problem, in problem order.

    `generator` is a `Generator` (or anything with its `generate`, `model`, `tokenizer` and
    `model_id`); chat prompts render with its tokenizer's chat template. With `records_path`,
    records are appended as batches finish and a rerun reuses them (resume). `donor` maps problem id to a record of another sampling method with the same
    `sample_key`, seed and at least n samples: its samples are reused instead of generated. The
    generator's `model_id` is stored in each record, so a resume never mixes two models' records.
    With `comm` of several ranks (torchrun), each rank runs its `records.shard` of the problems and
    every rank returns all records.
    """
    template = chat_template_of(generator, method.prompt)
    ids, prompts, golds = problem_prompts(list(problems), method.prompt, template)
    rows = dict(zip(ids, problems))
    model_id, p_hash = generator.model_id, prompt_hash(method.prompt, template)
    done = resume_records(records_path, expected_fields(prompts, golds),
                          {"config_hash": method.hash(seed), "prompt_hash": p_hash, "model_id": model_id},
                          f"configuration of method {method.name!r}",
                          regrade=lambda r: {**r, "samples": [_graded(s, r["gold"]) for s in r["samples"]]},
                          ) if records_path else {}
    todo = shard(sorted((pid for pid in ids if pid not in done), key=lambda pid: len(prompts[pid])), comm)
    per_chunk = batch_size if method.aggregate == "refine" else max(1, batch_size // method.n)
    runner = _Runner(generator, method, seed)

    def work(chunk: list[str]) -> dict[str, dict[str, Any]]:
        if method.aggregate == "refine":
            new = _refine(runner, chunk, rows, prompts, golds)
        else:
            if donor is not None:
                new = {pid: {"samples": _donated(donor, pid, prompts[pid], method.n)} for pid in chunk}
            else:
                outs, shares = runner.generate([prompts[p] for p in chunk], chunk, method.sampling, method.n)
                new = {pid: {"samples": [_sample(c, golds[pid], s) for c, s in zip(comps, sh)]}
                       for pid, comps, sh in zip(chunk, outs, shares)}
            spent = runner.add_logprob_scores([(prompts[pid], new[pid]["samples"]) for pid in chunk])
            for pid, seconds in zip(chunk, spent):
                new[pid]["scoring_seconds"] = seconds
        return {pid: {"id": pid, "prompt": prompts[pid], "gold": golds[pid], "config_hash": method.hash(seed),
                      "prompt_hash": p_hash, "model_id": model_id, **new[pid]} for pid in chunk}

    return run_resumable(ids, done, chunked(todo, per_chunk, work), records_path, progress, method.name, comm=comm)


@dataclass(frozen=True)
class ComputeConfig:
    """final_eval's matched-compute comparison: besides its greedy answer, every model answers by
    self-consistency (majority vote over `max(budgets)` sampled answers, scored at each budget k), so
    models are compared at equal generated tokens per problem. budgets () turns it off."""
    budgets: tuple[int, ...] = (4, 16)
    temperature: float = 0.9  # the sampled answers' (max_new_tokens: the evaluation's)
    top_p: float = 0.9

    def __post_init__(self) -> None:
        if any(k < 2 for k in self.budgets) or list(self.budgets) != sorted(set(self.budgets)):
            raise ValueError(f"final_eval.compute.budgets must be increasing sample counts >= 2 (or [] for "
                             f"none), got {list(self.budgets)}")

    def method(self, prompt: PromptConfig, sampling: SamplingConfig) -> MethodConfig:
        """The self-consistency method: `prompt` (the model's), `sampling` with this temperature and top_p."""
        return MethodConfig(name="sc", prompt=prompt, n=self.budgets[-1], aggregate="majority",
                            budgets=self.budgets, sampling=dataclasses.replace(
                                sampling, temperature=self.temperature, top_p=self.top_p))


def compute_points(greedy: dict[str, Any], records: Sequence[dict[str, Any]] | None,
                   method: MethodConfig | None) -> list[dict[str, Any]]:
    """(label, accuracy, interval, tokens per problem) of one model at each budget: its greedy answer
    (evaluate's metrics `greedy`) and self-consistency at each of `method`'s budgets on `records`."""
    points = [{"label": "greedy", "accuracy": greedy["accuracy"], "ci_low": greedy["ci_low"],
               "ci_high": greedy["ci_high"], "tokens_per_problem": greedy["mean_generated_tokens"]}]
    for k in (method.budgets if method is not None else ()):
        m = budget_metrics(records, method, k)
        points.append({"label": f"SC@{k}", **{f: m[f] for f in ("accuracy", "ci_low", "ci_high",
                                                                   "tokens_per_problem")}})
    return points


def best_within(points: Sequence[dict[str, Any]], tokens: float) -> float | None:
    """The best accuracy among `points` that spend at most `tokens` generated tokens per problem
    (None when every point spends more)."""
    inside = [p["accuracy"] for p in points if p["tokens_per_problem"] <= tokens]
    return max(inside) if inside else None



def evaluate_at_budgets(path: str | Path, problems: Sequence[dict[str, Any]], cfg: EvalConfig, state: str | Path,
                        data_sha: str, compute: ComputeConfig = ComputeConfig(budgets=()),
                        comm: Dist | None = None) -> tuple[list[Record], dict[str, Any], list[dict[str, Any]]]:
    """(greedy records, their metrics, compute points) of the checkpoint `path` on `problems`, behind the
    prompt it was trained for (evaluate.model_eval_config): greedy, then by self-consistency at `compute`'s
    budgets (compute_points). final_eval's measure of each model.

    Journaled under `state` with the evaluate stage's key (model, data, settings): with the same state
    directory the baseline's records of the evaluate stage are reused, and a killed run resumes."""
    cfg = model_eval_config(path, cfg)
    generator = load_generator(path, cfg)
    records, metrics = evaluate(generator, problems, cfg, evaluation_journal(state, generator.model_id, data_sha, cfg),
                                progress=False, comm=comm)
    method = compute.method(cfg.prompt, cfg.sampling) if compute.budgets else None
    sampled = run_method(generator, problems, method, journal(state, {
        "model": generator.model_id, "data": data_sha, "method": method.hash(cfg.seed)}), cfg.seed, cfg.batch_size,
        progress=False, comm=comm) if method else None
    return records, metrics, compute_points(metrics, sampled, method)


def best_on(out_dir: str | Path, problems: Sequence[dict[str, Any]], eval_limit: int | None
            ) -> tuple[MethodConfig, list[dict[str, Any]]]:
    """(best setting, its records) of the inference_scaling outputs in `out_dir` (load_best), checked to
    hold exactly `problems` (evaluate.limit `eval_limit`) before anything is generated: paired comparisons
    need the very problems the models are measured on. Raises ValueError naming the settings to align."""
    method, records = load_best(out_dir)
    have, want = [r["id"] for r in records], [str(p["id"]) for p in problems]
    if have != want:
        detail = "other problems" if len(have) == len(want) else f"{len(have)} problems"
        raise ValueError(f"{out_dir} holds records of {detail}, while final_eval measures the models on the first "
                         f"{len(want)} test problems (evaluate.limit: {eval_limit}): set inference_scaling.limit and "
                         "evaluate.limit to the same value (null: the whole split; for a trial run of the whole "
                         "pipeline, set pipeline.limit instead) and rerun inference_scaling")
    return method, records

def _donated(donor: dict[str, dict[str, Any]], pid: str, prompt: str, n: int) -> list[dict[str, Any]]:
    """The first n samples of another method's record for problem `pid` (same prompt and sampling)."""
    record = donor.get(pid)
    if record is None or record["prompt"] != prompt or len(record["samples"]) < n:
        raise ValueError(f"the donor records hold no {n} samples of problem {pid!r} under this prompt; "
                         "share samples only between methods with the same sample_key")
    return copy.deepcopy(record["samples"][:n])


def _refine(runner: _Runner, chunk: list[str], rows: dict[str, dict], prompts: dict[str, str],
            golds: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Draft, then `refine_iters` rounds of critique and revision, batched over the chunk's problems."""
    m = runner.method
    outs, shares = runner.generate([prompts[p] for p in chunk], chunk, m.sampling)
    rec: dict[str, dict[str, Any]] = {pid: {"samples": [_sample(c, golds[pid], s)], "critiques": [],
                                            "current": [0], "scoring_seconds": 0.0}
                                      for pid, [c], [s] in zip(chunk, outs, shares)}

    def score(new: dict[str, dict[str, Any]]) -> None:  # one new answer per problem
        spent = runner.add_logprob_scores([(prompts[pid], [s]) for pid, s in new.items()])
        for (pid, s), seconds in zip(new.items(), spent):
            rec[pid]["scoring_seconds"] += seconds
            if m.scorer != "none":
                s["score"] = sample_score(s, m.scorer)

    score({pid: rec[pid]["samples"][0] for pid in chunk})
    crit_sampling = dataclasses.replace(m.sampling, max_new_tokens=m.critique_tokens)
    for it in range(1, m.refine_iters + 1):
        current = {pid: rec[pid]["samples"][rec[pid]["current"][-1]]["completion"] for pid in chunk}
        question = {p: rows[p]["problem"].strip() for p in chunk}
        crit_prompts = [_instruction(CRITIQUE_TEMPLATE.format(problem=question[p], draft=current[p]),
                                     m.prompt, runner.gen) for p in chunk]
        crits, crit_sh = runner.generate(crit_prompts, [f"{p}/critique/{it}" for p in chunk], crit_sampling)
        ref_prompts = [_instruction(REFINE_TEMPLATE.format(problem=question[p], draft=current[p],
                                                           critique=c.text.strip()), m.prompt, runner.gen)
                       for p, [c] in zip(chunk, crits)]
        revs, rev_sh = runner.generate(ref_prompts, [f"{p}/refine/{it}" for p in chunk], m.sampling)
        # A revision's generation log-probs are conditioned on the refine prompt, not the method's
        # prompt: dropped, and recomputed under the method's prompt when a scorer needs them.
        new = {pid: {**_sample(rv, golds[pid], rs), "avg_logprob": None, "tokens": rv.tokens}
               for pid, [rv], [rs] in zip(chunk, revs, rev_sh)}
        score(new)
        for pid, [c], [cs] in zip(chunk, crits, crit_sh):
            r = rec[pid]
            r["critiques"].append({"completion": c.text, "generated_tokens": len(c.tokens),
                                   "truncated": c.truncated, "seconds": cs})
            r["samples"].append(new[pid])
            old = r["samples"][r["current"][-1]]
            # the book's rule: a revision replaces the current answer unless the scorer rates it worse
            accept = not m.accept_if_better or new[pid]["score"] >= old["score"]
            r["current"].append(len(r["samples"]) - 1 if accept else r["current"][-1])
    return rec


def run_grid(generator: Any, problems: Sequence[dict[str, Any]], methods: Sequence[MethodConfig],
             journal_dir: str | Path, seed: int = 0, batch_size: int = 32,
             progress: bool = True, comm: Dist | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run every method, each journaled in journal_dir/<name>-<method hash>.jsonl (a changed method
    is a new journal, never a refused or mixed one); sampling methods with the same `sample_key`
    share the samples of the one with the largest n, which runs first."""
    records: dict[str, list[dict[str, Any]]] = {}
    donors: dict[str, str] = {}  # sample_key -> name of the method whose samples are shared
    order = sorted(methods, key=lambda m: -m.n)
    for m in order:
        donor_name = donors.get(m.sample_key) if m.aggregate != "refine" else None
        donor = {r["id"]: r for r in records[donor_name]} if donor_name else None
        path = Path(journal_dir) / f"{m.name}-{m.hash(seed)}.jsonl"
        records[m.name] = run_method(generator, problems, m, path, seed, batch_size, donor, progress, comm)
        if m.aggregate != "refine":
            donors.setdefault(m.sample_key, m.name)
    return {m.name: records[m.name] for m in methods}


# ---------------------------------------------------------------------------------------------
# Metrics, table, frontier plot, best setting
# ---------------------------------------------------------------------------------------------

def budget_records(records: Sequence[dict[str, Any]], method: MethodConfig, k: int) -> list[Record]:
    """One `Record` per problem for `method` at budget k: the chosen answer's completion and verdict,
    with the tokens and seconds the budget spent (so evaluate's metrics and the paired tests of
    reasoning.metrics apply unchanged)."""
    view = []
    for r in records:
        i = select(r, method, k)
        chosen = r["samples"][i] if i is not None else {"completion": "", "extracted": None, "correct": False,
                                                           "reason": "no-answer", "truncated": False,
                                                           "finish_reason": "stop"}
        tokens, seconds = budget_cost(r, method, k)
        view.append(Record(id=r["id"], prompt=r["prompt"], completion=chosen["completion"], gold=r["gold"],
                           extracted=chosen["extracted"], correct=chosen["correct"], reason=chosen["reason"],
                           generated_tokens=tokens, truncated=chosen["truncated"], seconds=seconds,
                           finish_reason=chosen.get("finish_reason", "length" if chosen["truncated"] else "stop"),
                           config_hash=r["config_hash"], prompt_hash=r["prompt_hash"], model_id=r["model_id"]))
    return view


def budget_metrics(records: Sequence[dict[str, Any]], method: MethodConfig, k: int) -> dict[str, Any]:
    """Accuracy (95% Wilson interval), tokens, time and pass@k of `method` at budget k."""
    view = budget_records(records, method, k)
    m = metrics_from_records(view)  # evaluate's accuracy, interval, tokens and time from the same shape
    pass_k = None if method.aggregate == "refine" else mean_pass_at_k(
        [[s["correct"] for s in r["samples"][:method.n]] for r in records], k)
    return {"method": method.name, "budget": k, "label": describe(method, k),
            "accuracy": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "n": m["n"],
            "pass_at_k": pass_k, "tokens_total": sum(v["generated_tokens"] for v in view),
            "tokens_per_problem": m["mean_generated_tokens"], "wall_time_s": m["wall_time_s"],
            "truncation_rate": m["truncation_rate"], "grader": m["grader"],
            "grader_version": m["grader_version"],
            "prompt_hash": m["prompt_hash"], "config_hash": m["config_hash"], "model_id": m["model_id"]}


def grid_metrics(methods: Sequence[MethodConfig], records: dict[str, list[dict[str, Any]]]
                 ) -> list[dict[str, Any]]:
    """One row per (method, budget), in the order of the methods and their budgets. Every row after
    the first is compared with the first on the same problems (paired: the accuracy difference
    with its 95% bootstrap interval and McNemar's exact p-value), which resolves far smaller
    differences than two overlapping Wilson intervals."""
    rows, views = [], []
    for m in methods:
        for k in m.budgets:
            rows.append(budget_metrics(records[m.name], m, k))
            views.append(budget_records(records[m.name], m, k))
    for row, view in zip(rows, views):
        paired = compare_records(views[0], view) if row is not rows[0] else {}
        names = {"diff": "diff", "diff_ci_low": "ci_low", "diff_ci_high": "ci_high", "p_value": "p_value"}
        row.update({key: paired.get(src) for key, src in names.items()})
    return rows


def describe(method: MethodConfig, k: int) -> str:
    """A row label in the book's style, e.g. 'Self-consistency (n=5) + "Top-p" + "CoT"'."""
    s = method.sampling
    decoding = ("Greedy" if s.greedy else '"Top-p"' if s.top_p < 1
                else f"Temperature {s.temperature:g}")
    cot = ' + "CoT"' if method.prompt.cot_suffix or method.prompt.think else ""
    if method.aggregate == "majority" and k > 1:
        return f"Self-consistency (n={k}) + {decoding}{cot}"
    if method.aggregate == "best_of_n" and k > 1:
        return f"Best-of-N (n={k}, {method.scorer}) + {decoding}{cot}"
    if method.aggregate == "refine" and k > 0:
        gate = f"accept if {method.scorer} no worse" if method.accept_if_better else "always accept"
        return f"Self-refinement ({k} it., {gate}) + {decoding}{cot}"
    return f"{decoding}{cot}"


def best_setting(rows: Sequence[dict[str, Any]], methods: Sequence[MethodConfig]) -> dict[str, Any]:
    """The most accurate (method, budget); fewer tokens per problem breaks ties. `config` runs that
    setting alone (`MethodConfig.at_budget`); `source_config` is the method whose records hold it."""
    by_name = {m.name: m for m in methods}
    best = max(rows, key=lambda r: (r["accuracy"], -r["tokens_per_problem"]))
    method = by_name[best["method"]]
    return {**{k: best[k] for k in TABLE_FIELDS},
            "config": dataclasses.asdict(method.at_budget(best["budget"])),
            "source_config": dataclasses.asdict(method), "records": f"records/{method.name}.jsonl"}


def load_best(out_dir: str | Path) -> tuple[MethodConfig, list[dict[str, Any]]]:
    """(config to run the best setting alone, its evaluate-shaped records) from an inference_scaling
    output directory, e.g. for final evaluation's paired comparisons."""
    path = Path(out_dir) / "best.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the inference_scaling stage first")
    best = read_json(path)
    source = from_dict(MethodConfig, best["source_config"], f"{path}:source_config")
    records = budget_records(read_jsonl(Path(out_dir) / best["records"]), source, best["budget"])
    return from_dict(MethodConfig, best["config"], f"{path}:config"), records


def write_outputs(out_dir: str | Path, methods: Sequence[MethodConfig], records: dict[str, list[dict[str, Any]]],
                  model: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """records/<method>.jsonl, table.md, table.csv, frontier.png, metrics.json and best.json under
    out_dir; returns the metrics."""
    out = Path(out_dir)
    for m in methods:
        write_jsonl(out / "records" / f"{m.name}.jsonl", records[m.name])
    rows = grid_metrics(methods, records)
    atomic_write_text(out / "table.md", scaling_table(rows, model))
    write_csv(out / "table.csv", rows, TABLE_FIELDS)
    plot_frontier(rows, out / "frontier.png",
                  f"{model}: accuracy vs. generated tokens ({rows[0]['n']} problems)")
    best = best_setting(rows, methods)
    write_json(out / "best.json", best)
    keep = ("accuracy", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p_value", "pass_at_k",
            "tokens_total", "tokens_per_problem", "wall_time_s", "n")
    # "<method>/<budget>": MLflow metric names allow letters, digits, "_-. /" only
    metrics = {f"{r['method']}/{r['budget']}": {k: r[k] for k in keep} for r in rows}
    metrics["best"] = {k: best[k] for k in ("method", "budget", "accuracy", "ci_low", "ci_high")}
    metrics.update(extra or {})  # the stage's own counts (e.g. skipped dataset rows)
    write_json(out / "metrics.json", metrics)
    return metrics

