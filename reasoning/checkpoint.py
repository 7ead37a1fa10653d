"""Run machinery of the training loops: process group, full-state checkpoints, resume checks, logs.

Both training loops (`train.train`: pretraining and SFT; `grpo.train_grpo`) keep their algorithm
in their own module and get everything about *surviving a kill* from here, in the spirit of
nanochat's checkpoint manager:

- `training_setup`: device, dtype and (under torchrun, or for FSDP) the process group;
  `data_parallel` the same for a generating stage that splits its problems over the ranks; `Dist`
  wraps rank, world size and the few collectives the loops need, and is a no-op in a single process.
- A checkpoint holds the full state: the model (fp32 master weights) and the AdamW state through
  `torch.distributed.checkpoint` (DCP), each rank's torch and Python RNG, and JSON for the rest.
  DCP writes each rank's own slice (a sharded FSDP parameter, or its share of DDP's replicated
  tensors) with its offsets, and reads back whatever slices the loading ranks hold, so a run saved
  by N processes resumes on M, and under either strategy (reasoning.parallel): one format for both,
  which is why the strategy may change on resume. The files are safetensors (DCP's Hugging Face
  storage, the slices' offsets in each file's JSON header), so nothing is unpickled on resume; the
  state dicts are `get_state_dict`'s, keyed by parameter name whatever the wrapping. A checkpoint
  is completed under a temporary name, renamed, and only then named by the atomically written
  `latest` pointer, so a kill at any moment leaves the previous checkpoint usable.
- "What a resume must share": a run is identified by a flat key: the settings that change its
  trajectory (`run_settings`: a config minus its `RUN_ONLY` fields) plus the identity of its data
  and model. The key names the run's state directory (`config.run_dir`) and is stored in every
  checkpoint; `resume` refuses a checkpoint whose key differs, naming what changed.
- A run's per-step log (`StepLog`, out_dir/metrics.jsonl) is cut back to the checkpoint it
  resumes from: the steps after it run, and are logged, again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .devices import rank_device, resolve_device
from .files import JsonlAppender, atomic_write_text, read_json, read_jsonl, write_json, write_jsonl

LATEST = "latest"


class Dist:
    """Rank, world size and collectives; a single process needs no process group, except for FSDP
    (`one_process_group`), which shards over a group even of one. `grouped`: a group exists."""

    def __init__(self, device: torch.device, one_process_group: bool = False, cpu_offload: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.owns_group = 0, False
        if self.world > 1 or one_process_group:
            if not dist.is_initialized():
                # Offloaded FSDP shards are CPU tensors: reductions over them need gloo besides NCCL.
                backend = ("cpu:gloo,cuda:nccl" if cpu_offload else "nccl") if device.type == "cuda" else "gloo"
                if self.world == 1:
                    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
                else:
                    dist.init_process_group(backend)
                self.owns_group = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.grouped = dist.is_initialized()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over ranks (float64, so counts stay exact)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int, device: torch.device) -> int:
        """The largest of the ranks' `value`s."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order (picklable Python objects of our own making only)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


@contextmanager
def training_setup(device_name: str, dtype_name: str, loop: str, strategy: str = "ddp",
                   cpu_offload: bool = False) -> Iterator[tuple[torch.device, torch.dtype, Dist]]:
    """(device, dtype, process group) for a training loop; under torchrun each process takes its
    LOCAL_RANK's GPU. `strategy` fsdp opens a process group even in one process (reasoning.parallel).
    The process group this opens is closed on exit.

    Raises ValueError for float16 (it needs loss scaling, which neither loop does)."""
    device, dtype = resolve_device(device_name, dtype_name)
    if dtype == torch.float16:
        raise ValueError(f"dtype float16 needs loss scaling, which {loop} does not do; use bfloat16 or float32")
    comm = Dist(device, one_process_group=strategy == "fsdp", cpu_offload=cpu_offload)
    try:
        if device.type == "cuda":  # collectives (and the saved CUDA RNG state) are the current device's
            device = rank_device(device)
            device = device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        yield device, dtype, comm
    finally:
        comm.close()


