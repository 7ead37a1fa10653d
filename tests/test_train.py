"""The generic training loop: schedule, masking, accumulation, resume and DDP equivalence."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from reasoning.checkpoint import Dist, latest_checkpoint, load_checkpoint
from reasoning.files import read_json, read_jsonl
from reasoning.model import ModelConfig, Qwen3
from reasoning.train import TrainConfig, adamw, collate, epoch_batches, filter_examples, lr_at, train, validation_loss

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(64, 32, 2, 4, 2, 8, 64, rope_theta=10_000.0, max_position_embeddings=128)
CFG = TrainConfig(lr=3e-3, warmup_steps=2, batch_size=8, micro_batch_size=4, max_len=32, device="cpu",
                  dtype="float32", seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def make_model(seed: int = 0) -> Qwen3:
    model = Qwen3(SMALL)
    model.init_weights(seed)
    return model


def make_examples(n: int, seed: int = 0, masked_prefix: bool = False) -> list[tuple[list[int], list[int]]]:
    """Counting sequences (learnable) of varied length; optionally the first 3 tokens are prompt."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, step, length = rng.randrange(60), rng.randint(1, 3), rng.randint(5, 20)
        tokens = [(start + step * k) % 60 for k in range(length)]
        mask = [0] * 3 + [1] * (length - 3) if masked_prefix else [1] * length
        out.append((tokens, mask))
    return out


def weights(model: Qwen3) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}  # clones: tied weights unshared


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    worst = max((x - b[k]).abs().max().item() for k, x in a.items())
    assert worst <= atol, f"max weight difference {worst:g} > {atol:g}"


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=4)
    lrs = [lr_at(s, cfg, 20) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # strictly decaying after warmup
    mid = 4 + (19 - 4) / 2  # cosine midpoint: halfway between peak and floor
    assert lr_at(int(mid), cfg, 20) > 0.55 > lr_at(int(mid) + 1, cfg, 20)
    assert lr_at(0, TrainConfig(lr=2.0, warmup_steps=0), 10) == pytest.approx(2.0)


def test_bad_config_and_examples_fail_clearly():
    with pytest.raises(ValueError, match="min_lr_ratio"):
        TrainConfig(min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="loss-mask"):
        filter_examples([([1, 2, 3], [1, 1])], 10)
    kept, dropped = filter_examples([([1, 2, 3], [1, 1, 1]), (list(range(40)), [1] * 40), ([1, 2], [1, 0])], 32)
    assert (len(kept), dropped) == (1, 2)  # too long; no target after the first token
    with pytest.raises(ValueError, match="lower batch_size"):
        train(make_model(), make_examples(4), CFG, "/nonexistent-never-written")


def test_epoch_batches_cover_the_data_once_grouped_by_length():
    lengths = [random.Random(i).randint(2, 50) for i in range(103)]
    batches = epoch_batches(lengths, 10, seed=1, epoch=0, bucket_batches=5)
    flat = [i for b in batches for i in b]
    assert len(batches) == 10 and len(flat) == len(set(flat)) == 100  # last partial batch dropped
    assert batches == epoch_batches(lengths, 10, seed=1, epoch=0, bucket_batches=5)
    assert batches != epoch_batches(lengths, 10, seed=1, epoch=1, bucket_batches=5)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    unsorted = epoch_batches(lengths, 10, seed=1, epoch=0, bucket_batches=1)
    assert spread < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in unsorted) / 2


