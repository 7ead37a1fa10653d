"""File helpers shared by every module: atomic writes, JSONL, hashes (named `files`, not `io`, so it
never shadows the standard library module).

Design: a file is either complete or absent. Whole-file writes go to a temporary file in the
same directory and are renamed into place; append-only record files (JSONL) are flushed and
fsynced line by line, and a torn last line left by a kill is dropped on read, so a resumed
stage continues from the last complete record.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; restored at once (at import: one thread)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's own 0600 would hide outputs


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file renamed into place, with the permissions a plain
    open() gives (FILE_MODE), so a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete records; a torn final line (a killed writer) is ignored."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file (none when it does not exist); see `numbered_jsonl`."""
    return (row for _, row in numbered_jsonl(path))


def numbered_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of each complete line, so a reader can name the line of a bad record;
    blank lines are skipped and a torn final line (a killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return
    with open(path) as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield i + 1, json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                return  # torn tail from an interrupted append
            raise ValueError(f"{path}:{i + 1}: not valid JSON; the file is corrupt") from None


class JsonlAppender:
    """Append records durably; `open` first truncates any torn tail so appends stay line-aligned."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            good = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in iter_jsonl(self.path))
            if good != self.path.read_bytes():
                atomic_write_bytes(self.path, good)
        self._f = open(self.path, "a")

    def append(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
