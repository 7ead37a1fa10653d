"""Distillation (the book's chapter 8): verified teacher traces, then SFT examples for the student.

Design choices:
- A teacher is anything with `sample(problems, n, seeds)`: the engine (any checkpoint we load,
  prompted by a `PromptConfig`), an OpenAI-compatible endpoint (`reasoning.teacher`), or a file
  of traces generated elsewhere (the book's published ones), matched to our problems by
  normalised text. All hand back raw samples (text, optional separate reasoning, finish
  reason); `split_trace` turns each into (thinking, content) the same way, and imported traces
  are verified and contamination-checked like fresh ones.
- Rejection sampling: a sample becomes a trace only if it finished, its thinking is closed and
  non-empty, and the grader verifies the answer in its *content* (an answer left inside the
  thinking would teach the student the wrong format). Verified duplicates and traces beyond
  `keep_per_problem` are dropped too; every reject is kept, with its reason, for audit.
- Training problems that overlap the test split (same normalised text, or a shared word
  n-gram) are dropped before the teacher sees them, and counted.
- The raw samples go to a journal, one line per problem, named by a hash of everything that
  determines them (teacher id and revision, prompt, sampling, n, seed). A killed run continues
  from the problems already journaled; a rerun with the same teacher regenerates nothing (filter
  settings can change freely); a different teacher writes a different journal, never a mix.
  Each problem's seed comes from its id, so engine samples do not depend on batching or resumes.
- SFT examples use the chat template. The prompt is exactly what `prompts.render` sends at
  evaluation (`student_prompt`), tokenised on its own as generation will see it, and the loss
  covers only the response after it, up to and including `<|im_end|>`. With `think`, the
  thinking goes inside `<think>...</think>`; without, it is plain text after Qwen3's empty
  think block (its non-thinking mode), so each variant is evaluated with its own prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from .config import stable_hash
from .data import normalize_problem
from .evaluate import problem_seed
from .generate import Generator, SamplingConfig
from .grading import GRADER_NAME, GRADER_VERSION, grade
from .io import JsonlAppender, iter_jsonl, read_json, read_jsonl, sha256_file
from .prompts import COT_SUFFIX, PromptConfig, render
from .teacher import ChatClient, EndpointConfig
from .tokenizer import THINK_CLOSE, THINK_OPEN, Tokenizer, render_chat
from .train import Example, TrainConfig

REJECT_REASONS = ("truncated", "unclosed_think", "no_answer", "wrong_answer", "no_thinking", "duplicate",
                  "over_quota")


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TeacherConfig:
    kind: str = "engine"  # "engine" (a checkpoint we load), "endpoint" (OpenAI-compatible server) or "file"
    # engine: checkpoint dir or hub id; endpoint: the served model name; file: a JSON/JSONL path or
    # hf:<owner>/<dataset>/<file> with rows {problem, message_thinking, message_content}
    model: str = "data/models/base"
    revision: str = ""  # engine: recorded (default: hub commit or hash of the weights); endpoint: recorded;
    # file: the hub revision to download (the recorded revision is the file's sha256)
    prompt: PromptConfig = PromptConfig(cot_suffix=COT_SUFFIX)
    endpoint: EndpointConfig = EndpointConfig()
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    batch_size: int = 64  # engine: sequences (problems x n) decoded together

    def __post_init__(self) -> None:
        if self.kind not in ("engine", "endpoint", "file"):
            raise ValueError(f"teacher kind {self.kind!r} is unknown; use 'engine', 'endpoint' or 'file'")
        if self.kind == "endpoint" and self.prompt.template != "chat":
            raise ValueError("an endpoint applies its own chat template: set teacher.prompt.template: chat")


@dataclass(frozen=True)
class TracesConfig:
    teacher: TeacherConfig = TeacherConfig()
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=256, temperature=0.7)
    n: int = 4  # samples per problem
    seed: int = 0
    limit: int | None = None  # only the first `limit` (clean) training problems
    keep_per_problem: int = 1  # verified traces kept per problem; 0 keeps every distinct one
    require_thinking: bool = True  # reject traces with no reasoning before the answer
    contamination_ngram: int = 13  # word n-gram shared with a test problem drops a problem; 0: exact only

    def __post_init__(self) -> None:
        if self.n < 1 or self.keep_per_problem < 0 or self.contamination_ngram < 0:
            raise ValueError("teacher_traces needs n >= 1, keep_per_problem >= 0 and contamination_ngram >= 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"teacher_traces.limit must be a number of problems >= 1 or null, not {self.limit}")
        if self.n > 1 and self.sampling.temperature == 0:
            raise ValueError("n > 1 samples at temperature 0 are all identical; raise sampling.temperature")
        if self.teacher.kind == "endpoint" and self.sampling.top_k:
            raise ValueError("top_k is not part of the OpenAI chat API; set sampling.top_k: 0 for an endpoint "
                             "(or pass it through teacher.endpoint.extra_body if the server supports it)")


@dataclass(frozen=True)
class SFTConfig:
    think: bool = True  # thinking inside <think>...</think>; False: plain text in non-thinking mode
    system: str = ""  # optional system message in the chat template
    val_problems: int = 32  # problems held out (all their traces) for the validation loss
    train: TrainConfig = TrainConfig(lr=1e-3, warmup_steps=10, epochs=2, batch_size=32, max_len=512)

    def __post_init__(self) -> None:
        if self.val_problems < 0:
            raise ValueError("distill_sft.val_problems must be >= 0")


def student_prompt(cfg: SFTConfig) -> PromptConfig:
    """The prompt the SFT student was trained behind: evaluate it with exactly this."""
    return PromptConfig(template="chat", think=cfg.think, system=cfg.system)


# ---------------------------------------------------------------------------------------------
# Parsing and filtering


def split_trace(text: str, reasoning: str | None = None) -> tuple[str, str, str | None]:
    """(thinking, content, problem) of one teacher sample; problem is None or "unclosed_think".

    A separate `reasoning` field (endpoints) is the thinking. Otherwise `<think>...</think>`
    in the text splits it (the opening tag may sit in the prompt, as in DeepSeek-R1's template).
    A base model's chain of thought has no tags: its thinking is everything before the first
    line holding a \\boxed{} answer, and the content is that line; text after it (a base model
    running on into a next "Question:") is dropped.
    """
    if reasoning is not None:  # tags some providers leave in either field are dropped
        return (reasoning.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip(),
                text.rsplit(THINK_CLOSE, 1)[-1].strip(), None)
    if THINK_CLOSE in text:
        reasoning, text = text.split(THINK_CLOSE, 1)
        return reasoning.strip().removeprefix(THINK_OPEN).strip(), text.strip(), None
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].strip(), "", "unclosed_think"
    lines = text.strip().split("\n")
    for i, line in enumerate(lines):
        if "\\boxed" in line:
            return "\n".join(lines[:i]).strip(), line.strip(), None
    return "", text.strip(), None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKC", text).lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of `text` (lower case, letters and digits only, so LaTeX markup is ignored)."""
    words = _words(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def remove_contaminated(train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]],
                        ngram: int = 13) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(train rows clean of the test split, {"exact": dropped, "ngram": dropped}).

    Exact: the same normalised problem (`data.normalize_problem`). N-gram: any run of `ngram`
    words shared with a test problem (0 turns it off); problems shorter than that are only
    checked exactly.
    """
    exact = {normalize_problem(r["problem"]) for r in test}
    grams: set[tuple[str, ...]] = set().union(*(ngrams(r["problem"], ngram) for r in test)) if ngram else set()
    clean, dropped = [], {"exact": 0, "ngram": 0}
    for r in train:
        if normalize_problem(r["problem"]) in exact:
            dropped["exact"] += 1
        elif ngram and not grams.isdisjoint(ngrams(r["problem"], ngram)):
            dropped["ngram"] += 1
        else:
            clean.append(r)
    return clean, dropped


def judge(problem: dict[str, Any], samples: Sequence[dict[str, Any]], cfg: TracesConfig,
          provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """One trace row per raw sample of `problem`, each `verified` or with its `reject_reason`."""
    rows, seen, kept = [], set(), 0
    seed = problem_seed(str(problem["id"]), cfg.seed)
    for k, s in enumerate(samples):
        thinking, content, parse_problem = split_trace(s["text"], s.get("reasoning"))
        verdict = grade(content, str(problem["answer"])) if parse_problem is None else None
        key = " ".join(thinking.split()) + "\x00" + " ".join(content.split())
        if s["finish_reason"] == "length":
            reason = "truncated"
        elif parse_problem:
            reason = parse_problem
        elif not verdict:
            reason = "no_answer" if verdict.extracted is None else "wrong_answer"
        elif cfg.require_thinking and not thinking:
            reason = "no_thinking"
        elif key in seen:
            reason = "duplicate"
        elif cfg.keep_per_problem and kept >= cfg.keep_per_problem:
            reason = "over_quota"
        else:
            reason = None
            kept += 1
        seen.add(key)
        rows.append({
            "id": f"{problem['id']}/{k}", "problem_id": problem["id"], "problem": problem["problem"],
            "gtruth_answer": str(problem["answer"]), "level": problem.get("level"),
            "subject": problem.get("subject"),
            "message_thinking": thinking, "message_content": content,
            "verified": reason is None, "reject_reason": reason,
            "answer_correct": bool(verdict), "extracted": verdict.extracted if verdict else None,
            "grade_reason": verdict.reason if verdict else None,
            "finish_reason": s["finish_reason"], "tokens": s.get("tokens"), "served_model": s.get("model"),
            "sampling": {**dataclasses.asdict(cfg.sampling), "n": cfg.n, "seed": seed, "sample": k},
            **provenance,
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Teachers


class Teacher(Protocol):
    info: dict[str, str]  # kind, id, revision

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        """Yield (problem index, n raw samples, seconds) as problems finish, in any order."""
        ...


class EngineTeacher:
    """A model run by our engine; problems go through `render(problem, prompt)`."""

    def __init__(self, generator: Generator, prompt: PromptConfig, sampling: SamplingConfig,
                 info: dict[str, str]):
        self.generator, self.prompt, self.sampling, self.info = generator, prompt, sampling, info

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        per_call = max(1, self.generator.batch_size // n)  # one decode batch per call, journaled after it
        for start in range(0, len(problems), per_call):
            chunk = range(start, min(start + per_call, len(problems)))
            t0 = time.perf_counter()
            outs = self.generator.generate([render(problems[i], self.prompt) for i in chunk], self.sampling,
                                           n=n, seeds=[seeds[i] for i in chunk])
            share = (time.perf_counter() - t0) / len(chunk)
            for i, comps in zip(chunk, outs):
                yield i, [{"text": c.text, "reasoning": None, "finish_reason": c.finish_reason,
                           "tokens": len(c.tokens)} for c in comps], share


class EndpointTeacher:
    """A model behind an OpenAI-compatible endpoint; the server applies its chat template."""

    def __init__(self, client: ChatClient, prompt: PromptConfig, sampling: SamplingConfig, info: dict[str, str]):
        self.client, self.prompt, self.sampling, self.info = client, prompt, sampling, info

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        system = [{"role": "system", "content": self.prompt.system}] if self.prompt.system else []
        s = self.sampling
        requests = [{"messages": system + [{"role": "user", "content": p.strip() + self.prompt.cot_suffix}],
                     "n": n, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens,
                     "seed": seed % 2**31, "stop": s.stop_strings}  # 31 bits: some servers take int32 seeds
                    for p, seed in zip(problems, seeds)]
        for i, choices, seconds in self.client.complete_many(requests):
            yield i, [{"text": c.content, "reasoning": c.reasoning, "finish_reason": c.finish_reason,
                       "tokens": None, "model": c.model} for c in choices], seconds


class FileTeacher:
    """Traces generated elsewhere (rows {problem, message_thinking, message_content}), looked up by problem."""

    def __init__(self, rows: Sequence[dict[str, Any]], info: dict[str, str]):
        self.info = info
        self.by_problem: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if not isinstance(r, dict) or not isinstance(r.get("problem"), str) or "message_content" not in r:
                raise ValueError(f"{info['id']}: a row lacks 'problem' or 'message_content': {str(r)[:200]}")
            self.by_problem.setdefault(normalize_problem(r["problem"]), []).append(
                {"text": str(r["message_content"]), "reasoning": r.get("message_thinking"),
                 "finish_reason": "stop", "tokens": None})

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        for i, p in enumerate(problems):  # a problem the file lacks gets no samples
            yield i, self.by_problem.get(normalize_problem(p), [])[:n], 0.0


def _trace_file(source: str, revision: str) -> Path:
    path = Path(source)
    if path.exists():
        return path
    parts = source.removeprefix("hf:").split("/", 2)
    if not source.startswith("hf:") or len(parts) < 3:
        raise FileNotFoundError(f"trace file {source!r} not found; give a local path or "
                                "hf:<owner>/<dataset>/<file>")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download("/".join(parts[:2]), parts[2], repo_type="dataset", revision=revision or None))


def checkpoint_revision(ckpt: Path) -> str:
    """A hub snapshot's commit, else a hash of the weight files (a retrained model is a new teacher)."""
    parts = ckpt.resolve().parts
    if len(parts) >= 2 and parts[-2] == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[-1]):
        return parts[-1]
    files = sorted(ckpt.glob("*.safetensors"))
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()[:16]


