"""Datasets: load MATH-500 and a MATH training split, validate rows, keep train and test disjoint.

Design: every source (a Hugging Face Hub dataset at a pinned revision, or a local JSON / JSONL /
Parquet file with the same fields) becomes a list of rows in one schema: `id`, `problem`,
`answer` (the gold answer as it would appear inside \\boxed{}), `solution` (may be empty),
`level` (int) and `subject`. `validate_rows` maps source field names onto it and skips a bad
row with a counted reason instead of raising, so one malformed row never stops `prepare_data`.
Train/test disjointness is checked on a normalised problem text (case, whitespace and LaTeX
spacing ignored) because the MATH training data and MATH-500 come from the same 12,500
problems. Each written dataset gets a `.meta.json` beside it with its sha256, row count, source
and skip counts; `read_dataset` checks the hash, so a hand-edited or half-written file is caught.
`datasets` and `pyarrow` are imported inside the loader: only `prepare_data` needs them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .files import numbered_jsonl, read_json, read_jsonl, sha256_file, write_json, write_jsonl
from .hub import HubError

log = logging.getLogger(__name__)

SCHEMA_FIELDS = ("id", "problem", "answer", "solution", "level", "subject")

MATH500_SOURCE = "hf:HuggingFaceH4/MATH-500"
MATH500_SPLIT = "test"
MATH500_REVISION = "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be"
"""MATH-500 (Lightman et al. 2023, "Let's Verify Step by Step"): 500 problems drawn from the MATH
test split. Fields: problem, solution, answer, subject, level (int), unique_id. The revision is
the Hub commit that other evaluation harnesses pin for this dataset."""

MATH_TRAIN_SOURCE = "hf:rasbt/math_full_minus_math500"
MATH_TRAIN_SPLIT = "train"
MATH_TRAIN_REVISION = "main"
"""The training split the book uses for GRPO (chapters 6-8): the 12,500 MATH problems (Hendrycks
et al. 2021, train + test) minus the 500 MATH-500 problems, i.e. the 12,000-problem training set
of PRM800K. Fields: problem, solution, answer (last \\boxed{} of the solution), level, type or
subject, unique_id. No commit hash could be confirmed offline, so the revision is `main`; the
sha256 in the written metadata pins the content that was actually used. `prepare_data` re-checks
disjointness from MATH-500 rather than trusting the name."""

SKIP_REASONS = (
    "not_a_mapping", "missing_problem", "missing_answer", "missing_level", "missing_subject", "duplicate_id",
)


class DataSourceError(RuntimeError):
    """A dataset source cannot be read (hub unreachable, file missing or malformed)."""


# ---------------------------------------------------------------------------------------------
# Text helpers


def answer_from_solution(solution: str) -> str | None:
    r"""The content of the last `\boxed{...}` or `\fbox{...}` in `solution`, or None.

    Braces are matched with nesting (escaped `\{` and `\}` do not count); MATH's `\boxed 5`
    form (no braces) is read up to the next space or `$`. An unbalanced last box gives None.
    """
    if not isinstance(solution, str):
        return None
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", solution)]
    if not starts:
        return None
    after = solution[starts[-1] :]
    i = starts[-1] + len(after) - len(after.lstrip())
    if i == len(solution) or solution[i] != "{":
        token = re.match(r"\s+([^\s$]+)", after)
        return token.group(1) if token else None
    depth, j = 0, i
    while j < len(solution):
        ch = solution[j]
        if ch == "\\":
            j += 2  # an escaped character, e.g. \{ inside a set, is content
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = solution[i + 1 : j].strip()
                return content or None
        j += 1
    return None


# `\\` (a line break) is matched first so that its second backslash is not read as `\ `.
_LATEX_SPACING = re.compile(r"\\\\|\\(?:[,;:! ]|q?quad(?![a-zA-Z])|left(?![a-zA-Z])|right(?![a-zA-Z]))|~")


def normalize_problem(text: str) -> str:
    """A key for "same problem": NFKC, lower case, no LaTeX spacing or sizing macros, no whitespace.

    Removing all whitespace (not just collapsing it) makes `x+1` and `x + 1` equal; two distinct
    competition problems that differ only in spacing do not occur.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _LATEX_SPACING.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else "", text)
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    return re.sub(r"\s+", "", text)


