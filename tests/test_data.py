import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reasoning.data import (
    MATH500_REVISION,
    MATH500_SOURCE,
    MATH500_SPLIT,
    SCHEMA_FIELDS,
    DataSourceError,
    answer_from_solution,
    check_disjoint,
    load_dataset_source,
    normalize_problem,
    read_dataset,
    remove_overlap,
    validate_rows,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[1]

# Rows shaped like the real sources: MATH-500 (unique_id, int level, subject, answer) and MATH
# (type, "Level N", no answer: it lives in the solution's last \boxed{}).
MATH500_ROWS = [
    {"problem": "Compute $\\dfrac{1}{2} + \\dfrac{1}{3}$.", "solution": "$\\frac56$",
     "answer": "\\frac{5}{6}",
     "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"},
    {"problem": "Find $x$ if $2x = 6$.", "solution": "So $x=\\boxed{3}$.", "answer": "3",
     "subject": "Algebra", "level": 2, "unique_id": "test/algebra/2.json"},
]
MATH_ROWS = [
    {"problem": "What is $1+1$?", "level": "Level 1", "type": "Prealgebra",
     "solution": "It is $\\boxed{2}$."},
    {"problem": "find  $x$ if $2x=6$.", "level": "Level 2", "type": "Algebra",
     "solution": "$x = \\boxed{3}$"},
    {"problem": "Evaluate $\\left(\\frac{1}{2}\\right)^2$.", "level": "Level 3", "type": "Algebra",
     "solution": "We get $\\boxed{\\frac{1}{4}}$."},
]


# ---------------------------------------------------------------------------------------------
# Text helpers


@pytest.mark.parametrize(
    "solution, expected",
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("first \\boxed{1}, then \\boxed{ 2 }", "2"),
        ("$\\fbox{(a,b)}$", "(a,b)"),
        ("The answer is $\\boxed 5$.", "5"),
        ("$\\boxed {12}$", "12"),
        ("the set $\\boxed{\\{1, 2\\}}$", "\\{1, 2\\}"),
        ("$\\boxed{\\text{(C)}}$", "\\text{(C)}"),
        ("\\boxed{\\sqrt{2}", None),  # unbalanced
        ("\\boxed{}", None),
        ("no box here: 42", None),
        ("\\boxedfoo{1}", None),  # a different macro
    ],
)
def test_answer_from_solution(solution, expected):
    assert answer_from_solution(solution) == expected


def test_normalize_problem_ignores_case_spacing_and_latex_spacing():
    key = normalize_problem("Find $x + 1$ if $\\left( x \\right) = 2$.")
    assert normalize_problem("find  $x+1$ if $(x)\\,=\\;2$.\n") == key
    assert normalize_problem("FIND $x\\quad+ 1$ if $(x) = 2$.") == key
    assert normalize_problem("$\\dfrac{1}{2}$") == normalize_problem("$\\frac{1}{2}$")
    assert normalize_problem("Find $x + 2$ if $(x) = 2$.") != key
    assert "rightarrow" in normalize_problem("$a \\rightarrow b$")  # \right only as a whole macro
    assert normalize_problem("a \\\\ b") == "a\\\\b"  # a line break is kept, not read as "\ "


# ---------------------------------------------------------------------------------------------
# Validation


def test_validate_rows_maps_both_source_schemas():
    rows, skipped = validate_rows(MATH500_ROWS + MATH_ROWS, "fixture")
    assert sum(skipped.values()) == 0
    assert [r["id"] for r in rows[:2]] == ["test/prealgebra/1.json", "test/algebra/2.json"]
    assert all(tuple(r) == SCHEMA_FIELDS for r in rows)
    math_row = rows[2]
    assert math_row["answer"] == "2" and math_row["level"] == 1 and math_row["subject"] == "Prealgebra"
    assert rows[4]["answer"] == "\\frac{1}{4}" and rows[4]["level"] == 3
    # ids for id-less rows are stable hashes of the problem, distinct per problem
    again, _ = validate_rows(list(reversed(MATH_ROWS)), "fixture")
    assert {r["id"] for r in again} == {r["id"] for r in rows[2:]}
    assert len({r["id"] for r in rows}) == len(rows)


