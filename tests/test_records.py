"""The one resumable record log: appends as results arrive, refuses mixed runs, rewrites in order."""

from __future__ import annotations

import pytest

from reasoning.files import read_jsonl
from reasoning.records import chunked, grade_record, new_record, resume_records, run_resumable

IDS = ["a", "b", "c", "d", "e"]
STAMP = {"config_hash": "cfg1", "model_id": "m1"}


def record(pid: str, answer: str = "4", **stamp) -> dict:
    return new_record(pid, f"prompt {pid}", "4", f"so \\boxed{{{answer}}}", 5, "stop", 0.1,
                      stamp.get("config_hash", "cfg1"), "p", stamp.get("model_id", "m1"))


def expected(ids=IDS) -> dict:
    return {pid: {"prompt": f"prompt {pid}", "gold": "4"} for pid in ids}


def test_new_record_is_graded_from_its_completion():
    right, wrong = record("a"), record("b", answer="5")
    assert (right["correct"], right["extracted"]) == (True, "4")
    assert (wrong["correct"], wrong["extracted"]) == (False, "5")
    assert grade_record({**wrong, "correct": True, "reason": "stale"}) == wrong  # verdicts are recomputed


def test_a_killed_run_resumes_and_the_file_ends_in_id_order(tmp_path):
    path = tmp_path / "records.jsonl"
    made: list[str] = []

    def work(chunk):
        if len(made) >= 2:
            raise KeyboardInterrupt("killed")
        made.extend(chunk)
        return {pid: record(pid) for pid in reversed(chunk)}  # out of order on purpose

    todo = ["e", "c", "a", "b", "d"]
    with pytest.raises(KeyboardInterrupt):
        run_resumable(IDS, {}, chunked(todo, 2, work), path, progress=False, desc="t")
    assert sorted(r["id"] for r in read_jsonl(path)) == ["c", "e"]  # the first chunk was journaled

    done = resume_records(path, expected(), STAMP, "test config", regrade=grade_record)
    assert sorted(done) == ["c", "e"]
    made.clear()
    rest = [pid for pid in todo if pid not in done]
    records = run_resumable(IDS, done, chunked(rest, 2, lambda c: {p: record(p) for p in c}), path, False, "t")
    assert [r["id"] for r in records] == IDS == [r["id"] for r in read_jsonl(path)]


def test_another_config_model_or_problem_is_refused(tmp_path):
    path = tmp_path / "records.jsonl"
    run_resumable(IDS, {}, ((p, record(p)) for p in IDS), path, False, "t")
    with pytest.raises(ValueError, match="different test config .*delete it or choose another output"):
        resume_records(path, expected(), {**STAMP, "config_hash": "cfg2"}, "test config")
    with pytest.raises(ValueError, match="records of model 'm1', not 'm2'"):
        resume_records(path, expected(), {**STAMP, "model_id": "m2"}, "test config")
    changed = {**expected(), "c": {"prompt": "prompt c", "gold": "5"}}
    with pytest.raises(ValueError, match="'c' differs.*dataset changed"):
        resume_records(path, changed, STAMP, "test config")
    # "redo": a changed problem is generated again; problems outside this run are left out
    kept = resume_records(path, {k: v for k, v in changed.items() if k != "e"}, STAMP, "x", on_changed="redo")
    assert sorted(kept) == ["a", "b", "d"]


def test_atomic_writes_get_the_permissions_a_plain_open_gives(tmp_path):
    """Outputs written through a temporary file are as readable as any other file the user writes
    (mkstemp's own 0600 made every table, chart and metrics file private to its writer)."""
    import os

    from reasoning.files import atomic_write_text

    atomic_write_text(tmp_path / "atomic.md", "x")
    (tmp_path / "plain.md").write_text("x")
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777  # noqa: E731
    assert mode("atomic.md") == mode("plain.md")
    assert not list(tmp_path.glob(".atomic.md.*"))  # no temporary file left behind
