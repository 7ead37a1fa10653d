"""Records: the typed result of one problem, and the one resumable record log every generating
stage writes through.

Design choices:
- A `Record` is a plain dict with a declared shape (a TypedDict): it is what goes to JSONL,
  MLflow and the paired tests unchanged, and the type says which fields every reader may rely
  on. `new_record` is the one place that builds one, and `grade_record` the one place a verdict
  is set: verdicts are always recomputed from the stored completion, so every verdict in a file
  comes from the grader version its metrics name (a resumed or regraded file too).
- `run_resumable` is the one resumable loop, shared by evaluation (and so final_eval and GRPO's
  held-out evaluation), the inference-scaling runner and the teacher-trace journal. Results are
  appended durably as they arrive, so a killed run loses at most the work in flight; a rerun
  keeps every record `resume_records` accepts and generates only the rest; at the end the file
  is rewritten to hold exactly the returned records in problem order, so it does not depend on
  where a run died.
- `resume_records` refuses a log written under another configuration or model (the `stamp`
  fields every record carries) instead of silently mixing two runs; a record whose problem
  changed since is refused too, or redone where the caller says so (the teacher journal).
- Data parallel (under torchrun): every rank reads the same logs before any rank writes (a
  barrier), so all agree on what is left; `shard` gives each rank every world-th problem of it (the
  work is sorted by prompt length, so shares are balanced), each rank appends to its own log beside the shared one
  (`<log>.rank<r>.jsonl`: a killed run resumes per rank, at any world size), and at the end the
  ranks exchange their new records, rank 0 writes the shared log in problem order and the rank logs
  go. Every rank returns all records, identical to a one-process run's: each sample's seed is its
  problem's and sample's, never its batch's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from tqdm import tqdm

from .chat_template import ChatTemplate
from .config import run_dir
from .files import JsonlAppender, read_jsonl, write_jsonl
from .grading import grade
from .prompts import PromptConfig, render

if TYPE_CHECKING:
    from .checkpoint import Dist


class Record(TypedDict):
    """One graded completion of one problem (evaluation, final_eval, a scaling setting at a budget)."""

    id: str
    prompt: str
    completion: str
    gold: str
    extracted: str | None  # the final answer the grader read, None when there is none
    correct: bool
    reason: str  # the grader's reason for its verdict
    generated_tokens: int
    truncated: bool  # the completion hit max_new_tokens
    finish_reason: str  # "stop", "length" (truncated) or "context" (the prompt did not fit: nothing generated)
    seconds: float  # this record's share of its batch's generation time
    config_hash: str  # what determined the completion (prompt, sampling, seed)
    prompt_hash: str
    model_id: str  # content hash of the weights (weights.model_id)


def problem_prompts(problems: Sequence[dict[str, Any]], prompt: PromptConfig,
                    chat_template: ChatTemplate | None = None) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(ids, prompt by id, gold answer by id) of dataset rows, the start of every resumable run;
    `expected_fields` of them is what a kept record must still match. Chat prompts render with
    `chat_template` (the model's). Raises ValueError for an empty set or repeated ids."""
    if not problems:
        raise ValueError("no problems to run: the dataset is empty")
    ids = [str(p["id"]) for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids are not unique; pass the rows through reasoning.data.validate_rows")
    prompts = {pid: render(p["problem"], prompt, chat_template) for pid, p in zip(ids, problems)}
    return ids, prompts, {pid: str(p["answer"]) for pid, p in zip(ids, problems)}


def expected_fields(prompts: dict[str, str], golds: dict[str, str]) -> dict[str, dict[str, str]]:
    """What `resume_records` checks a kept record against: the problem's prompt and gold answer."""
    return {pid: {"prompt": prompts[pid], "gold": golds[pid]} for pid in prompts}


def journal(state_dir: str | Path, key: dict[str, Any]) -> Path:
    """The record log of one run: state_dir/<hash of key>/records.jsonl.

    Stages keep it under `runs/` (git- and DVC-ignored), not among their outputs, which `dvc repro`
    deletes before it runs a stage: a killed stage resumes under `dvc repro` and `make run` too.
    Key it by everything a record depends on (model id, data hash, config hash): a run with other
    inputs gets another log, so a stale one is never reused."""
    return run_dir(state_dir, key) / "records.jsonl"


def grade_record(record: dict[str, Any]) -> dict[str, Any]:
    """`record` (anything with completion and gold) with extracted, correct and reason recomputed."""
    verdict = grade(record["completion"], record["gold"])
    return {**record, "extracted": verdict.extracted, "correct": bool(verdict), "reason": verdict.reason}


def new_record(id: str, prompt: str, gold: str, completion: str, generated_tokens: int, finish_reason: str,
               seconds: float, config_hash: str, prompt_hash: str, model_id: str) -> Record:
    """A graded `Record`."""
    return grade_record({"id": id, "prompt": prompt, "completion": completion, "gold": gold,
                         "generated_tokens": generated_tokens, "truncated": finish_reason == "length",
                         "finish_reason": finish_reason, "seconds": seconds, "config_hash": config_hash,
                         "prompt_hash": prompt_hash, "model_id": model_id})


def resume_records(path: str | Path, expected: Mapping[str, Mapping[str, Any]], stamp: Mapping[str, str],
                   what: str, regrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                   on_changed: Literal["refuse", "redo"] = "refuse") -> dict[str, dict[str, Any]]:
    """The records of `path` worth keeping, by id, each passed through `regrade`.

    `expected` maps each problem id of this run to the fields its record must hold unchanged
    (e.g. prompt and gold); records of other ids are left out (dropped when the log is rewritten).
    A record that disagrees raises ValueError (`on_changed="refuse"`: the dataset changed) or is
    left out to be generated again ("redo"). Every record must carry `stamp`'s values; one that
    does not raises ValueError naming `what` (e.g. "evaluation config"), since mixing two
    configurations or models in one file would make its metrics meaningless.
    """
    done: dict[str, dict[str, Any]] = {}
    for r in (r for p in [Path(path), *rank_journals(path)] for r in read_jsonl(p)):
        for field, value in stamp.items():
            if r.get(field) == value:
                continue
            if field == "model_id":
                raise ValueError(f"{path} holds records of model {r.get(field)!r}, not {value!r}; delete it or "
                                 "choose another output directory")
            raise ValueError(f"{path} holds records from a different {what} ({field} {r.get(field)}, now "
                             f"{value}: prompt, sampling or seed changed); delete it or choose another output "
                             "directory")
        pid = r["id"]
        if pid not in expected or pid in done:
            continue
        if any(r.get(k) != v for k, v in expected[pid].items()):
            if on_changed == "redo":
                continue
            raise ValueError(f"{path}: problem {pid!r} differs from the one its record was made for (the "
                             "dataset changed); delete the file or choose another output directory")
        done[pid] = regrade(r) if regrade else r
    return done


def rank_journals(path: str | Path) -> list[Path]:
    """The per-rank logs a data-parallel run keeps beside `path` (left behind only by a killed run)."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))


def shard(todo: Sequence[str], comm: Dist | None) -> list[str]:
    """This rank's share of `todo`: every world-th id from its rank on (all of it in one process)."""
    return list(todo)[comm.rank::comm.world] if comm is not None else list(todo)


def chunked(ids: Sequence[str], size: int,
            work: Callable[[list[str]], dict[str, dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(id, record) pairs of `work(chunk)` for consecutive chunks of `size` ids."""
    for start in range(0, len(ids), size):
        yield from work(list(ids[start:start + size])).items()


def run_resumable(ids: Sequence[str], done: dict[str, dict[str, Any]],
                  results: Iterable[tuple[str, dict[str, Any]]], path: str | Path | None,
                  progress: bool, desc: str,
                  postfix: Callable[[dict[str, dict[str, Any]]], dict[str, str]] | None = None,
                  comm: Dist | None = None) -> list[dict[str, Any]]:
    """Add each (id, record) of `results` to `done`, appending it to `path` as it arrives, behind a
    progress bar over `ids`; return the records in `ids` order (every id must end up in `done`).

    `done` holds the records kept from an earlier run (`resume_records`). At the end `path` is
    rewritten to hold exactly the returned records, in `ids` order.

    With `comm` of several ranks, `results` covers this rank's `shard` only: it is logged to this
    rank's `<path>.rank<r>.jsonl`, the ranks then exchange their new records (every rank returns all
    of them), rank 0 rewrites `path`, and the rank logs are removed once it has.
    """
    parallel = comm is not None and comm.world > 1
    own = Path(path).with_name(f"{Path(path).stem}.rank{comm.rank}{Path(path).suffix}") \
        if parallel and path else path
    if parallel:  # every rank has read the logs (resume_records) before any rank appends to its own
        comm.barrier()
    appender = JsonlAppender(own) if own else None
    new: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(ids), initial=len(done), desc=desc, unit="problem",
               disable=not progress or (parallel and comm.rank != 0),
               file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        for pid, record in results:
            done[pid] = new[pid] = record
            if appender:
                appender.append(record)
            if parallel:  # rank 0's bar counts its own share, scaled to the whole
                bar.update(comm.world - 1)
            if postfix and progress:
                bar.set_postfix(postfix(done), refresh=False)
            bar.update(1)
    finally:
        bar.close()
        if appender:
            appender.close()
    if parallel:
        for part in comm.gather_objects(new):
            done.update(part)
    records = [done[pid] for pid in ids]
    if path and (not parallel or comm.rank == 0):
        write_jsonl(path, records)
    if parallel:
        comm.barrier()  # the shared log holds everything now: the rank logs may go
    if path and (not parallel or comm.rank == 0):
        for stale in rank_journals(path):  # this run's, and any a killed run left (kept above)
            stale.unlink(missing_ok=True)
    return records
