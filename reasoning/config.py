"""Typed configuration: the model architecture, its named presets, and `params.yaml` sections.

Design: every concern has one frozen dataclass, built from its `params.yaml` section with
`from_dict`, so an unknown or misspelt key fails loudly with the list of allowed keys instead
of being ignored. Model fields use Hugging Face's Qwen3 `config.json` names, so a checkpoint's
config round-trips without a translation table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 40_960

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention"
            )

    @property
    def n_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        attn = h * d * (self.num_attention_heads * 2 + self.num_key_value_heads * 2) + 2 * d
        block = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * block + h + head

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` that `transformers.Qwen3ForCausalLM` loads."""
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **dataclasses.asdict(self),
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
            "use_sliding_window": False,
            "initializer_range": 0.02,
        }

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Read the fields we model from a Hugging Face `config.json`; refuse other architectures."""
        if hf.get("model_type") not in (None, "qwen3"):
            raise ValueError(f"model_type {hf.get('model_type')!r} is not supported: this engine implements Qwen3")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names}
        # transformers >= 5 writes rope settings as `rope_parameters`; older files use `rope_theta`
        # and `rope_scaling`. Only plain RoPE is implemented: refuse scaled variants loudly.
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"RoPE scaling {rope} is not supported by this engine")
        if "rope_theta" in rope:
            kwargs.setdefault("rope_theta", rope["rope_theta"])
        if "head_dim" not in kwargs:  # older configs leave it implicit
            kwargs["head_dim"] = hf["hidden_size"] // hf["num_attention_heads"]
        missing = names - kwargs.keys() - {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        if missing:
            raise ValueError(f"config.json lacks {sorted(missing)}; is this a Qwen3 checkpoint?")
        return cls(**kwargs)


# Named presets (the released Qwen3 dense shapes) and small shapes for tests and the toy world.
PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": ModelConfig(151_936, 1024, 28, 16, 8, 128, 3072),
    "qwen3-1.7b": ModelConfig(151_936, 2048, 28, 16, 8, 128, 6144),
    "qwen3-4b": ModelConfig(151_936, 2560, 36, 32, 8, 128, 9728),
    "qwen3-8b": ModelConfig(151_936, 4096, 36, 32, 8, 128, 12_288, tie_word_embeddings=False),
    "tiny": ModelConfig(320, 64, 2, 4, 2, 16, 128, rope_theta=10_000.0, max_position_embeddings=512),
    "tiny-untied": ModelConfig(
        320, 64, 2, 4, 2, 16, 128, rope_theta=10_000.0, tie_word_embeddings=False, max_position_embeddings=512
    ),
}


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


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(torch.device, torch.dtype) from params strings; `auto` = CUDA + bf16 when present, else CPU + fp32.

    fp32 is the CPU default on purpose: bf16 matrix-matrix products are several times slower
    than fp32 on CPUs without AMX (measured), and training needs fp32 master weights there anyway.
    """
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; set device: cpu (or auto)")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is unknown; use one of auto, {', '.join(sorted(names))}")
    return torch.device(device), names[dtype]
