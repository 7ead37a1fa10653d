"""Device and dtype names from the params, resolved to torch objects: the one dtype table.

Design: params and command lines name dtypes as strings (`float32`, `bf16`, ...); `DTYPES` is the
only table that maps them, so every stage, the generate CLI and the training loops accept the
same names and give the same error for an unknown one.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def default_device() -> str:
    """What `device: auto` means, as the book's `get_device()` chooses: CUDA, then an Apple-silicon
    GPU (MPS), then the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """(torch.device, torch.dtype) from params strings. device `auto`: `default_device()`; dtype `auto`:
    bfloat16 on CUDA, float32 on MPS and CPU. ValueError naming the fix for a device this machine
    lacks or a dtype name not in DTYPES.

    fp32 is the CPU default on purpose: bf16 matrix-matrix products are several times slower
    than fp32 on CPUs without AMX (measured), and training needs fp32 master weights there anyway.
    On MPS, bf16 needs macOS 14 or later and float16 training needs loss scaling, so fp32 is the
    default that works everywhere (set dtype: bfloat16 to try it). MPS has no float64 tensors:
    the code paths that run on the device never ask for them.
    """
    if device == "auto":
        device = default_device()
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; set device: cpu (or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but this machine has no Apple-silicon GPU available to torch "
                         "(torch.backends.mps.is_available() is False); set device: cpu (or auto)")
    if dtype == "auto":
        dtype = "bfloat16" if kind == "cuda" else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown; use one of auto, {', '.join(sorted(DTYPES))}")
    return torch.device(device), DTYPES[dtype]


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun (LOCAL_RANK set), CUDA means this process's own GPU, cuda:LOCAL_RANK; any other
    device (and an explicit cuda:N) is kept."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def checkpoint_dtype(ckpt: Path, device: str) -> torch.dtype:
    """`--dtype auto`: bfloat16 on CUDA; elsewhere the dtype the checkpoint's config.json names
    (`torch_dtype`, or `dtype` as transformers >= 5 writes it), float32 when it names none we know."""
    if device.startswith("cuda"):
        return torch.bfloat16
    hf = json.loads((ckpt / "config.json").read_text())
    name = str(hf.get("torch_dtype") or hf.get("dtype") or "float32").removeprefix("torch.")
    return DTYPES.get(name, torch.float32)


def peak_memory_bytes(device: str | torch.device | None = None) -> int:
    """The most memory this process has held, in bytes: CUDA's max allocated on a GPU (since the
    process started or the last `torch.cuda.reset_peak_memory_stats`), else the peak resident set
    size (Linux `ru_maxrss`, reported in KiB). `device=None`: the GPU when this process has used
    CUDA, else the host."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