@contextmanager
def data_parallel(device: torch.device) -> Iterator[Dist | None]:
    """Under torchrun (WORLD_SIZE > 1): the process group a generating stage splits its problems over
    (NCCL between GPUs, gloo on CPUs), closed on exit; None in a single process. Each rank generates
    its share and every rank ends with all records (reasoning.records.run_resumable); rank 0 writes
    the outputs."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield None
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    comm = Dist(device)
    try:
        yield comm
    finally:
        comm.close()


def run_settings(cfg: Any) -> dict[str, Any]:
    """The fields of config dataclass `cfg` that shape a run's trajectory (all but its `RUN_ONLY`
    fields, which may change between a run and its resumption), as they read back from JSON."""
    run_only = getattr(cfg, "RUN_ONLY", ())
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in run_only}
    return json.loads(json.dumps(fields))  # tuples become lists, as in a saved checkpoint


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The directory named by `out_dir/latest`, or None when no checkpoint was completed."""
    pointer = Path(out_dir) / LATEST
    if not pointer.exists():
        return None
    ckpt = Path(out_dir) / pointer.read_text().strip()
    if not (ckpt / "state.json").exists():
        raise ValueError(f"{pointer} names {ckpt}, which is missing or incomplete; delete {out_dir} to start over")
    return ckpt


def _tied(net: nn.Module) -> str | None:
    """The state-dict key that aliases another (a tied output head), left out of the files as
    weights.save_model does: safetensors refuses to write one storage twice."""
    return "lm_head.weight" if getattr(net, "module", net).config.tie_word_embeddings else None


@contextmanager
def _dcp_args() -> Iterator[dict[str, bool]]:
    """DCP's arguments for this process: alone (no process group) it reads and writes by itself,
    which it would warn about at every call though asked for."""
    alone = not dist.is_initialized()
    with warnings.catch_warnings():
        if alone:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield {"no_dist": alone}


def save_checkpoint(out_dir: Path, net: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                    key: dict[str, Any], comm: Dist) -> None:
    """Write `state` (JSON; must hold "step"), the model `net` (a Qwen3, DDP-wrapped or sharded),
    the optimizer and every rank's RNG as out_dir/step_<step>, then point `latest` at it and remove
    older checkpoints. All ranks call it."""
    name = f"step_{state['step']:08d}"
    tmp = out_dir / f".tmp-{name}"
    if comm.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    comm.barrier()
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / f"rng_rank{comm.rank}.safetensors"))
    write_json(tmp / f"python_rng_rank{comm.rank}.json", random.getstate())
    tied = _tied(net)
    tensors: dict[str, Any] = {"model": {k: v for k, v in get_model_state_dict(net).items() if k != tied}}
    # An optimizer that has not stepped has no state yet (GRPO steps whose groups were all
    # filtered out); asking get_optimizer_state_dict for it would create one by a zero step.
    param_groups = None
    if opt.state:
        osd = get_optimizer_state_dict(net, opt)
        tensors["optimizer"], param_groups = osd["state"], osd["param_groups"]
    with _dcp_args() as kw:  # collective: returns once every rank has written its part (and its RNG before)
        dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp / "state"), save_distributed=True),
                 **kw)
    if comm.rank == 0:
        write_json(tmp / "state.json", {**state, "run_key": key, "param_groups": param_groups,
                                        "world_size": comm.world})
        final = out_dir / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(out_dir / LATEST, name + "\n")
        for old in out_dir.iterdir():  # older checkpoints and leftovers of killed saves
            if old.is_dir() and old.name != name and (old.name.startswith("step_") or old.name.startswith(".tmp-")):
                shutil.rmtree(old, ignore_errors=True)
    comm.barrier()


