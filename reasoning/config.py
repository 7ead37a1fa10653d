"""Typed configuration: `params.yaml` sections read into frozen dataclasses, and stable hashes of them.

Design: every concern has one frozen dataclass, built from its `params.yaml` section with
`from_dict`, so an unknown or misspelt key fails loudly with the list of allowed keys instead
of being ignored, and a value of the wrong type fails at load, naming the file, the key path and
what was expected (`params.yaml:evaluate.sampling.max_new_tokens: expected an integer, got 160.5`).
The dataclasses live beside the code they configure (`ModelConfig` in model.py, `EvalConfig` in
evaluate.py, ...); this module only reads, checks and hashes them.

One loader for every stage and for what `dvc exp run -S key=value` writes (DVC writes YAML 1.2):
`load_params` reads numbers as YAML 1.2 does, so `1e-5`, `1e-05`, `5E-6`, `.5` and `+1e3` are
floats (PyYAML's YAML 1.1 rules read an exponent without a dot as a string); quoted text ("1e5")
stays a string. Booleans and nulls keep PyYAML's rules.

Type rules of `from_dict`, by the field's annotation:
- int: an integer; a bool is not an integer and neither is any float, even an integral one (160.0
  is refused: write 160), so a count is never silently rounded.
- float: a float, or an integer read as that float (`1` and `1.0` are the same setting and hash alike).
- bool: true or false only (no 0/1).  str: a string (a number where text belongs is refused).
- Literal[...]: one of the listed choices.  X | None, Optional[X]: null, or an X.
- a dataclass: a mapping of its keys, checked recursively (null or a string is refused).
- tuple[X, ...], tuple[X, Y], list[X]: a list (or tuple), each element checked; dataclass elements are
  built from their mappings (`inference_scaling.methods[2]`).  dict[K, V]: a mapping, keys and values
  checked.  Any: anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Reading YAML


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats (what DVC, through ruamel.yaml, reads and writes)."""


_FLOAT_TAG = "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_FLOAT_TAG, re.compile(r"""^(?:
      [-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?   # 1.5  1.  .5  1.0e-5  .5E3
    | [-+]?[0-9][0-9_]*[eE][-+]?[0-9]+                                    # 1e-5  1e-05  5E-6  +1e3
    | [-+]?\.(?:inf|Inf|INF)
    | \.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """YAML text as Python objects, with YAML 1.2 floats (`1e-5` is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


# ---------------------------------------------------------------------------------------------
# Building and checking dataclasses


def _got(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return f"a list ({value!r})" if len(repr(value)) < 60 else "a list"
    return "null" if value is None else repr(value)


def _describe(hint: Any) -> str:
    """`hint` in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "anything"
    if hint is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__}'s keys"
    if origin in (tuple, list):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against the type annotation `hint` (rules in the module docstring), converted
    where a rule says so (int to float, list to tuple, mapping to dataclass); raises ValueError
    naming `where` and what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad(expected: str | None = None) -> ValueError:
        return ValueError(f"{where}: expected {expected or _describe(hint)}, got {_got(value)}")

    if hint is Any or isinstance(hint, TypeVar):
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_value(value, arg, where)
            except ValueError as e:
                errors.append(e)
        if len(errors) == 1 and not (isinstance(value, (int, float, str, bool)) or value is None):
            raise errors[0] from None  # a nested error (a key inside a mapping) says more
        raise bad()
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise bad()
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise bad()
        return from_dict(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad(f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})")
            items = [check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item = args[0] if args else Any
            items = [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return list(items) if (origin or hint) is list else tuple(items)
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise bad()
        k_hint, v_hint = args if args else (Any, Any)
        return {check_value(k, k_hint, f"{where} key {k!r}"): check_value(v, v_hint, f"{where}.{k}")
                for k, v in value.items()}
    return value  # a type these rules do not cover: the dataclass checks it


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "", base: T | None = None) -> T:
    """Build dataclass `cls` from a mapping: unknown keys raise, every value is checked against its
    field's type (module docstring), nested dataclasses recurse. `where` (default: the class name)
    starts every error message, e.g. `params.yaml:evaluate`.

    Keys not given keep their defaults, at every depth: a nested mapping overrides only the keys it
    names of the field's default instance (or of `base`'s), so `toy: {train: {seed: 1}}` changes the
    seed and keeps ToyBaseConfig's own training settings rather than TrainConfig's class defaults."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__}'s keys, got {_got(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        default = getattr(base, name) if base is not None else _default(fields[name])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(default) and isinstance(default, hints[name]):
            values[name] = from_dict(type(default), value, f"{where}.{name}", default)
        else:
            values[name] = check_value(value, hints[name], f"{where}.{name}")
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)  # type: ignore[type-var]
    except TypeError as e:  # a required key is missing
        raise ValueError(f"{where}: {e}") from None


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (its factory's product), or None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The parameters file as a dict (YAML 1.2 numbers: `1e-5` is a float); an empty file is {}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run from the repository root or pass --params")
    params = yaml_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {_got(params)}")
    return params


def load_section(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Read `params.yaml`'s `section` into `cls`, failing loudly on unknown or missing keys and on
    values of the wrong type (the message names the file and the key path)."""
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
