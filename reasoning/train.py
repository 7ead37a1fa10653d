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
- Resuming is reasoning.checkpoint's: full-state checkpoints, the run key (settings minus
  `TrainConfig.RUN_ONLY`, the data fingerprint, the architecture) checked on resume, the
  per-step log (out_dir/metrics.jsonl) cut back to the checkpoint.
- Under torchrun (WORLD_SIZE > 1) rank r takes slice r of every global batch, and the model is
  placed per `strategy` (reasoning.parallel: DDP replicas, or FSDP2 shards with optional CPU
  offload; gloo on CPU, NCCL on CUDA); rank 0 calls `log` and writes the shared files. The
  strategy changes memory, not the trajectory (up to float rounding), so it may change on resume.
- fp32 master weights; bf16 autocast when `dtype` resolves to bfloat16 (CUDA by default), and
  under fsdp bf16 all-gathers with fp32 gradient reduction. fp16 would need loss scaling, so it
  is refused.
- Metrics go to out_dir/metrics.jsonl and a `log(step, metrics)` callback: the package never
  imports a tracker.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from array import array
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .checkpoint import Dist, StepLog, resume, run_settings, save_checkpoint, training_setup
from .config import stable_hash
from .model import Qwen3
from .parallel import Placed, place, strategy_problems

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
    strategy: str = "ddp"  # ddp | fsdp: how the model is spread over processes (reasoning.parallel)
    cpu_offload: bool = False  # fsdp: shards, gradients and AdamW state in CPU memory

    # Fields that may change between a run and its resumption: they do not change the trajectory.
    RUN_ONLY: ClassVar[tuple[str, ...]] = ("eval_every", "checkpoint_every", "device", "micro_batch_size",
                                           "gradient_checkpointing", "strategy", "cpu_offload")

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
        ] + strategy_problems(self.strategy, self.cpu_offload)
        if problems:
            raise ValueError(f"invalid TrainConfig: {'; '.join(problems)}")


class NonFiniteError(FloatingPointError):
    """A NaN or infinite loss, gradient norm or reward: training stops before the update applies it."""


NON_FINITE_HINT = ("At the first step this means non-finite weights or inputs (load_model refuses non-finite "
                   "weights); later, divergence: lower lr, set grad_clip, or train in float32.")


def check_finite(step: int | str, values: dict[str, float]) -> None:
    """Raise NonFiniteError naming `step` (as logged, from 1) and each non-finite value of `values`
    (e.g. {"loss": ..., "gradient norm": ...}); call it before `optimizer.step()`, so that NaN never
    reaches the weights, the checkpoints or a saved model."""
    bad = [f"the {name} is {value}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise NonFiniteError(f"step {step}: {' and '.join(bad)}; stopped before the optimizer step applied it "
                             f"(the last checkpoint is intact). {NON_FINITE_HINT}")


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


def idle_batch(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, targets, mask) of one masked-out token: a rank with fewer micro-batches than the
    others runs it to join their collectives (FSDP's forwards, DDP's and FSDP's backwards)
    without changing the loss or any gradient."""
    zeros = torch.zeros(1, 1, dtype=torch.long, device=device)
    return zeros, zeros, torch.zeros(1, 1, device=device)


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 of the tokens and masks, to refuse resuming on different data."""
    h = hashlib.sha256()
    for tokens, mask in examples:
        h.update(array("q", [len(tokens)]).tobytes() + array("q", tokens).tobytes() + array("q", mask).tobytes())
    return h.hexdigest()


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
def validation_loss(model: torch.nn.Module, examples: Sequence[Example], micro_batch_size: int,
                    device: torch.device, autocast: Any = nullcontext(), comm: Dist | None = None) -> float:
    """Mean target cross-entropy over `examples` (sharded across ranks when distributed; every rank
    runs as many forwards as the busiest, since an FSDP forward is a collective)."""
    rank, world = (comm.rank, comm.world) if comm else (0, 1)
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))[rank::world]
    chunks = [order[j:j + micro_batch_size] for j in range(0, len(order), micro_batch_size)]
    total = count = 0.0
    for j in range(comm.max(len(chunks), device) if comm else len(chunks)):
        batch = collate(examples, chunks[j], device) if j < len(chunks) else idle_batch(device)
        total += _token_loss_sum(model, batch, autocast).item()
        count += batch[2].sum().item()
    if comm:
        total, count = comm.sum([total, count], device)
    model.train(was_training)
    return total / max(count, 1.0)