def check_resumable(ckpt: Path, key: dict[str, Any]) -> None:
    """Raise ValueError naming every entry of `key` that differs from the key of the run that wrote
    `ckpt`: resuming it would mix two runs. Keys are flat and named for the user (setting names,
    "training data", "model architecture"), so the message says what to put back."""
    saved = read_json(ckpt / "state.json").get("run_key", {})
    changed = [what for what in [*key, *(k for k in saved if k not in key)] if saved.get(what) != key.get(what)]
    if changed:
        raise ValueError(f"{ckpt} was written by a run with a different {', '.join(changed)}; resume with "
                         f"the same ones, or delete {ckpt.parent} to start over")


def load_checkpoint(ckpt: Path, net: nn.Module, opt: torch.optim.Optimizer, comm: Dist) -> dict[str, Any]:
    """Restore the model `net`, the optimizer and this rank's RNG from `ckpt` (written by any number
    of processes, under either strategy); return its state.json. All ranks call it."""
    if not (ckpt / "state").is_dir():
        raise ValueError(f"{ckpt} holds no state/ directory: it was written before checkpoints moved to "
                         f"torch.distributed.checkpoint; delete {ckpt.parent} to start over")
    state = read_json(ckpt / "state.json")
    tied = _tied(net)
    model_sd = get_model_state_dict(net)  # this rank's tensors (or slices): DCP reads into them
    tensors: dict[str, Any] = {"model": {k: v for k, v in model_sd.items() if k != tied}}
    if state["param_groups"] is not None:
        tensors["optimizer"] = get_optimizer_state_dict(net, opt)["state"]
    with _dcp_args() as kw:
        dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(ckpt / "state")), **kw)
    loaded = tensors["model"]
    if tied:
        loaded[tied] = loaded["embed_tokens.weight"]
    set_model_state_dict(net, loaded)
    if state["param_groups"] is not None:
        groups = [{**g, "betas": tuple(g["betas"])} for g in state["param_groups"]]
        set_optimizer_state_dict(net, opt, {"state": tensors["optimizer"], "param_groups": groups})
    # A run resumed on a different number of ranks reuses rank 0's RNG state for new ranks.
    rank = comm.rank if (ckpt / f"rng_rank{comm.rank}.safetensors").exists() else 0
    rng = load_file(str(ckpt / f"rng_rank{rank}.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(rng["torch_cuda"])
    version, internal, gauss = read_json(ckpt / f"python_rng_rank{rank}.json")
    random.setstate((version, tuple(internal), gauss))
    return state


def resume(out_dir: Path, net: nn.Module, opt: torch.optim.Optimizer, key: dict[str, Any],
           comm: Dist) -> dict[str, Any] | None:
    """Load the latest checkpoint of `out_dir` into `net` and `opt` after checking it belongs to the
    run `key`; return its state, or None when there is none (a fresh start)."""
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    check_resumable(ckpt, key)
    return load_checkpoint(ckpt, net, opt, comm)


class StepLog:
    """A run's per-step metrics: `out_dir/metrics.jsonl` (rank 0 appends, durably) and the caller's
    `log(step, metrics)` callback. Opening it cuts the file back to `resumed_step` (the checkpoint
    the run resumes from; 0: a fresh start), since the steps after it run, and are logged, again."""

    def __init__(self, out_dir: Path, resumed_step: int, rank: int,
                 log: Callable[[int, dict[str, float]], None] | None = None):
        self.path, self.log, self.rank = Path(out_dir) / "metrics.jsonl", log, rank
        self._file: JsonlAppender | None = None
        if rank == 0:
            kept = [r for r in read_jsonl(self.path) if r["step"] <= resumed_step] if resumed_step else []
            write_jsonl(self.path, kept)
            self._file = JsonlAppender(self.path)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is not None:
            self._file.append({"step": step, **metrics})
            if self.log:
                self.log(step, metrics)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "StepLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