def test_loss_counts_only_unmasked_targets_and_padding_is_invisible():
    model = make_model()
    examples = make_examples(5, masked_prefix=True)
    batch = collate(examples, range(5), torch.device("cpu"))
    got = validation_loss(model, examples, micro_batch_size=2, device=torch.device("cpu"))
    losses = []
    for tokens, mask in examples:  # one unpadded sequence at a time, by hand
        logits = model(torch.tensor([tokens[:-1]]))[0]
        ce = F.cross_entropy(logits, torch.tensor(tokens[1:]), reduction="none")
        losses += [c for c, m in zip(ce.tolist(), mask[1:]) if m]
    assert batch[2].sum().item() == len(losses)
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_masked_tokens_do_not_change_the_update(tmp_path):
    """Trailing masked tokens are never targets, and causality hides them from earlier targets."""
    base = make_examples(16)
    noisy = []
    for i, (tokens, _) in enumerate(base):
        tail = [(7 * i + k) % 60 for k in range(3)]
        noisy.append((tokens + tail, [1] * len(tokens) + [0] * 3))
    a, b = make_model(), make_model()
    cfg = TrainConfig(lr=1e-2, batch_size=8, micro_batch_size=8, max_len=32, device="cpu", dtype="float32",
                      max_steps=2, bucket_batches=1)
    train(a, base, cfg, tmp_path / "a")
    train(b, noisy, cfg, tmp_path / "b")
    assert_close(weights(a), weights(b), atol=2e-5)  # Adam turns rounding noise into ~1e-6


def test_training_lowers_loss_and_reports_metrics(tmp_path):
    model, data, val = make_model(), make_examples(64), make_examples(16, seed=1)
    logged: list[tuple[int, dict]] = []
    before = validation_loss(model, val, 8, torch.device("cpu"))
    out = train(model, data, TrainConfig(**{**CFG.__dict__, "epochs": 4, "lr": 1e-2}), tmp_path, val,
                log=lambda s, m: logged.append((s, m)))
    steps = [m for _, m in logged if "loss" in m]
    assert out["steps"] == len(steps) == 32 and out["examples"] == 64 and out["dropped"] == 0
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "step_time", "epoch"} <= steps[0].keys()
    assert [s for s, m in logged if "val_loss" in m] == [8, 16, 24, 32]  # once per epoch
    assert out["val_loss"] < 0.6 * before
    assert sum(m["loss"] for m in steps[-4:]) < 0.6 * sum(m["loss"] for m in steps[:4])
    assert out["tokens_seen"] == 4 * sum(len(t) - 1 for t, _ in data)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    data = make_examples(32, masked_prefix=True)
    a, b = make_model(), make_model()
    cfg = TrainConfig(**{**CFG.__dict__, "max_steps": 3})
    train(a, data, cfg, tmp_path / "a")
    train(b, data, TrainConfig(**{**cfg.__dict__, "micro_batch_size": 1}), tmp_path / "b")
    assert_close(weights(a), weights(b), atol=2e-5)  # Adam turns rounding noise into ~1e-6


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    data, val = make_examples(48, masked_prefix=True), make_examples(8, seed=3)
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2, "weight_decay": 0.1, "checkpoint_every": 2})
    straight = make_model()
    full = train(straight, data, cfg, tmp_path / "straight", val)

    def kill_at_5(step: int, metrics: dict) -> None:
        if step == 5 and "loss" in metrics:
            raise Killed

    with pytest.raises(Killed):
        train(make_model(), data, cfg, tmp_path / "resumed", val, log=kill_at_5)
    assert latest_checkpoint(tmp_path / "resumed").name == "step_00000004"
    resumed = make_model(seed=99)  # whatever the caller starts from, the checkpoint wins
    out = train(resumed, data, cfg, tmp_path / "resumed", val)
    assert out["resumed_from"] == 4 and out["steps"] == full["steps"] == 12
    assert_close(weights(straight), weights(resumed))  # bit-identical
    assert out["val_loss"] == full["val_loss"] and out["tokens_seen"] == full["tokens_seen"]
    # the final checkpoint holds the trained weights and optimizer state, and a finished run is not redone
    fresh = make_model(seed=7)
    opt = adamw(fresh, cfg)
    load_checkpoint(latest_checkpoint(tmp_path / "resumed"), fresh, opt, Dist(torch.device("cpu")))
    assert_close(weights(fresh), weights(straight))
    assert all(s["step"].item() == 12 for s in opt.state.values()) and len(opt.state) == len(list(fresh.parameters()))
    again = train(make_model(seed=5), data, cfg, tmp_path / "resumed", val)
    assert again["resumed_from"] == 12
    with pytest.raises(ValueError, match="different lr, weight_decay;"):
        train(make_model(), data, TrainConfig(**{**cfg.__dict__, "lr": 1.0, "weight_decay": 0.0}),
              tmp_path / "resumed")
    with pytest.raises(ValueError, match="different training data;"):
        train(make_model(), data[:-8], cfg, tmp_path / "resumed")
    wider = Qwen3(ModelConfig(**{**SMALL.__dict__, "intermediate_size": 96}))
    with pytest.raises(ValueError, match="different model architecture;"):
        train(wider, data, cfg, tmp_path / "resumed")


