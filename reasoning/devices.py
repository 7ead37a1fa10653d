"""Device and dtype names from the params, resolved to torch objects: the one dtype table.

Design: params and command lines name dtypes as strings (`float32`, `bf16`, ...); `DTYPES` is the
only table that maps them, so every stage, the generate CLI and the training loops accept the
same names and give the same error for an unknown one.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """(torch.device, torch.dtype) from params strings; `auto` = CUDA + bf16 when present, else CPU + fp32.

    fp32 is the CPU default on purpose: bf16 matrix-matrix products are several times slower
    than fp32 on CPUs without AMX (measured), and training needs fp32 master weights there anyway.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; set device: cpu (or auto)")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown; use one of auto, {', '.join(sorted(DTYPES))}")
    return torch.device(device), DTYPES[dtype]