def load_teacher(cfg: TeacherConfig, sampling: SamplingConfig) -> Teacher:
    """The engine teacher (model loaded), endpoint teacher (key read) or file teacher that `cfg` names."""
    if cfg.kind == "endpoint":
        info = {"kind": "endpoint", "id": cfg.model, "revision": cfg.revision, "base_url": cfg.endpoint.base_url}
        return EndpointTeacher(ChatClient(cfg.endpoint, cfg.model), cfg.prompt, sampling, info)
    if cfg.kind == "file":
        path = _trace_file(cfg.model, cfg.revision)
        rows = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
        info = {"kind": "file", "id": cfg.model, "revision": sha256_file(path)[:16]}
        return FileTeacher(rows, info)
    from .config import resolve_device
    from .weights import load_model, resolve

    ckpt = resolve(cfg.model)
    device, dtype = resolve_device(cfg.device, cfg.dtype)
    generator = Generator(load_model(ckpt, dtype, device), Tokenizer(ckpt), compile=cfg.compile,
                          batch_size=cfg.batch_size)
    info = {"kind": "engine", "id": cfg.model, "revision": cfg.revision or checkpoint_revision(ckpt)}
    return EngineTeacher(generator, cfg.prompt, sampling, info)


# ---------------------------------------------------------------------------------------------
# The stage's work