def test_validate_rows_skips_and_counts_bad_rows():
    good = {"id": 7, "problem": "p", "answer": 5, "level": "3", "subject": "s"}
    rows = [
        good,
        None,
        "a string",
        {**good, "id": 8, "problem": "   "},
        {**good, "id": 9, "problem": None},
        {**good, "id": 10, "answer": "", "solution": "no box"},
        {**good, "id": 11, "answer": "", "solution": "\\boxed{4}"},  # recovered from the solution
        {**good, "id": 12, "level": "Level ?"},
        {**good, "id": 13, "level": True},
        {**good, "id": 14, "subject": ""},
        {**good, "id": 7, "problem": "another"},  # duplicate id
        {"problem": ["not", "text"], "answer": "1"},
        {},
    ]
    kept, skipped = validate_rows(rows, "fixture")
    assert [r["id"] for r in kept] == ["7", "11"]
    assert kept[0]["answer"] == "5" and kept[0]["level"] == 3 and kept[0]["solution"] == ""
    assert kept[1]["answer"] == "4"
    assert skipped == {
        "not_a_mapping": 2,
        "missing_problem": 4,
        "missing_answer": 1,
        "missing_level": 2,
        "missing_subject": 1,
        "duplicate_id": 1,
    }


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_local_json_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps(MATH500_ROWS))
    # JSON Lines under a .json name, as datasets' to_json writes by default
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in MATH500_ROWS))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH500_ROWS))
    pq.write_table(pa.Table.from_pylist(MATH500_ROWS), tmp_path / "a.parquet")
    for name in ("a.json", "lines.json", "a.jsonl", "a.parquet"):
        rows = load_dataset_source(str(tmp_path / name), split="test")
        assert rows == MATH500_ROWS, name
        assert load_dataset_source(str(tmp_path / name), split="test", limit=1) == MATH500_ROWS[:1]


