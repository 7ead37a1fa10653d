"""The one next-token training loop: toy pretraining and SFT both run through `train`.

Design choices:
- An example is (tokens, loss_mask): loss_mask[i] = 1 makes token i a target (predicted from
  tokens[:i]); pretraining masks nothing, SFT masks the prompt. Examples longer than `max_len`
  or without a target are dropped (counted), never truncated.
- The loss is the mean cross-entropy over all targets of a global batch, however the batch is
  split: each micro-batch sums its token losses and divides by the global batch's target count
  (known before the forward), so gradient accumulation and DDP make the same update as one big
  batch would.
- Batching by length: each epoch shuffles with (seed, epoch), sorts spans of `bucket_batches`
  global batches by length, cuts them into batches and shuffles the batch order. Micro-batches
  are right-padded to their longest row; causal attention keeps padding invisible to real
  tokens and the mask keeps it out of the loss. The order is a pure function of (seed, epoch),
  so the data position is the step.
- The learning rate (linear warmup, cosine decay to `min_lr_ratio * lr`) is a pure function of
  the step, so the schedule's state is the step.
- Checkpoints hold the full state: the model in our HF format (weights.save_model, fp32 master
  weights), the AdamW state flattened into safetensors, each rank's torch RNG as uint8 tensors,
  and JSON for the rest. A checkpoint directory is completed under a temporary name, renamed,
  and only then named by the atomically written `latest` pointer, so a kill at any moment leaves
  the previous checkpoint usable. Nothing is unpickled on resume.
- Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP (gloo on CPU, NCCL on CUDA) and
  rank r takes slice r of every global batch; rank 0 calls `log` and writes the shared files.
- fp32 master weights; bf16 autocast when `dtype` resolves to bfloat16 (CUDA by default).
  fp16 would need loss scaling, so it is refused.
- Metrics go to a `log(step, metrics)` callback: the package never imports a tracker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import resolve_device
from .io import atomic_write_text, read_json, write_json
from .model import Qwen3
from .weights import load_model, read_config, save_model

Example = tuple[Sequence[int], Sequence[int]]  # (tokens, loss_mask), equal lengths
LogFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 0
    max_steps: int = 0  # optimizer steps; 0: `epochs` passes over the data
    epochs: int = 1
    batch_size: int = 32  # global, in sequences per optimizer step
    micro_batch_size: int = 32  # sequences per forward/backward on one rank
    grad_clip: float = 1.0  # max global grad norm; 0: off
    weight_decay: float = 0.0  # on matrices only, not norms
    betas: tuple[float, float] = (0.9, 0.95)
    max_len: int = 1024  # longer examples are dropped
    seed: int = 0
    eval_every: int = 0  # validation every N steps (always at each epoch's end and at the end)
    checkpoint_every: int = 0  # checkpoint every N steps (always at each epoch's end and at the end)
    bucket_batches: int = 16  # batches sorted by length together; 1: no length grouping
    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        problems = [
            msg for bad, msg in [
                (self.lr <= 0, "lr must be > 0"),
                (not 0 <= self.min_lr_ratio <= 1, "min_lr_ratio must lie in [0, 1]"),
                (self.warmup_steps < 0 or self.max_steps < 0, "warmup_steps and max_steps must be >= 0"),
                (self.epochs < 1, "epochs must be >= 1"),
                (self.batch_size < 1 or self.micro_batch_size < 1, "batch sizes must be >= 1"),
                (self.grad_clip < 0 or self.weight_decay < 0, "grad_clip and weight_decay must be >= 0"),
                (self.max_len < 2, "max_len must be >= 2 (one input and one target token)"),
                (self.bucket_batches < 1, "bucket_batches must be >= 1"),
                (self.eval_every < 0 or self.checkpoint_every < 0, "eval_every and checkpoint_every must be >= 0"),
            ] if bad
        ]
        if problems:
            raise ValueError(f"invalid TrainConfig: {'; '.join(problems)}")


# Fields that may change between a run and its resumption: they do not change the trajectory.
RUN_ONLY_FIELDS = ("eval_every", "checkpoint_every", "device", "micro_batch_size", "gradient_checkpointing")
LATEST = "latest"


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps - 1))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def filter_examples(examples: Sequence[Example], max_len: int) -> tuple[list[Example], int]:
    """(kept examples, number dropped): too long, shorter than 2 tokens, or without any target."""
    kept = []
    for i, (tokens, mask) in enumerate(examples):
        if len(tokens) != len(mask):
            raise ValueError(f"example {i} has {len(tokens)} tokens but {len(mask)} loss-mask entries; "
                             "give one mask entry per token")
        if 2 <= len(tokens) <= max_len and any(mask[1:]):
            kept.append((list(tokens), list(mask)))
    return kept, len(examples) - len(kept)


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  bucket_batches: int = 16) -> list[list[int]]:
    """Example indices of each global batch of `epoch`; the last incomplete batch is dropped."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order = order[: len(order) // batch_size * batch_size]
    span = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[Example], idx: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, targets, mask), each (b, T): right-padded, shifted by one, padding masked out."""
    T = max(len(examples[i][0]) for i in idx) - 1
    inputs = torch.zeros(len(idx), T, dtype=torch.long)
    targets = torch.zeros(len(idx), T, dtype=torch.long)
    mask = torch.zeros(len(idx), T)
    for r, i in enumerate(idx):
        tokens, loss_mask = examples[i]
        n = len(tokens) - 1
        inputs[r, :n] = torch.tensor(tokens[:-1])
        targets[r, :n] = torch.tensor(tokens[1:])
        mask[r, :n] = torch.tensor(loss_mask[1:], dtype=torch.float32)
    return inputs.to(device), targets.to(device), mask.to(device)


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 of the tokens and masks, to refuse resuming on different data."""
    h = hashlib.sha256()
    for tokens, mask in examples:
        h.update(array("q", [len(tokens)]).tobytes() + array("q", tokens).tobytes() + array("q", mask).tobytes())
    return h.hexdigest()