def sample_hash(teacher: Teacher, cfg: TracesConfig) -> str:
    """Hash of what determines the raw samples; names the journal. Filter settings are left out."""
    return stable_hash({"teacher": {k: teacher.info[k] for k in ("kind", "id", "revision")},
                        "prompt": cfg.teacher.prompt.hash, "sampling": dataclasses.asdict(cfg.sampling),
                        "n": cfg.n, "seed": cfg.seed})


def generate_traces(teacher: Teacher, train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]],
                    cfg: TracesConfig, journal_dir: str | Path,
                    progress: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Sample the teacher on the clean training problems and verify; return (kept, rejected, metrics).

    Raw samples are journaled in `journal_dir/<sample_hash>.jsonl`; problems already there are
    not sampled again, so a killed run resumes and a finished one is free to rerun.
    """
    problems, contaminated = remove_contaminated(train, test, cfg.contamination_ngram)
    problems = problems[:cfg.limit]
    if not problems:
        raise ValueError("no training problems left after the contamination check; check the splits")
    tag = sample_hash(teacher, cfg)
    journal = Path(journal_dir) / f"{tag}.jsonl"
    digest = {p["id"]: hashlib.sha256(p["problem"].encode()).hexdigest()[:16] for p in problems}
    # Later lines win; a problem whose text changed since it was journaled is sampled again.
    done = {e["problem_id"]: e for e in iter_jsonl(journal) if digest.get(e["problem_id"]) == e["problem_sha"]}
    todo = [p for p in problems if p["id"] not in done]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc="teacher traces", unit="problem",
               disable=not progress, file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        with JsonlAppender(journal) as out:
            for i, samples, seconds in teacher.sample([p["problem"] for p in todo], cfg.n,
                                                      [problem_seed(str(p["id"]), cfg.seed) for p in todo]):
                pid = todo[i]["id"]
                done[pid] = {"problem_id": pid, "problem_sha": digest[pid], "seconds": seconds,
                             "samples": samples}
                out.append(done[pid])
                bar.update()
    finally:
        bar.close()

    provenance = {"teacher": teacher.info["id"], "teacher_kind": teacher.info["kind"],
                  "teacher_revision": teacher.info["revision"], "prompt_hash": cfg.teacher.prompt.hash,
                  "sample_hash": tag, "grader": f"{GRADER_NAME} {GRADER_VERSION}"}
    rows = [r for p in problems for r in judge(p, done[p["id"]]["samples"], cfg, provenance)]
    if not rows:
        raise ValueError(f"the teacher {teacher.info['id']} gave no samples for any of {len(problems)} problems "
                         "(a trace file whose problems are not in the training split?)")
    kept = [r for r in rows if r["verified"]]
    rejected = [r for r in rows if not r["verified"]]
    reasons = Counter(r["reject_reason"] for r in rejected)
    solved = len({r["problem_id"] for r in kept})
    metrics = {
        "problems": len(train), "contaminated": contaminated, "problems_sampled": len(problems),
        "samples": len(rows), "kept": len(kept), "rejected": {k: reasons.get(k, 0) for k in REJECT_REASONS},
        "teacher_sample_accuracy": sum(r["answer_correct"] for r in rows) / len(rows),
        "problems_with_trace": solved, "coverage": solved / len(problems),
        "kept_per_problem": len(kept) / len(problems),
        "wall_time_s": sum(done[p["id"]]["seconds"] for p in problems),
        "journal": str(journal), "teacher_info": teacher.info, "prompt": dataclasses.asdict(cfg.teacher.prompt),
        "sampling": dataclasses.asdict(cfg.sampling), "n": cfg.n, **provenance,
    }
    return kept, rejected, metrics


# ---------------------------------------------------------------------------------------------
# SFT examples


def sft_example(problem: str, thinking: str, content: str, tok: Tokenizer, cfg: SFTConfig) -> Example:
    """(tokens, loss_mask) of one trace in the chat template; the mask covers the response only."""
    prompt = render(problem, student_prompt(cfg))
    if cfg.think:
        answer = {"role": "assistant", "content": content, "reasoning_content": thinking}
    else:  # Qwen3's non-thinking mode: an empty think block (part of the prompt), then the text
        answer = {"role": "assistant", "content": f"{thinking}\n\n{content}" if thinking else content,
                  "reasoning_content": ""}
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    text = render_chat([*system, {"role": "user", "content": problem.strip()}, answer],
                       add_generation_prompt=False)
    if not text.startswith(prompt):
        raise AssertionError("the chat template's conversation does not start with the evaluation prompt")
    # The newline after <|im_end|> is never generated (generation stops at <|im_end|>): not a target.
    response = text[len(prompt):].removesuffix("\n")
    p, r = tok.encode(prompt), tok.encode(response)
    return p + r, [0] * len(p) + [1] * len(r)


def build_sft_examples(traces: Sequence[dict[str, Any]], tok: Tokenizer,
                       cfg: SFTConfig) -> tuple[list[Example], list[Example], dict[str, int]]:
    """(train examples, validation examples, counts) from verified trace rows.

    Validation takes every trace of `cfg.val_problems` problems picked by a hash of their id, so
    no problem is on both sides. Unverified rows are skipped and counted.
    """
    verified = [t for t in traces if t.get("verified")]
    ids = sorted({t["problem_id"] for t in verified},
                 key=lambda pid: hashlib.sha256(f"{cfg.train.seed}:{pid}".encode()).digest())
    if len(ids) <= cfg.val_problems:
        raise ValueError(f"{len(ids)} problems with verified traces cannot spare {cfg.val_problems} for "
                         "validation; generate more traces or lower distill_sft.val_problems")
    val_ids = set(ids[:cfg.val_problems])
    train_ex, val_ex = [], []
    for t in verified:
        ex = sft_example(t["problem"], t["message_thinking"], t["message_content"], tok, cfg)
        (val_ex if t["problem_id"] in val_ids else train_ex).append(ex)
    counts = {"traces": len(traces), "unverified_skipped": len(traces) - len(verified),
              "train_examples": len(train_ex), "val_examples": len(val_ex),
              "train_problems": len(ids) - len(val_ids), "val_problems": len(val_ids)}
    return train_ex, val_ex, counts