def adamw(model: Qwen3, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (not norms or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def train(model: Qwen3, train_examples: Sequence[Example], cfg: TrainConfig, out_dir: str | Path,
          val_examples: Sequence[Example] | None = None, log: LogFn | None = None) -> dict[str, Any]:
    """Train `model` in place on next-token prediction; resume from `out_dir` if it holds a checkpoint.
    The model ends on the training device with the trained fp32 weights, whatever `cfg.strategy`.

    Returns {steps, train_loss, val_loss, examples, dropped, tokens_seen, wall_s, resumed_from}.
    Rank 0 appends to out_dir/metrics.jsonl and calls `log(step, metrics)`: loss, lr, grad_norm,
    tokens_per_s, step_time and epoch after every step, and val_loss after each validation.
    """
    t_start = time.perf_counter()
    with training_setup(cfg.device, cfg.dtype, "this loop", cfg.strategy, cfg.cpu_offload) as (device, dtype, comm):
        return _train(model, train_examples, cfg, Path(out_dir), val_examples, log, device, dtype, comm, t_start)


def _train(model: Qwen3, train_examples: Sequence[Example], cfg: TrainConfig, out_dir: Path,
           val_examples: Sequence[Example] | None, log: LogFn | None, device: torch.device,
           dtype: torch.dtype, comm: Dist, t_start: float) -> dict[str, Any]:
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
    data_sha = fingerprint(examples)

    model.to(dtype=torch.float32)  # fp32 master weights
    model.gradient_checkpointing = cfg.gradient_checkpointing
    placed = place(model, cfg.strategy, comm, device, dtype, cfg.cpu_offload)
    opt = adamw(placed.trained, cfg)
    torch.manual_seed(cfg.seed + comm.rank)
    random.seed(cfg.seed + comm.rank)
    key = {**run_settings(cfg), "training data": data_sha, "model architecture": stable_hash(model.config)}
    state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "train_loss": None, "val_loss": None}
    saved = resume(out_dir, placed.net, opt, key, comm)
    if saved is not None:
        state = {k: saved[k] for k in state}
    resumed_from = state["step"]
    with StepLog(out_dir, resumed_from, comm.rank, log) as step_log:
        _loop(placed, examples, val, cfg, out_dir, opt, state, key, total_steps, steps_per_epoch, step_log,
              device, dtype, comm)
    placed.gather()  # fsdp: the trained shards into the caller's model
    model.to(device).eval()
    return {"steps": total_steps, "train_loss": state["train_loss"], "val_loss": state["val_loss"],
            "examples": len(examples), "dropped": dropped, "tokens_seen": state["tokens_seen"],
            "wall_s": time.perf_counter() - t_start, "resumed_from": resumed_from}


def _loop(placed: Placed, examples: list[Example], val: list[Example], cfg: TrainConfig, out_dir: Path,
          opt: torch.optim.Optimizer, state: dict[str, Any], key: dict[str, Any], total_steps: int,
          steps_per_epoch: int, log: StepLog, device: torch.device, dtype: torch.dtype, comm: Dist) -> None:
    """Optimizer steps from state["step"] to total_steps, updating `state` in place."""
    lengths = [len(t) for t, _ in examples]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    placed.trained.train()

    def checkpoint() -> None:
        save_checkpoint(out_dir, placed.net, opt, {
            **state, "epoch": state["step"] // steps_per_epoch, "batch_in_epoch": state["step"] % steps_per_epoch,
            "total_steps": total_steps}, key, comm)

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
        # Every rank has as many micro-batches (equal shares), so no idle passes are needed here.
        micro = _micro_batches(examples, batch, comm.rank, comm.world, cfg.micro_batch_size)
        loss_sum = 0.0
        for k, idx in enumerate(micro):
            with placed.accumulate(last=k == len(micro) - 1):
                part = _token_loss_sum(placed.net, collate(examples, idx, device), autocast)
                # DDP and FSDP average the ranks' gradients: scale each share back to a sum.
                (part * comm.world / n_targets).backward()
            loss_sum += part.item()
        [loss_sum] = comm.sum([loss_sum], device)
        grad_norm = placed.clip_grad_norm(cfg.grad_clip)
        check_finite(step + 1, {"loss": loss_sum / n_targets, "gradient norm": grad_norm})
        lr = lr_at(step, cfg, total_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        state.update(step=step + 1, tokens_seen=state["tokens_seen"] + n_tokens, train_loss=loss_sum / n_targets)
        log(step + 1, {"loss": state["train_loss"], "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_s": n_tokens / dt, "step_time": dt, "epoch": epoch})
        end = state["step"] == total_steps
        epoch_end = state["step"] % steps_per_epoch == 0
        if val and (end or epoch_end or (cfg.eval_every and state["step"] % cfg.eval_every == 0)):
            state["val_loss"] = validation_loss(placed.trained, val, cfg.micro_batch_size, device, autocast, comm)
            log(state["step"], {"val_loss": state["val_loss"]})
        if end or epoch_end or (cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0):
            checkpoint()
    placed.trained.eval()