DIST_SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
import torch.distributed as dist
from safetensors.torch import save_file
import reasoning.train as core
from tests.test_train import DIST_CFG, make_examples, make_model, weights
from reasoning.train import TrainConfig, train
dist.init_process_group("gloo")  # one group for the three runs (train() leaves a group it did not open)
data, val, out = make_examples(32, masked_prefix=True), make_examples(5, seed=3), sys.argv[1]
for name, extra in {{"ddp": {{}}, "fsdp": {{"strategy": "fsdp", "gradient_checkpointing": True}}}}.items():
    model = make_model()
    result = train(model, data, TrainConfig(**{{**DIST_CFG.__dict__, **extra}}), f"{{out}}/{{name}}", val)
    if os.environ["RANK"] == "0":
        save_file(weights(model), f"{{out}}/{{name}}.safetensors")
        open(f"{{out}}/{{name}}.json", "w").write(json.dumps(result))

class Killed(Exception):
    pass

def lr_until_step_3(step, *args):  # every rank dies in step 3, after step 2's checkpoint
    if step == 2:
        raise Killed
    return real_lr(step, *args)

real_lr, core.lr_at = core.lr_at, lr_until_step_3
try:
    train(make_model(), data, TrainConfig(**{{**DIST_CFG.__dict__, "strategy": "fsdp"}}), f"{{out}}/killed", val)
except Killed:
    pass
dist.destroy_process_group()
"""
# 5 validation examples: the ranks get 2 and 1 micro-batches, so the idle one is exercised.
DIST_CFG = TrainConfig(**{**CFG.__dict__, "max_steps": 4, "micro_batch_size": 2, "checkpoint_every": 2})


@pytest.mark.slow
def test_two_processes_ddp_and_fsdp_match_one_and_resume_on_one(tmp_path):
    """DDP and FSDP on 2 processes end where 1 process does; an FSDP run killed on 2 processes
    resumes on 1 (FSDP over one rank, or DDP) and ends there too."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(DIST_SCRIPT.format(root=str(ROOT))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path)], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    data, val = make_examples(32, masked_prefix=True), make_examples(5, seed=3)
    single = make_model()
    out = train(single, data, DIST_CFG, tmp_path / "single", val)
    for name in ("ddp", "fsdp"):
        assert_close(load_file(str(tmp_path / f"{name}.safetensors")), weights(single), atol=1e-5)
        assert json.loads((tmp_path / f"{name}.json").read_text())["val_loss"] == pytest.approx(out["val_loss"],
                                                                                               rel=1e-5)
    assert not math.isclose(out["val_loss"], validation_loss(make_model(), val, 4, torch.device("cpu")),
                            rel_tol=1e-3)

    killed = latest_checkpoint(tmp_path / "killed")
    assert killed.name == "step_00000002" and read_json(killed / "state.json")["world_size"] == 2
    assert len(list((killed / "state").glob("*.safetensors"))) == 2  # one file of slices per rank
    for strategy in ("fsdp", "ddp"):
        shutil.copytree(tmp_path / "killed", tmp_path / f"resumed_{strategy}")
        resumed = make_model(seed=99)
        again = train(resumed, data, replace(DIST_CFG, strategy=strategy), tmp_path / f"resumed_{strategy}", val)
        assert again["resumed_from"] == 2 and again["val_loss"] == pytest.approx(out["val_loss"], rel=1e-5)
        assert_close(weights(resumed), weights(single), atol=1e-5)
        assert [r["step"] for r in read_jsonl(tmp_path / f"resumed_{strategy}" / "metrics.jsonl")
                if "loss" in r] == [1, 2, 3, 4]


