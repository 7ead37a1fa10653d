"""Distillation (the book's chapter 8): verified teacher traces, then SFT examples for the student.

Design choices:
- Teachers (`reasoning.teacher`: the engine, an OpenAI-compatible endpoint, a file of traces
  generated elsewhere) all hand back raw samples (text, optional separate reasoning, finish
  reason); `split_trace` turns each into (thinking, content) the same way, and imported traces
  are verified and contamination-checked like fresh ones.
- Rejection sampling: a sample becomes a trace only if it finished, its thinking is closed and
  non-empty, and the grader verifies the answer in its *content* (an answer left inside the
  thinking would teach the student the wrong format). Verified duplicates and traces beyond
  `keep_per_problem` are dropped too; every reject is kept, with its reason, for audit.
- Training problems that overlap the test split (same normalised text, or a shared word
  n-gram) are dropped before the teacher sees them, and counted.
- The raw samples go to a journal (the resumable record log of `reasoning.records`), one line
  per problem, named by a hash of everything that determines them (teacher id and revision,
  prompt, sampling, n, seed). A killed run continues from the problems already journaled; a
  rerun with the same teacher regenerates nothing (filter settings can change freely); a
  different teacher writes a different journal, never a mix.
  Each problem's seed comes from its id, so engine samples do not depend on batching or resumes.
- SFT examples use the student's own chat template (the checkpoint's, else our built-in one). The
  prompt is exactly what `prompts.render` sends at evaluation (`student_prompt`), tokenised on its
  own as generation will see it, and the loss covers only the response after it, up to and
  including `<|im_end|>`. With `think`, the thinking goes inside `<think>...</think>`; without,
  it is plain text after Qwen3's empty think block (its non-thinking mode), so each variant is
  evaluated with its own prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import stable_hash
from .data import normalize_problem, rows_with
from .generate import SamplingConfig
from .grading import GRADER_NAME, GRADER_VERSION, grade
from .prompts import PromptConfig, prompt_hash, render
from .records import resume_records, run_resumable, shard
from .seeds import problem_seed
from .teacher import Teacher, TeacherConfig
from .tokenizer import THINK_CLOSE, THINK_OPEN, Tokenizer
from .train import Example, TrainConfig

if TYPE_CHECKING:
    from .checkpoint import Dist

REJECT_REASONS = ("context", "truncated", "unclosed_think", "no_answer", "wrong_answer", "no_thinking", "duplicate",
                  "over_quota")


# ---------------------------------------------------------------------------------------------
# Configuration


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
        if self.n > 1 and self.sampling.greedy:
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
        if s["finish_reason"] == "context":  # the prompt did not fit the teacher's context
            reason = "context"
        elif s["finish_reason"] == "length":
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
# The stage's work


def sample_hash(teacher: Teacher, cfg: TracesConfig) -> str:
    """Hash of what determines the raw samples; names the journal. Filter settings are left out."""
    return stable_hash({"teacher": {k: teacher.info[k] for k in ("kind", "id", "revision")},
                        "prompt": prompt_hash(cfg.teacher.prompt, teacher.chat_template),
                        "sampling": dataclasses.asdict(cfg.sampling),
                        "n": cfg.n, "seed": cfg.seed})


def generate_traces(teacher: Teacher, train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]],
                    cfg: TracesConfig, journal_dir: str | Path,
                    progress: bool = True, comm: Dist | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Sample the teacher on the clean training problems and verify; return (kept, rejected, metrics).

    Raw samples are journaled in `journal_dir/<sample_hash>.jsonl` through the resumable record log
    (`reasoning.records`); problems already there are not sampled again, so a killed run resumes
    and a finished one is free to rerun. A problem whose text changed since is sampled again.
    With `comm` of several ranks (torchrun), each rank samples its `records.shard` of the problems
    and every rank returns the same result.
    """
    problems, contaminated = remove_contaminated(train, test, cfg.contamination_ngram)
    problems = problems[:cfg.limit]
    if not problems:
        raise ValueError("no training problems left after the contamination check; check the splits")
    tag = sample_hash(teacher, cfg)
    journal = Path(journal_dir) / f"{tag}.jsonl"
    ids = [str(p["id"]) for p in problems]
    digest = {pid: hashlib.sha256(p["problem"].encode()).hexdigest()[:16] for pid, p in zip(ids, problems)}
    done = resume_records(journal, {pid: {"problem_sha": digest[pid]} for pid in ids}, {}, "teacher journal",
                          on_changed="redo")
    by_id = dict(zip(ids, problems))
    todo = [(pid, by_id[pid]) for pid in shard([pid for pid in ids if pid not in done], comm)]
    samples = teacher.sample([p["problem"] for _, p in todo], cfg.n,
                             [problem_seed(pid, cfg.seed) for pid, _ in todo])
    entries = ((todo[i][0], {"id": todo[i][0], "problem_sha": digest[todo[i][0]], "seconds": seconds,
                             "samples": raw}) for i, raw, seconds in samples)
    journaled = dict(zip(ids, run_resumable(ids, done, entries, journal, progress, "teacher traces", comm=comm)))

    provenance = {"teacher": teacher.info["id"], "teacher_kind": teacher.info["kind"],
                  "teacher_revision": teacher.info["revision"],
                  "prompt_hash": prompt_hash(cfg.teacher.prompt, teacher.chat_template),
                  "sample_hash": tag, "grader": GRADER_NAME, "grader_version": GRADER_VERSION}
    rows = [r for pid, p in zip(ids, problems) for r in judge(p, journaled[pid]["samples"], cfg, provenance)]
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
        "wall_time_s": sum(journaled[pid]["seconds"] for pid in ids),
        "journal": str(journal), "teacher_info": teacher.info, "prompt": dataclasses.asdict(cfg.teacher.prompt),
        "sampling": dataclasses.asdict(cfg.sampling), "n": cfg.n, **provenance,
    }
    return kept, rejected, metrics