class _Dist:
    """Rank, world size and collectives; a single process needs no process group."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.owns_group = 0, False
        if self.world > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.owns_group = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def _micro_batches(examples: Sequence[Example], batch: list[int], rank: int, world: int,
                   micro: int) -> list[list[int]]:
    per_rank = len(batch) // world
    mine = sorted(batch[rank * per_rank:(rank + 1) * per_rank], key=lambda i: len(examples[i][0]))
    return [mine[j:j + micro] for j in range(0, len(mine), micro)]


def _token_loss_sum(model: torch.nn.Module, batch: tuple[Tensor, Tensor, Tensor], autocast: Any) -> Tensor:
    inputs, targets, mask = batch
    with autocast:
        logits = model(inputs)  # (b, T, V) fp32
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (ce * mask.flatten()).sum()


@torch.no_grad()
def validation_loss(model: Qwen3, examples: Sequence[Example], micro_batch_size: int, device: torch.device,
                    autocast: Any = nullcontext(), comm: _Dist | None = None) -> float:
    """Mean target cross-entropy over `examples` (sharded across ranks when distributed)."""
    rank, world = (comm.rank, comm.world) if comm else (0, 1)
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))[rank::world]
    total = count = 0.0
    for j in range(0, len(order), micro_batch_size):
        batch = collate(examples, order[j:j + micro_batch_size], device)
        total += _token_loss_sum(model, batch, autocast).item()
        count += batch[2].sum().item()
    if comm:
        total, count = comm.sum([total, count], device)
    model.train(was_training)
    return total / max(count, 1.0)


def _optimizer(model: Qwen3, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _trajectory(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share, as they read back from JSON (tuples become lists)."""
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_FIELDS}))


