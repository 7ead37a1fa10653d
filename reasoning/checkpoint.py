"""Run machinery of the training loops: process group, full-state checkpoints, resume checks, logs.

Both training loops (`train.train`: pretraining and SFT; `grpo.train_grpo`) keep their algorithm
in their own module and get everything about *surviving a kill* from here, in the spirit of
nanochat's checkpoint manager:

- `training_setup`: device, dtype and (under torchrun) the process group; `data_parallel` the same
  for a generating stage that splits its problems over the ranks; `Dist` wraps rank,
  world size and the few collectives the loops need, and is a no-op in a single process.
- A checkpoint holds the full state: the model in our HF format (weights.save_model, fp32
  master weights), the AdamW state flattened into safetensors, each rank's torch and Python RNG,
  and JSON for the rest. It is completed under a temporary name, renamed, and only then named by
  the atomically written `latest` pointer, so a kill at any moment leaves the previous checkpoint
  usable. Nothing is unpickled on resume.
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
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from .devices import rank_device, resolve_device
from .files import JsonlAppender, atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from .model import Qwen3
from .weights import load_model, save_model

LATEST = "latest"


class Dist:
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
        """Element-wise sum of `values` over ranks (float64, so counts stay exact)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

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
def training_setup(device_name: str, dtype_name: str,
                   loop: str) -> Iterator[tuple[torch.device, torch.dtype, Dist]]:
    """(device, dtype, process group) for a training loop; under torchrun each process takes its
    LOCAL_RANK's GPU. The process group this opens is closed on exit.

    Raises ValueError for float16 (it needs loss scaling, which neither loop does)."""
    device, dtype = resolve_device(device_name, dtype_name)
    if dtype == torch.float16:
        raise ValueError(f"dtype float16 needs loss scaling, which {loop} does not do; use bfloat16 or float32")
    comm = Dist(device)
    try:
        if device.type == "cuda" and comm.world > 1:
            device = rank_device(device)
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


def save_checkpoint(out_dir: Path, model: Qwen3, opt: torch.optim.Optimizer, state: dict[str, Any],
                    key: dict[str, Any], comm: Dist) -> None:
    """Write `state` (JSON; must hold "step"), the model, the optimizer and every rank's RNG as
    out_dir/step_<step>, then point `latest` at it and remove older checkpoints. All ranks call it."""
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
            for name_, value in entries.items():
                if torch.is_tensor(value):
                    tensors[f"{pid}.{name_}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{pid}.{name_}"] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {**state, "run_key": key, "param_groups": sd["param_groups"],
                                        "optimizer_scalars": scalars, "world_size": comm.world})
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


def load_checkpoint(ckpt: Path, model: Qwen3, opt: torch.optim.Optimizer, comm: Dist) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from `ckpt`; return its state.json."""
    state = read_json(ckpt / "state.json")
    model.load_state_dict(load_model(ckpt / "model", torch.float32, model.device).state_dict())
    per_param: dict[int, dict[str, Any]] = defaultdict(dict)
    for name, value in load_file(str(ckpt / "optimizer.safetensors")).items():
        pid, field = name.split(".", 1)
        per_param[int(pid)][field] = value
    for name, value in state["optimizer_scalars"].items():
        pid, field = name.split(".", 1)
        per_param[int(pid)][field] = value
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


def resume(out_dir: Path, model: Qwen3, opt: torch.optim.Optimizer, key: dict[str, Any],
           comm: Dist) -> dict[str, Any] | None:
    """Load the latest checkpoint of `out_dir` after checking it belongs to the run `key`; return its
    state, or None when there is none (a fresh start)."""
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        return None
    check_resumable(ckpt, key)
    return load_checkpoint(ckpt, model, opt, comm)


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