# ---------------------------------------------------------------------------------------------
# SFT examples


def sft_example(problem: str, thinking: str, content: str, tok: Tokenizer, cfg: SFTConfig) -> Example:
    """(tokens, loss_mask) of one trace in the student's chat template (`tok.chat_template`); the mask
    covers the response only. ValueError when the template's conversation does not begin with its
    own generation prompt (no response to put the loss on)."""
    prompt_cfg = student_prompt(cfg)
    prompt = render(problem, prompt_cfg, tok.chat_template)
    if cfg.think:
        answer = {"role": "assistant", "content": content, "reasoning_content": thinking}
    else:  # Qwen3's non-thinking mode: an empty think block (part of the prompt), then the text
        answer = {"role": "assistant", "content": f"{thinking}\n\n{content}" if thinking else content,
                  "reasoning_content": ""}
    text = tok.apply_chat_template([*prompt_cfg.messages(problem), answer], add_generation_prompt=False)
    if not text.startswith(prompt):
        raise ValueError(f"{tok.chat_template.origin}: a conversation does not begin with the prompt the model is "
                         f"evaluated behind ({prompt[-60:]!r}), so the response cannot be told apart; train "
                         "with a template whose generation prompt opens the assistant turn it renders")
    # The newline after <|im_end|> is never generated (generation stops at <|im_end|>): not a target.
    response = text[len(prompt):].removesuffix("\n")
    p, r = tok.encode(prompt), tok.encode(response)
    return p + r, [0] * len(p) + [1] * len(r)


TRACE_FIELDS = ("problem_id", "problem", "message_content")  # non-empty; message_thinking present


def build_sft_examples(traces: Sequence[dict[str, Any]], tok: Tokenizer, cfg: SFTConfig,
                       source: str = "traces") -> tuple[list[Example], list[Example], dict[str, int]]:
    """(train examples, validation examples, counts) from verified trace rows (row i of `traces` is
    line i of the file `source`, as write_jsonl writes it).

    Validation takes every trace of `cfg.val_problems` problems picked by a hash of their id, so
    no problem is on both sides. Unverified rows are skipped and counted; so are rows lacking a
    field (`TRACE_FIELDS`, or no message_thinking at all), each named by file and line in a warning.
    """
    skipped: dict[str, int] = {}
    rows = [(i, t) for i, t in enumerate(traces, 1) if not isinstance(t, dict) or t.get("verified")]
    verified = rows_with(rows, TRACE_FIELDS, source, skipped, present=("message_thinking",))
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
    counts = {"traces": len(traces), "unverified_skipped": len(traces) - len(rows),
              "malformed_skipped": skipped.get("malformed_rows", 0),
              "train_examples": len(train_ex), "val_examples": len(val_ex),
              "train_problems": len(ids) - len(val_ids), "val_problems": len(val_ids)}
    return train_ex, val_ex, counts