def _save_checkpoint(out_dir: Path, model: Qwen3, opt: torch.optim.Optimizer, state: dict[str, Any],
                     comm: _Dist) -> None:
    name = f"step_{state['step']:08d}"
    tmp = out_dir / f".tmp-{name}"
    if comm.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    comm.barrier()
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and model.device.type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(model.device)
    save_file(rng, str(tmp / f"rng_rank{comm.rank}.safetensors"))
    write_json(tmp / f"python_rng_rank{comm.rank}.json", random.getstate())
    comm.barrier()
    if comm.rank == 0:
        save_model(model, tmp / "model")
        sd = opt.state_dict()
        tensors, scalars = {}, {}
        for pid, entries in sd["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{pid}.{key}"] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {**state, "param_groups": sd["param_groups"], "optimizer_scalars": scalars,
                                        "world_size": comm.world})
        final = out_dir / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(out_dir / LATEST, name + "\n")
        for old in out_dir.iterdir():  # older checkpoints and leftovers of killed saves
            if old.is_dir() and old.name != name and (old.name.startswith("step_") or old.name.startswith(".tmp-")):
                shutil.rmtree(old, ignore_errors=True)
    comm.barrier()


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The directory named by `out_dir/latest`, or None when no checkpoint was completed."""
    pointer = Path(out_dir) / LATEST
    if not pointer.exists():
        return None
    ckpt = Path(out_dir) / pointer.read_text().strip()
    if not (ckpt / "state.json").exists():
        raise ValueError(f"{pointer} names {ckpt}, which is missing or incomplete; delete {out_dir} to start over")
    return ckpt


def _check_resumable(ckpt: Path, cfg: TrainConfig, data_sha: str, model: Qwen3) -> None:
    saved = read_json(ckpt / "state.json")
    changed = [k for k, v in _trajectory(cfg).items() if saved["trajectory"].get(k) != v]
    if model.config != read_config(ckpt / "model"):
        changed.append("model architecture")
    if saved["data_sha256"] != data_sha:
        changed.append("training data")
    if changed:
        raise ValueError(f"{ckpt} was written by a run with a different {', '.join(changed)}; resume with "
                         f"the same ones, or delete {ckpt.parent} to start over")


def _load_checkpoint(ckpt: Path, model: Qwen3, opt: torch.optim.Optimizer, comm: _Dist) -> dict[str, Any]:
    state = read_json(ckpt / "state.json")
    model.load_state_dict(load_model(ckpt / "model", torch.float32, model.device).state_dict())
    per_param: dict[int, dict[str, Any]] = defaultdict(dict)
    for key, value in load_file(str(ckpt / "optimizer.safetensors")).items():
        pid, name = key.split(".", 1)
        per_param[int(pid)][name] = value
    for key, value in state["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        per_param[int(pid)][name] = value
    groups = [{**g, "betas": tuple(g["betas"])} for g in state["param_groups"]]
    opt.load_state_dict({"state": dict(per_param), "param_groups": groups})
    # A run resumed on a different number of ranks reuses rank 0's RNG state for new ranks.
    rank = comm.rank if (ckpt / f"rng_rank{comm.rank}.safetensors").exists() else 0
    rng = load_file(str(ckpt / f"rng_rank{rank}.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and model.device.type == "cuda":
        torch.cuda.set_rng_state(rng["torch_cuda"], model.device)
    version, internal, gauss = read_json(ckpt / f"python_rng_rank{rank}.json")
    random.setstate((version, tuple(internal), gauss))
    return state


def train(model: Qwen3, train_examples: Sequence[Example], cfg: TrainConfig, out_dir: str | Path,
          val_examples: Sequence[Example] | None = None, log: LogFn | None = None) -> dict[str, Any]:
    """Train `model` in place on next-token prediction; resume from `out_dir` if it holds a checkpoint.

    Returns {steps, train_loss, val_loss, examples, dropped, tokens_seen, wall_s, resumed_from}.
    `log(step, metrics)` (rank 0 only) gets loss, lr, grad_norm, tokens_per_s, step_time and
    epoch after every step, and val_loss after each validation.
    """
    t_start = time.perf_counter()
    with training_setup(cfg.device, cfg.dtype, "this loop") as (device, dtype, comm):
        return _train(model, train_examples, cfg, Path(out_dir), val_examples, log, device, dtype, comm, t_start)


@contextmanager
def training_setup(device_name: str, dtype_name: str,
                   loop: str) -> Iterator[tuple[torch.device, torch.dtype, _Dist]]:
    """(device, dtype, process group) for a training loop; under torchrun each process takes its
    LOCAL_RANK's GPU. The process group this opens is closed on exit. Shared by SFT/pretraining and GRPO."""
    device, dtype = resolve_device(device_name, dtype_name)
    if dtype == torch.float16:
        raise ValueError(f"dtype float16 needs loss scaling, which {loop} does not do; use bfloat16 or float32")
    comm = _Dist(device)
    try:
        if device.type == "cuda" and comm.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        yield device, dtype, comm
    finally:
        comm.close()


