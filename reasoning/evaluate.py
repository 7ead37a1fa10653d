"""Evaluate a model on a problem set: one function for every evaluation in the project.

Design choices:
- `evaluate` takes a `Generator` (or anything with its `generate` method) and plain problem
  dicts, so the evaluate stage, final evaluation and GRPO's periodic evaluation share it; file
  handling is limited to the optional records path.
- Records (`reasoning.records`) are appended durably batch by batch through the one resumable
  record log: a rerun keeps the records already written and generates only the rest. Records
  carry a hash of what determines a completion (prompt template, sampling, seed) and the
  generator's model id; a file from another configuration or model is refused instead of
  being silently mixed.
- Each problem's sampling seed comes from its id and `cfg.seed`, not from its position, so
  samples do not change with resumes, limits or batch composition.
- Verdicts are always recomputed from the stored completion (`grade_record`): kept records are
  regraded on resume and `regrade` does the same without a model, so every verdict in a file
  comes from the grader version its metrics name.
- Wall time is the sum of each record's share of its batch's generation time, so metrics are
  a function of the records alone: a resumed run counts the time of all its sessions and
  `regrade` reproduces the metrics exactly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import from_dict, stable_hash
from .files import read_json, read_jsonl, write_jsonl
from .generate import Generator, SamplingConfig, check_matmul_dtype
from .grading import GRADER_NAME, GRADER_VERSION
from .metrics import accuracy_summary
from .prompts import PromptConfig, chat_template_of, prompt_hash
from .records import (Record, chunked, expected_fields, grade_record, journal, new_record, problem_prompts,
                      resume_records, run_resumable, shard)
from .seeds import problem_seed

if TYPE_CHECKING:
    from .checkpoint import Dist


@dataclass(frozen=True)
class EvalConfig:
    limit: int | None = None  # evaluate only the first `limit` problems (a quick subset)
    batch_size: int = 32
    prompt: PromptConfig = PromptConfig()
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=256)  # greedy by default
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    matmul_dtype: str = "model"  # model | auto | bfloat16 | int8 ...: the weight matmuls' precision (generate.Generator)
    seed: int = 0

    def __post_init__(self) -> None:
        check_matmul_dtype(self.matmul_dtype, "evaluate.matmul_dtype")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"evaluate.limit must be a positive number of problems or null (all), "
                             f"got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"evaluate.batch_size must be >= 1, got {self.batch_size}")

    @property
    def hash(self) -> str:
        """Hash of the settings that determine a completion; limit, batching and device are left out."""
        return stable_hash({"prompt": self.prompt.hash, "sampling": dataclasses.asdict(self.sampling),
                            "seed": self.seed})


def evaluate(generator: Generator, problems: Sequence[dict[str, Any]], cfg: EvalConfig,
             records_path: str | Path | None = None,
             progress: bool = True, comm: Dist | None = None) -> tuple[list[Record], dict[str, Any]]:
    """Generate, grade and score `problems` (dataset rows); return (records in problem order, metrics).

    Chat prompts render with the generator's tokenizer's chat template (`prompts.chat_template_of`).

    With `records_path`, records are appended there as batches finish, and records already in the
    file are reused (resume); the file ends holding exactly the returned records. The generator's
    `model_id` (the weights' content hash) is stored in each record, so a resume never mixes two
    models' records.

    With `comm` of several ranks (torchrun), each rank generates its `records.shard` of the problems
    and every rank returns all records and the same metrics (records.run_resumable).
    """
    template = chat_template_of(generator, cfg.prompt)
    ids, prompts, golds = problem_prompts(list(problems)[:cfg.limit], cfg.prompt, template)
    model_id, p_hash = generator.model_id, prompt_hash(cfg.prompt, template)
    done = resume_records(records_path, expected_fields(prompts, golds),
                          {"config_hash": cfg.hash, "prompt_hash": p_hash, "model_id": model_id},
                          "evaluation config", regrade=grade_record) if records_path else {}

    # Similar prompt lengths share a batch (less padding); the order is fixed by the data alone.
    todo = shard(sorted((pid for pid in ids if pid not in done), key=lambda pid: len(prompts[pid])), comm)

    def work(batch: list[str]) -> dict[str, dict[str, Any]]:
        t0 = time.perf_counter()
        outs = generator.generate([prompts[pid] for pid in batch], cfg.sampling,
                                  seeds=[problem_seed(pid, cfg.seed) for pid in batch])
        share = (time.perf_counter() - t0) / len(batch)
        return {pid: new_record(pid, prompts[pid], golds[pid], c.text, len(c.tokens), c.finish_reason, share,
                                cfg.hash, p_hash, model_id) for pid, [c] in zip(batch, outs)}

    records = run_resumable(ids, done, chunked(todo, cfg.batch_size, work), records_path, progress, "evaluate",
                            lambda d: {"acc": f"{sum(r['correct'] for r in d.values()) / len(d):.3f}"}, comm)
    return records, metrics_from_records(records)


def model_eval_config(path: str | Path, cfg: EvalConfig) -> EvalConfig:
    """`cfg` with the prompt the checkpoint at `path` was trained for, when its metadata.json names one
    (the sft and grpo stages record it): each model is measured the way it is meant to be used."""
    meta = Path(path) / "metadata.json"
    prompt = read_json(meta).get("prompt") if meta.exists() else None
    return dataclasses.replace(cfg, prompt=from_dict(PromptConfig, prompt)) if prompt else cfg


def evaluation_journal(state_dir: str | Path, model_id: str, data_sha256: str, cfg: EvalConfig) -> Path:
    """The record log of evaluating model `model_id` on the data file with `data_sha256` under `cfg`
    (records.journal keyed by all three). The evaluate stage and final_eval both use it, so final_eval
    reuses the evaluate stage's records of the baseline instead of generating them again."""
    return journal(state_dir, {"model": model_id, "data": data_sha256, "config": cfg.hash})


def metrics_from_records(records: Sequence[Record], wall_time: float | None = None) -> dict[str, Any]:
    """Accuracy (95% Wilson interval), generation statistics and provenance of a set of records.

    `wall_time` defaults to the sum of the records' generation seconds.
    """
    runs = {(r["config_hash"], r["model_id"]) for r in records}
    if len(runs) > 1:
        raise ValueError(f"records come from {len(runs)} different (config hash, model) pairs {sorted(runs)}")
    n = len(records)
    summary = accuracy_summary([r["correct"] for r in records])  # raises on no records
    tokens = sum(r["generated_tokens"] for r in records)
    wall = sum(r["seconds"] for r in records) if wall_time is None else wall_time
    return {
        **summary,
        "mean_generated_tokens": tokens / n,
        "truncation_rate": sum(bool(r["truncated"]) for r in records) / n,
        # prompts longer than the context allows: answered with nothing, counted as wrong
        "context_overflow": sum(r.get("finish_reason") == "context" for r in records),
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "wall_time_s": wall,
        "grader": GRADER_NAME,
        "grader_version": GRADER_VERSION,
        "prompt_hash": records[0]["prompt_hash"],
        "config_hash": records[0]["config_hash"],
        "model_id": records[0]["model_id"],
    }


def regrade(records_path: str | Path) -> dict[str, Any]:
    """Regrade stored completions against their gold answers (no model), rewrite the file, return metrics."""
    if not Path(records_path).exists():
        raise FileNotFoundError(f"{records_path} not found: run the evaluation first (without --regrade)")
    records = read_jsonl(records_path)
    if not records:
        raise ValueError(f"{records_path} holds no records: run the evaluation first")
    records = [grade_record(r) for r in records]
    write_jsonl(records_path, records)
    return metrics_from_records(records)
