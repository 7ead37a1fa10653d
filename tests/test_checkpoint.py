"""Run machinery shared by both training loops: resume keys and the per-step log."""

from __future__ import annotations

import pytest
import torch

from reasoning.checkpoint import Dist, StepLog, check_resumable, load_checkpoint, run_settings
from reasoning.config import run_dir
from reasoning.files import read_jsonl, write_json, write_jsonl
from reasoning.model import PRESETS, Qwen3
from reasoning.train import TrainConfig


def test_run_settings_leave_out_run_only_fields():
    a, b = TrainConfig(micro_batch_size=4, eval_every=5), TrainConfig(micro_batch_size=32)
    assert run_settings(a) == run_settings(b) and "micro_batch_size" not in run_settings(a)
    assert run_settings(TrainConfig(lr=2e-3)) != run_settings(b)
    assert run_settings(b)["betas"] == [0.9, 0.95]  # as it reads back from a checkpoint's JSON
    assert run_dir("runs/x", {"k": 1}) != run_dir("runs/x", {"k": 2})


def test_check_resumable_names_what_changed(tmp_path):
    key = {**run_settings(TrainConfig()), "training data": "d1", "model architecture": "a1"}
    write_json(tmp_path / "step_00000002" / "state.json", {"step": 2, "run_key": key})
    check_resumable(tmp_path / "step_00000002", key)  # the same run: fine
    changed = {**key, "lr": 5e-4, "weight_decay": 0.1, "training data": "d2"}
    with pytest.raises(ValueError, match="different lr, weight_decay, training data; resume with the same"):
        check_resumable(tmp_path / "step_00000002", changed)


def test_step_log_is_cut_back_to_the_resumed_checkpoint(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    seen = []
    with StepLog(tmp_path, 3, rank=0, log=lambda step, m: seen.append(step)) as log:
        log(4, {"loss": 0.1})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4] and seen == [4]
    with StepLog(tmp_path, 0, rank=1) as log:  # other ranks neither truncate nor write
        log(1, {"loss": 0.2})
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 4
    with StepLog(tmp_path, 0, rank=0):  # a fresh start (no checkpoint): all of it is redone
        pass
    assert read_jsonl(tmp_path / "metrics.jsonl") == []


def test_a_checkpoint_of_the_former_format_is_refused_with_the_fix(tmp_path):
    """Before DCP a checkpoint held model/ and optimizer.safetensors: resuming one names the fix."""
    ckpt = tmp_path / "run" / "step_00000002"
    write_json(ckpt / "state.json", {"step": 2, "run_key": {}, "param_groups": []})
    (ckpt / "model").mkdir()
    model = Qwen3(PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"holds no state/ directory.*delete .*run to start over"):
        load_checkpoint(ckpt, model, torch.optim.AdamW(model.parameters()), Dist(torch.device("cpu")))