def test_load_local_errors_name_the_problem(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist.*hf:<repo>"):
        load_dataset_source(str(tmp_path / "missing.jsonl"), split="test")
    (tmp_path / "a.csv").write_text("problem,answer\n")
    with pytest.raises(DataSourceError, match="unsupported file type '.csv'"):
        load_dataset_source(str(tmp_path / "a.csv"), split="test")
    (tmp_path / "obj.json").write_text('{"rows": []}')
    with pytest.raises(DataSourceError, match="expected a JSON array"):
        load_dataset_source(str(tmp_path / "obj.json"), split="test")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(DataSourceError, match="bad.jsonl:2"):
        load_dataset_source(str(tmp_path / "bad.jsonl"), split="test")
    with pytest.raises(ValueError, match="limit"):
        load_dataset_source(str(tmp_path / "obj.json"), split="test", limit=0)


OFFLINE_SCRIPT = """
from reasoning.data import DataSourceError, load_dataset_source
from reasoning.hub import HubError
from reasoning.teacher import TeacherConfig, load_teacher
from reasoning.generate import SamplingConfig
from reasoning.weights import resolve
from flows.stage import is_transient
fetches = [
    lambda: load_dataset_source({source!r}, {split!r}, {revision!r}, setting="prepare_data.test.source"),
    lambda: resolve("hf:Qwen/Qwen3-0.6B-Base", setting="load_base.source"),
    lambda: load_teacher(TeacherConfig(kind="file", model="hf:someone/traces/traces.json"), SamplingConfig()),
]
for fetch in fetches:
    try:
        fetch()
    except HubError as e:
        print("ERROR:", type(e).__name__, isinstance(e, DataSourceError), e.offline, is_transient(e), e)
"""


def test_offline_hub_gives_one_clear_error_shape_and_no_retry(tmp_path):
    """Every place that downloads fails the same way offline: what, the local alternative for that
    setting, the download command; and offline is not a transient failure (no retries)."""
    # A fresh interpreter: the hub reads HF_HUB_OFFLINE at import time. An empty HF_HOME makes
    # sure no cached copy answers instead.
    script = OFFLINE_SCRIPT.format(source=MATH500_SOURCE, split=MATH500_SPLIT, revision=MATH500_REVISION)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data, model, traces = out.stdout.strip().splitlines()
    assert data.startswith("ERROR: HubDataSourceError True True False could not fetch dataset "
                           "HuggingFaceH4/MATH-500 (split 'test', revision")
    assert "the Hub is not reachable from here (offline)" in data and "set prepare_data.test.source: MATH-500/" in data
    assert f"hf download HuggingFaceH4/MATH-500 --repo-type dataset --revision {MATH500_REVISION} " \
           "--local-dir MATH-500`" in data
    assert model.startswith("ERROR: HubError False True False could not fetch checkpoint Qwen/Qwen3-0.6B-Base@main")
    assert "set load_base.source: Qwen3-0.6B-Base," in model
    assert "`hf download Qwen/Qwen3-0.6B-Base --local-dir Qwen3-0.6B-Base`" in model
    assert traces.startswith("ERROR: HubError False True False could not fetch trace file traces.json of dataset "
                             "someone/traces")
    assert "set teacher_traces.teacher.model: traces/traces.json" in traces
    assert "`hf download someone/traces traces.json --repo-type dataset --local-dir traces`" in traces


# ---------------------------------------------------------------------------------------------
# Disjointness


def test_overlap_detected_and_removed_on_normalised_text():
    test, _ = validate_rows(MATH500_ROWS, "math500")
    train, _ = validate_rows(MATH_ROWS, "math")
    # "find  $x$ if $2x=6$." is MATH-500's "Find $x$ if $2x = 6$." up to case and spacing
    assert check_disjoint(train, test) == [normalize_problem("Find $x$ if $2x = 6$.")]
    clean, dropped = remove_overlap(train, test)
    assert dropped == 1 and len(clean) == 2
    assert "find  $x$ if $2x=6$." not in [r["problem"] for r in clean]
    assert check_disjoint(clean, test) == []


# ---------------------------------------------------------------------------------------------
# Files


def test_write_and_read_dataset_with_metadata(tmp_path):
    rows, skipped = validate_rows(MATH500_ROWS + [{"problem": ""}], "fixture")
    path = tmp_path / "data" / "math500.jsonl"
    meta = write_dataset(
        rows, path, source=MATH500_SOURCE, extra_meta={"revision": MATH500_REVISION}, skipped=skipped
    )
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["rows"] == 2 and meta["source"] == MATH500_SOURCE and meta["revision"] == MATH500_REVISION
    assert meta["skipped"]["missing_problem"] == 1 and meta["fields"] == list(SCHEMA_FIELDS)
    assert json.loads((tmp_path / "data" / "math500.meta.json").read_text()) == meta
    # nothing else (no leftover temporary files) in the directory
    assert sorted(p.name for p in path.parent.iterdir()) == ["math500.jsonl", "math500.meta.json"]
    assert read_dataset(path) == rows


def test_write_dataset_rejects_bad_input(tmp_path):
    rows, _ = validate_rows(MATH500_ROWS, "fixture")
    with pytest.raises(ValueError, match="lacks \\['level'\\]"):
        write_dataset([{k: v for k, v in rows[0].items() if k != "level"}], tmp_path / "x.jsonl", "s")
    with pytest.raises(ValueError, match="duplicate ids"):
        write_dataset(rows + rows[:1], tmp_path / "x.jsonl", "s")
    with pytest.raises(ValueError, match="may not redefine \\['rows'\\]"):
        write_dataset(rows, tmp_path / "x.jsonl", "s", extra_meta={"rows": 3})


def test_read_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `dvc repro prepare_data`"):
        read_dataset(tmp_path / "absent.jsonl")
    rows, _ = validate_rows(MATH500_ROWS, "fixture")
    path = tmp_path / "math500.jsonl"
    write_dataset(rows, path, "s")
    path.write_text(path.read_text().replace("Compute", "Calculate"))
    with pytest.raises(ValueError, match="does not match the sha256 in math500.meta.json"):
        read_dataset(path)


def test_local_math_source_end_to_end(tmp_path):
    # the prepare_data path for the training split: local file -> validate -> drop overlap -> write
    src = tmp_path / "math_train.json"
    no_answer = {"problem": "x", "level": "Level 1", "type": "Algebra", "solution": ""}
    src.write_text(json.dumps(MATH_ROWS + [no_answer]))
    test, _ = validate_rows(MATH500_ROWS, "math500")
    train, skipped = validate_rows(load_dataset_source(str(src), "train"), str(src))
    train, dropped = remove_overlap(train, test)
    meta = write_dataset(
        train, tmp_path / "math_train.jsonl", str(src), {"overlap_dropped": dropped}, skipped
    )
    assert (meta["rows"], meta["overlap_dropped"], meta["skipped"]["missing_answer"]) == (2, 1, 1)
    assert [r["answer"] for r in read_dataset(tmp_path / "math_train.jsonl")] == ["2", "\\frac{1}{4}"]


def test_read_dataset_skips_counts_and_names_rows_without_a_field(tmp_path, caplog):
    """Every stage reads problems through read_dataset; skips from several files add up in its metrics."""
    from stages.common import run_facts

    good = {"id": "a", "problem": "What is 1 + 1?", "answer": "2"}
    (tmp_path / "one.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "answer": ""})
                                        + "\n\n" + json.dumps({"id": "c", "answer": "3"}) + "\n")
    (tmp_path / "two.jsonl").write_text(json.dumps({**good, "id": None}) + "\n")
    skipped: dict[str, int] = {}
    assert [r["id"] for r in read_dataset(tmp_path / "one.jsonl", skipped=skipped)] == ["a"]
    assert read_dataset(tmp_path / "two.jsonl", skipped=skipped) == []
    assert run_facts(skipped)["skipped_rows"] == 3 and "skipped_rows" not in run_facts({})
    assert f"{tmp_path / 'one.jsonl'}:2: row skipped: field 'answer' missing or empty" in caplog.text
    assert f"{tmp_path / 'one.jsonl'}:4: row skipped: field 'problem' missing or empty" in caplog.text  # blank line 3
    assert f"{tmp_path / 'two.jsonl'}:1: row skipped: field 'id' missing or empty" in caplog.text