def _train(model: Qwen3, train_examples: Sequence[Example], cfg: TrainConfig, out_dir: Path,
           val_examples: Sequence[Example] | None, log: LogFn | None, device: torch.device,
           dtype: torch.dtype, comm: _Dist, t_start: float) -> dict[str, Any]:
    examples, dropped = filter_examples(train_examples, cfg.max_len)
    val, _ = filter_examples(val_examples or [], cfg.max_len)
    if cfg.batch_size % comm.world:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the number of processes "
                         f"({comm.world}) so that every rank gets the same share of each batch")
    steps_per_epoch = len(examples) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(examples)} usable examples ({dropped} dropped by max_len {cfg.max_len} or for "
                         f"having no target) do not fill one batch of {cfg.batch_size}; lower batch_size")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    lengths = [len(t) for t, _ in examples]
    data_sha = fingerprint(examples)

    model.to(device=device, dtype=torch.float32)  # fp32 master weights
    model.gradient_checkpointing = cfg.gradient_checkpointing
    opt = _optimizer(model, cfg)
    torch.manual_seed(cfg.seed + comm.rank)
    random.seed(cfg.seed + comm.rank)
    state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "train_loss": None, "val_loss": None}
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None:
        _check_resumable(ckpt, cfg, data_sha, model)
        saved = _load_checkpoint(ckpt, model, opt, comm)
        state = {k: saved[k] for k in state}
    resumed_from = state["step"]

    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None) if comm.world > 1 else None)
    net = ddp or model
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def checkpoint() -> None:
        _save_checkpoint(out_dir, model, opt, {
            **state, "epoch": state["step"] // steps_per_epoch, "batch_in_epoch": state["step"] % steps_per_epoch,
            "total_steps": total_steps, "trajectory": _trajectory(cfg), "data_sha256": data_sha,
        }, comm)

    batches, batches_epoch = [], -1
    while state["step"] < total_steps:
        step = state["step"]
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != batches_epoch:
            batches, batches_epoch = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.bucket_batches), epoch
        batch = batches[position]
        t0 = time.perf_counter()
        n_targets = sum(sum(examples[i][1][1:]) for i in batch)
        n_tokens = sum(lengths[i] - 1 for i in batch)
        micro = _micro_batches(examples, batch, comm.rank, comm.world, cfg.micro_batch_size)
        loss_sum = 0.0
        for k, idx in enumerate(micro):
            # Gradients are all-reduced (averaged over ranks) only on the last micro-batch.
            sync = nullcontext() if ddp is None or k == len(micro) - 1 else ddp.no_sync()
            with sync:
                part = _token_loss_sum(net, collate(examples, idx, device), autocast)
                (part * comm.world / n_targets).backward()
            loss_sum += part.item()
        [loss_sum] = comm.sum([loss_sum], device)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf")).item()
        lr = lr_at(step, cfg, total_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        state.update(step=step + 1, tokens_seen=state["tokens_seen"] + n_tokens, train_loss=loss_sum / n_targets)
        if log and comm.rank == 0:
            log(step + 1, {"loss": state["train_loss"], "lr": lr, "grad_norm": grad_norm,
                           "tokens_per_s": n_tokens / dt, "step_time": dt, "epoch": epoch})
        end = state["step"] == total_steps
        epoch_end = state["step"] % steps_per_epoch == 0
        if val and (end or epoch_end or (cfg.eval_every and state["step"] % cfg.eval_every == 0)):
            state["val_loss"] = validation_loss(model, val, cfg.micro_batch_size, device, autocast, comm)
            if log and comm.rank == 0:
                log(state["step"], {"val_loss": state["val_loss"]})
        if end or epoch_end or (cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0):
            checkpoint()
    model.eval()
    return {"steps": total_steps, "train_loss": state["train_loss"], "val_loss": state["val_loss"],
            "examples": len(examples), "dropped": dropped, "tokens_seen": state["tokens_seen"],
            "wall_s": time.perf_counter() - t_start, "resumed_from": resumed_from}
