"""How a training loop spreads its model over the ranks: `strategy` ddp or fsdp.

- ddp (DistributedDataParallel): every rank holds the whole model, its gradients and its AdamW
  state (16 bytes per parameter in fp32); gradients are all-reduced after the backward.
- fsdp (FSDP2, `torch.distributed.fsdp.fully_shard`): each rank holds 1/N of the parameters, of
  their gradients and of the AdamW state; each block's weights are all-gathered for its forward
  and its backward, and its gradients reduce-scattered. This is what trains students whose
  training state does not fit one GPU.

Design choices:
- The caller's model stays a plain Qwen3 with the full weights on every rank ("the full
  model"): the rollout engine (reasoning.generate.Generator), the held-out evaluation and the
  export (weights.save_model) read it and never meet a sharded parameter. Under ddp it is also
  what trains. Under fsdp the loop trains a sharded twin, built on the meta device, sharded block
  by block and then at the root (bottom-up, as FSDP2 wants; the tied embedding and head stay with
  the root) and filled from the full model; `gather` copies the twin's weights back into the full
  model one parameter at a time (an all-gather each, so the transient cost is one parameter, not a
  second model). GRPO gathers after every update, for its next rollouts; SFT once, at the end.
  Not `unshard()` of the twin around generation: its forward hooks reshard after each block, so
  every decode step would be a collective that all ranks must join in step, though ranks decode
  different numbers of tokens, and the compiled decode step would trace FSDP's hooks. The price
  is the full model's weights on each GPU besides the shards under GRPO, which its engine needs to
  generate in any case (GRPO keeps that copy in the compute dtype: 2 bytes per parameter in bf16,
  `gather` casts); SFT leaves its full model where the caller put it (the stages load it on the
  CPU) until the end.
- Mixed precision under fsdp: with dtype bfloat16, FSDP2 all-gathers and computes with bf16
  copies of the fp32 master shards and reduce-scatters gradients in fp32
  (MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)); with float32 (the CPU default)
  nothing is cast. The loops' bf16 autocast stays on as under ddp (it keeps softmax and the loss
  in fp32).
- cpu_offload (fsdp only): FSDP2's CPUOffloadPolicy keeps the shards, their gradients and the
  AdamW state in CPU memory and steps the optimizer there; the process group then gets a gloo
  backend for those CPU tensors (the gradient norm's reduction) besides NCCL, as torchtitan does
  (checkpoint.training_setup).
- Both strategies average gradients over the ranks (DDP's all-reduce, FSDP's reduce-scatter), so a
  loop multiplies each rank's share of a global loss by the world size. Forwards (fsdp) and
  backwards (both) are collectives, so every rank runs the same number of them: a rank with fewer
  micro-batches pads with idle ones (train.idle_batch: one masked-out token, adding nothing).
- One process: ddp trains the full model itself; fsdp still shards, over a one-process group, so
  cpu_offload works on a single GPU.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from .checkpoint import Dist
from .model import Qwen3

STRATEGIES = ("ddp", "fsdp")


def strategy_problems(strategy: str, cpu_offload: bool) -> list[str]:
    """What is wrong with a config's `strategy` and `cpu_offload` (empty: nothing), for its __post_init__."""
    if strategy not in STRATEGIES:
        return [f"strategy {strategy!r} is unknown; use one of {list(STRATEGIES)}"]
    if cpu_offload and strategy != "fsdp":
        return ["cpu_offload needs strategy: fsdp (DDP keeps a whole replica on each device)"]
    return []


class Placed:
    """A model placed for training per `strategy` (see the module docstring); built by `place`.

    model: the full model (plain Qwen3, full weights). trained: the module whose parameters the
    optimizer updates (model itself, or its sharded twin). net: what the loss calls (trained, or
    DDP(trained) under torchrun). device: where the forward runs.
    """

    def __init__(self, model: Qwen3, trained: Qwen3, net: nn.Module, device: torch.device, comm: Dist):
        self.model, self.trained, self.net, self.device, self.comm = model, trained, net, device, comm

    @property
    def sharded(self) -> bool:
        return self.trained is not self.model

    def accumulate(self, last: bool) -> AbstractContextManager:
        """Context for a micro-batch's backward: DDP skips its all-reduce except on the last one of a
        step. FSDP reduce-scatters every one, which keeps the gradients sharded (memory)."""
        if isinstance(self.net, nn.parallel.DistributedDataParallel) and not last:
            return self.net.no_sync()
        return nullcontext()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the gradients' global norm to `max_norm` (0: no clipping); return the norm before."""
        params = [p for p in self.trained.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
        return (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()

    @torch.no_grad()
    def gather(self) -> None:
        """Copy the twin's trained weights into the full model, cast to its dtype (every rank; no-op
        under ddp)."""
        if not self.sharded:
            return
        full = dict(self.model.named_parameters())
        for name, p in self.trained.named_parameters():
            if p.device.type != p.device_mesh.device_type:  # offloaded: gather through the device
                p = p.to(p.device_mesh.device_type)
            full[name].copy_(p.full_tensor())


def mixed_precision(dtype: torch.dtype) -> MixedPrecisionPolicy:
    """bf16 all-gathers and compute with fp32 gradient reduction for bfloat16; no casts for float32."""
    if dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def place(model: Qwen3, strategy: str = "ddp", comm: Dist | None = None, device: torch.device | None = None,
          dtype: torch.dtype = torch.float32, cpu_offload: bool = False, frozen: bool = False) -> Placed:
    """Place `model` (full fp32 weights) for training per `strategy` over `comm`'s ranks (None: one
    process) on `device` (default: the model's). `frozen` (a reference model): no gradients, no DDP.

    Under ddp the model moves to `device`; under fsdp it stays where it is and a sharded twin is made
    from it (this is collective: every rank calls it). Raises ValueError for a bad strategy."""
    problems = strategy_problems(strategy, cpu_offload)
    if problems:
        raise ValueError("; ".join(problems))
    comm = comm or Dist(model.device)
    device = device or model.device
    if frozen:
        model.eval().requires_grad_(False)
    if strategy == "ddp":
        model.to(device)
        net: nn.Module = model
        if comm.world > 1 and not frozen:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
        return Placed(model, model, net, device, comm)
    twin = _sharded_twin(model, device, dtype, cpu_offload, comm)
    if frozen:
        twin.eval().requires_grad_(False)
    return Placed(model, twin, twin, device, comm)


def _sharded_twin(model: Qwen3, device: torch.device, dtype: torch.dtype, cpu_offload: bool, comm: Dist) -> Qwen3:
    if not comm.grouped:
        raise ValueError("strategy fsdp needs the process group of checkpoint.training_setup(strategy='fsdp')")
    mesh = init_device_mesh(device.type, (comm.world,))
    # Pinned host memory needs CUDA; on a CPU-only machine the offload is a no-op kept for testing.
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    with torch.device("meta"):
        twin = Qwen3(model.config)
    for block in twin.layers:
        fully_shard(block, mesh=mesh, mp_policy=mixed_precision(dtype), offload_policy=offload)
    fully_shard(twin, mesh=mesh, mp_policy=mixed_precision(dtype), offload_policy=offload)
    twin.to_empty(device="cpu" if cpu_offload else device)
    full = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in twin.named_parameters():  # each rank keeps its slice of the full weights
            mine = distribute_tensor(full[name].detach().to(mesh.device_type, torch.float32), mesh, p.placements,
                                     src_data_rank=None)  # every rank has the full tensor: no communication
            p.to_local().copy_(mine.to_local())
    twin.gradient_checkpointing = model.gradient_checkpointing
    twin.train(model.training)
    return twin