def test_fsdp_on_one_process_trains_as_ddp_does(tmp_path):
    """FSDP over a one-process group (with CPU offload: what fits a big model on one GPU) makes
    the same updates as plain training, and a run resumes under either strategy."""
    data, val = make_examples(32, masked_prefix=True), make_examples(5, seed=3)
    plain, sharded = make_model(), make_model()
    a = train(plain, data, DIST_CFG, tmp_path / "plain", val)
    b = train(sharded, data, replace(DIST_CFG, strategy="fsdp", cpu_offload=True), tmp_path / "sharded", val)
    assert_close(weights(sharded), weights(plain)) and a["val_loss"] == b["val_loss"]
    assert type(sharded) is Qwen3 and sharded.training is False  # the caller's model, not a sharded twin
    # a run killed in step 3 resumes from step 2's checkpoint under the other strategy
    def die_in_step_3(step: int, metrics: dict) -> None:
        if step == 3 and "loss" in metrics:
            raise Killed

    for first, then in (("ddp", "fsdp"), ("fsdp", "ddp")):
        run = tmp_path / f"{first}_then_{then}"
        with pytest.raises(Killed):
            train(make_model(), data, replace(DIST_CFG, strategy=first), run, val, log=die_in_step_3)
        resumed = make_model(seed=99)
        assert train(resumed, data, replace(DIST_CFG, strategy=then), run, val)["resumed_from"] == 2
        assert_close(weights(resumed), weights(plain))
    with pytest.raises(ValueError, match="cpu_offload needs strategy: fsdp"):
        TrainConfig(cpu_offload=True)
    with pytest.raises(ValueError, match=r"strategy 'zero3' is unknown; use one of \['ddp', 'fsdp'\]"):
        TrainConfig(strategy="zero3")


@pytest.mark.parametrize("loop", ["train", "grpo"])
def test_float16_is_refused_by_both_loops(tmp_path, loop):
    """Neither loop scales the loss, so fp16 gradients would underflow: both refuse it up front."""
    from reasoning.grpo import GRPOConfig, train_grpo

    with pytest.raises(ValueError, match="float16 needs loss scaling.*use bfloat16 or float32"):
        if loop == "train":
            train(make_model(), make_examples(4), TrainConfig(**{**CFG.__dict__, "dtype": "float16"}), tmp_path)
        else:
            train_grpo(make_model(), None, None, [], GRPOConfig(device="cpu", dtype="float16"), tmp_path)


def test_a_nan_weight_stops_training_before_the_update_and_is_never_saved(tmp_path):
    """SFT from a model holding one NaN weight: an error naming step 1 and the loss, weights and
    out_dir untouched; save_model refuses the model too."""
    from reasoning.train import NonFiniteError
    from reasoning.weights import save_model
    model = make_model()
    with torch.no_grad():
        model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    before = weights(model)
    # which of the two shows it first depends on the inputs: CPU SDPA can swallow a NaN query in
    # the forward, never in the backward
    with pytest.raises(NonFiniteError, match=r"step 1: the (loss|gradient norm) is nan"):
        train(model, make_examples(32), CFG, tmp_path / "run")
    after = weights(model)
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)
    assert latest_checkpoint(tmp_path / "run") is None
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.q_proj\.weight"):
        save_model(model, tmp_path / "out")


def test_an_infinite_gradient_later_stops_training_at_its_step(tmp_path, monkeypatch):
    import reasoning.train as train_module
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def blow_up_at_step_3(params, max_norm):
        calls.append(1)
        norm = real(params, max_norm)
        return torch.tensor(float("inf")) if len(calls) == 3 else norm
    monkeypatch.setattr(train_module.torch.nn.utils, "clip_grad_norm_", blow_up_at_step_3)
    model = make_model()
    with pytest.raises(train_module.NonFiniteError, match=r"step 3: the gradient norm is inf"):
        train(model, make_examples(64), CFG, tmp_path / "run")
    assert len(calls) == 3