# ---------------------------------------------------------------------------------------------
# Validation


def _text(value: Any) -> str:
    """A non-empty stripped string, or "" for missing, empty or non-text values (numbers allowed)."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return value.strip() if isinstance(value, str) else ""


def _level(value: Any) -> int | None:
    """MATH-500 stores 3, MATH stores "Level 3"; "Level ?" (a few MATH rows) is unknown."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str):
        m = re.fullmatch(r"(?:level\s*)?(\d+)", value.strip(), flags=re.IGNORECASE)
        return int(m.group(1)) if m else None
    return None


def validate_rows(rows: Iterable[Any], source: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Map `rows` from `source` onto the schema; return (valid rows, skip counts by reason).

    Field mapping: `unique_id` or `id` -> `id` (a hash of the normalised problem when absent);
    `subject` or `type` -> `subject`; an empty `answer` is taken from the solution's last
    \\boxed{}. A row missing its problem, answer, level or subject, or repeating an earlier id,
    is skipped and counted; `source` labels the warning that reports the skips.
    """
    kept: list[dict[str, Any]] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    seen: set[str] = set()
    for row in rows:
        if not isinstance(row, dict):
            skipped["not_a_mapping"] += 1
            continue
        problem = _text(row.get("problem"))
        solution = _text(row.get("solution"))
        answer = _text(row.get("answer")) or answer_from_solution(solution) or ""
        level = _level(row.get("level"))
        subject = _text(row.get("subject")) or _text(row.get("type"))
        reason = (
            "missing_problem" if not problem
            else "missing_answer" if not answer
            else "missing_level" if level is None
            else "missing_subject" if not subject
            else None
        )
        if reason:
            skipped[reason] += 1
            continue
        rid = _text(row.get("unique_id")) or _text(row.get("id"))
        rid = rid or "p-" + hashlib.sha256(normalize_problem(problem).encode()).hexdigest()[:16]
        if rid in seen:
            skipped["duplicate_id"] += 1
            continue
        seen.add(rid)
        kept.append(
            dict(id=rid, problem=problem, answer=answer, solution=solution, level=level, subject=subject)
        )
    if sum(skipped.values()):
        counts = {k: v for k, v in skipped.items() if v}
        log.warning("%s: kept %d rows, skipped %s", source, len(kept), counts)
    return kept, skipped


# ---------------------------------------------------------------------------------------------
# Loading


def _load_local(path: Path) -> list[Any]:
    if not path.exists():
        raise DataSourceError(
            f"{path} does not exist; pass an existing .json/.jsonl/.parquet file, "
            "or hf:<repo> for a Hub dataset"
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        try:
            return read_jsonl(path)
        except ValueError as e:
            raise DataSourceError(str(e)) from None
    if suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            # `datasets.Dataset.to_json` writes JSON Lines under a .json name by default
            try:
                return [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as e:
                raise DataSourceError(f"{path}: neither a JSON array nor JSON Lines ({e})") from None
        if not isinstance(data, list):
            raise DataSourceError(f"{path}: expected a JSON array of row objects, got {type(data).__name__}")
        return data
    raise DataSourceError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")


class HubDataSourceError(HubError, DataSourceError):
    """A Hub dataset could not be downloaded (a DataSourceError in the shape of every Hub failure)."""


def _load_hub(repo: str, split: str, revision: str | None, setting: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(repo, split=split, revision=revision)
    except ConnectionError as e:  # datasets raises this both offline and with HF_HUB_OFFLINE=1
        local = repo.split("/")[-1]
        pin = f" --revision {revision}" if revision else ""
        raise HubDataSourceError(
            f"dataset {repo} (split {split!r}, revision {revision!r})", setting,
            f"{local}/<the {split} split's .jsonl, .json or .parquet file>",
            f"hf download {repo} --repo-type dataset{pin} --local-dir {local}", e) from e
    return ds.to_list()


def load_dataset_source(
    source: str, split: str, revision: str | None = None, limit: int | None = None,
    setting: str = "the dataset source",
) -> list[Any]:
    """Raw rows from `hf:<repo>` (split and revision pinned) or a local .json/.jsonl/.parquet path.

    `split` and `revision` apply to Hub sources only. `limit` keeps the first rows, for smoke
    runs. Any failure to read the source raises `DataSourceError` with the fix in its message; a
    failed download names `setting` (e.g. "prepare_data.test.source") and the local file to put there.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows or None, got {limit}")
    if source.startswith("hf:"):
        rows = _load_hub(source[3:], split, revision, setting)
    else:
        rows = _load_local(Path(source))
    return rows[:limit] if limit is not None else rows


# ---------------------------------------------------------------------------------------------
# Disjointness


def check_disjoint(train: Iterable[dict[str, Any]], test: Iterable[dict[str, Any]]) -> list[str]:
    """Normalised problems present in both splits (sorted); empty when they are disjoint."""
    test_keys = {normalize_problem(r["problem"]) for r in test}
    return sorted({k for r in train if (k := normalize_problem(r["problem"])) in test_keys})


def remove_overlap(
    train: list[dict[str, Any]], test: Iterable[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Drop every train row whose normalised problem is in `test`; return (kept rows, number dropped)."""
    test_keys = {normalize_problem(r["problem"]) for r in test}
    clean = [r for r in train if normalize_problem(r["problem"]) not in test_keys]
    return clean, len(train) - len(clean)


# ---------------------------------------------------------------------------------------------
# Files


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".meta.json")


def write_dataset(
    rows: list[dict[str, Any]],
    path: str | Path,
    source: str,
    extra_meta: dict[str, Any] | None = None,
    skipped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write `rows` as JSONL and a `.meta.json` beside it (both atomically); return the metadata.

    The metadata holds the file's sha256, row count, source, skip counts and field list, plus
    `extra_meta` (revision, split, rows dropped as overlap, ...), which may not redefine them.
    """
    path = Path(path)
    for i, row in enumerate(rows):
        missing = [f for f in SCHEMA_FIELDS if f not in row]
        if missing:
            raise ValueError(
                f"row {i} (id {row.get('id')!r}) lacks {missing}; pass rows through validate_rows first"
            )
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids; pass rows through validate_rows first")
    write_jsonl(path, rows)
    meta = {
        "file": path.name,
        "sha256": sha256_file(path),
        "rows": len(rows),
        "source": source,
        "skipped": dict(skipped or {}),
        "fields": list(SCHEMA_FIELDS),
    }
    clash = sorted(set(extra_meta or {}) & set(meta))
    if clash:
        raise ValueError(f"extra_meta may not redefine {clash}")
    meta.update(extra_meta or {})
    write_json(_meta_path(path), meta)
    return meta


def rows_with(rows: Iterable[tuple[int, Any]], fields: tuple[str, ...], source: str | Path,
              skipped: dict[str, int] | None = None, present: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The (line, row) `rows` whose every field of `fields` is present and non-empty (and of `present`,
    present, empty allowed); each other row is skipped with a warning naming the file, line and
    field, and counted in `skipped["malformed_rows"]` (the skip-and-count policy of `validate_rows`),
    so one bad row never stops a run."""
    kept = []
    for line, row in rows:
        if not isinstance(row, dict):
            row = {}
        missing = [f for f in fields if row.get(f) is None or row.get(f) == ""]
        missing += [f for f in present if row.get(f) is None]
        if missing:
            log.warning("%s:%d: row skipped: field %s missing or empty (need %s)", source, line,
                        ", ".join(repr(m) for m in missing), ", ".join(fields))
            if skipped is not None:
                skipped["malformed_rows"] = skipped.get("malformed_rows", 0) + 1
            continue
        kept.append(row)
    return kept


PROBLEM_FIELDS = ("id", "problem", "answer")  # what every stage that reads problems needs


def read_dataset(path: str | Path, stage: str = "prepare_data",
                 skipped: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Rows of a dataset (one written by `write_dataset` is checked against its metadata's sha256).

    A row without an id, problem or answer is skipped with a warning naming file, line and field,
    and counted in `skipped` (a stage puts the count in its metrics)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: it is produced by the {stage} stage; run `dvc repro {stage}`"
        )
    meta_path = _meta_path(path)
    if meta_path.exists():
        expected = read_json(meta_path).get("sha256")
        if expected and sha256_file(path) != expected:
            raise ValueError(
                f"{path} does not match the sha256 in {meta_path.name} (edited or half-written); "
                f"rerun `dvc repro {stage}`"
            )
    return rows_with(numbered_jsonl(path), PROBLEM_FIELDS, path, skipped)
