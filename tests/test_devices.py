"""Device and dtype choice: `auto` picks CUDA, then Apple-silicon MPS, then the CPU (CI has neither GPU:
availability is mocked), and a device the machine lacks is refused with the fix."""

from __future__ import annotations

import pytest
import torch

from reasoning.devices import default_device, resolve_device


@pytest.fixture
def machine(monkeypatch):
    def have(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return have


@pytest.mark.parametrize("cuda, mps, device, dtype", [
    (True, True, "cuda", torch.bfloat16),  # CUDA first, even beside MPS
    (False, True, "mps", torch.float32),   # an Apple-silicon Mac
    (False, False, "cpu", torch.float32),
])
def test_auto_picks_cuda_then_mps_then_cpu(machine, cuda, mps, device, dtype):
    machine(cuda, mps)
    assert default_device() == device
    assert resolve_device("auto", "auto") == (torch.device(device), dtype)


def test_an_explicit_dtype_is_kept_on_mps(machine):
    machine(False, True)
    assert resolve_device("mps", "bf16") == (torch.device("mps"), torch.bfloat16)


@pytest.mark.parametrize("device, message", [
    ("cuda", "CUDA is not available; set device: cpu"),
    ("mps", "no Apple-silicon GPU"),
    ("tpu", "unknown; use auto, cpu, cuda, cuda:N or mps"),
])
def test_a_device_this_machine_lacks_is_refused_with_the_fix(machine, device, message):
    machine(False, False)
    with pytest.raises(ValueError, match=message):
        resolve_device(device)


def test_an_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="float64.*unknown; use one of auto, bf16, bfloat16"):
        resolve_device("cpu", "float64")  # MPS has no float64: it is not offered anywhere
