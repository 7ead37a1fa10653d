"""Typed configuration: `params.yaml` sections read into frozen dataclasses, and stable hashes of them.

Design: every concern has one frozen dataclass, built from its `params.yaml` section with
`from_dict`, so an unknown or misspelt key fails loudly with the list of allowed keys instead
of being ignored. The dataclasses live beside the code they configure (`ModelConfig` in
model.py, `EvalConfig` in evaluate.py, ...); this module only reads and hashes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise, nested dataclasses recurse."""
    data = dict(data or {})
    where = where or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            data[name] = from_dict(hint, value, f"{where}.{name}")
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            data[name] = tuple(value)
    try:
        return cls(**data)
    except TypeError as e:  # a required key is missing
        raise ValueError(f"{where}: {e}") from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run from the repository root or pass --params")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def load_section(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Read `params.yaml`'s `section` into `cls`, failing loudly on unknown or missing keys."""
    params = load_params(path)
    if section not in params:
        raise KeyError(f"{path} has no section {section!r}; sections are {sorted(params)}")
    return from_dict(cls, params[section], f"{path}:{section}")


def stable_hash(obj: Any) -> str:
    """Short sha256 of a JSON-serialisable object (params, prompt templates), for provenance tags."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dir(root: str | Path, key: dict[str, Any]) -> Path:
    """The state directory of the run identified by `key` under `root` (e.g. runs/grpo/<hash>): another
    key (other settings, data or model), another directory, so a stale state is never reused."""
    return Path(root) / stable_hash(key)
