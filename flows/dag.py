"""The pipeline as `dvc.yaml` and the params' `pipeline` section declare it: stage specs, their run
order, and how each stage's process is launched.

Design: `dvc.yaml` is the one description of the pipeline. The pipeline flow takes its stage
list and order from it, and the stage flow takes from it what to track (the params a stage
reads, its metrics, plots and outputs), so adding a stage is a `dvc.yaml` entry plus a
`params.yaml` section, with no list in the flows to keep in step. Only what the flows need is
parsed here; DVC itself validates the file (`dvc dag`, `dvc repro`).

`pipeline.nproc_per_node` (and `nnodes` with `rdzv_endpoint` for several machines) makes a stage that
splits its work over processes (`DISTRIBUTED`) run under torchrun (`launch_command`), spawned by the
stage flow: dvc.yaml's commands stay the same, `dvc repro` and the Prefect pipeline use every GPU, and
the stage's outputs are recorded by DVC as any other run's (no `dvc commit` afterwards).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reasoning.config import from_dict

DVC_YAML = "dvc.yaml"
# Stages that split their work over torchrun's processes: the generating stages split problems
# (reasoning.records), the training stages rollouts and batches (DDP). prepare_data and load_base
# run in one process.
DISTRIBUTED = frozenset({"evaluate", "inference_scaling", "teacher_traces", "distill_sft", "grpo", "final_eval"})


@dataclass(frozen=True)
class PipelineConfig:
    """The `pipeline` section of params.yaml (read by the flows only)."""
    retries: int = 2
    retry_delay_s: float = 10.0
    deployment: str = "reasoning-pipeline"
    cron: str = "0 3 * * *"
    limit: int | None = None  # a trial run: the first N test problems (read by stages.prepare_data)
    nproc_per_node: int = 1  # processes (GPUs) per machine for the DISTRIBUTED stages; 1: no torchrun
    nnodes: int = 1  # machines; > 1 needs rdzv_endpoint, and the same command started on each machine
    rdzv_endpoint: str = ""  # host:port of the rendezvous (e.g. the first machine's address:29400)

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError(f"params.yaml:pipeline: nproc_per_node ({self.nproc_per_node}) and nnodes "
                             f"({self.nnodes}) must be >= 1")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("params.yaml:pipeline: nnodes > 1 needs rdzv_endpoint (host:port of the first "
                             "machine, reachable from the others), e.g. rdzv_endpoint: 10.0.0.1:29400")


def pipeline_config(params: dict[str, Any]) -> PipelineConfig:
    return from_dict(PipelineConfig, params.get("pipeline"), "params.yaml:pipeline")


def launch_command(stage: str, argv: list[str], cfg: PipelineConfig) -> list[str] | None:
    """The torchrun command that runs `stages.<stage>` with `argv` over `cfg`'s processes, or None when
    the stage runs in this process (one process in all, or a stage not in DISTRIBUTED)."""
    if stage not in DISTRIBUTED or cfg.nproc_per_node * cfg.nnodes == 1:
        return None
    nodes = ["--standalone"] if cfg.nnodes == 1 else [
        "--nnodes", str(cfg.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", cfg.rdzv_endpoint,
        "--rdzv-id", f"reasoning-pipeline-{stage}"]
    return [sys.executable, "-m", "torch.distributed.run", *nodes, "--nproc-per-node", str(cfg.nproc_per_node),
            "-m", f"stages.{stage}", *argv]


@dataclass(frozen=True)
class StageSpec:
    name: str
    cmd: str
    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()  # keys (dotted) of params.yaml the stage reads
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()

    @property
    def args(self) -> list[str]:
        """The stage's own arguments in `cmd` (what follows `python -m flows.stage <name>`): its paths."""
        words = shlex.split(self.cmd)
        prefix = ["python", "-m", "flows.stage", self.name]
        if words[:4] != prefix:
            raise ValueError(f"dvc.yaml stage {self.name}: cmd must start with {' '.join(prefix)!r}, got {self.cmd!r}")
        return words[4:]

    @property
    def produced(self) -> tuple[str, ...]:
        """Every path the stage writes (outs, metrics, plots)."""
        return self.outs + self.metrics + self.plots


def _paths(entries: list[Any] | None) -> tuple[str, ...]:
    """`- path` or `- path: {cache: false, ...}` entries -> paths."""
    out = []
    for e in entries or []:
        out.extend(e if isinstance(e, dict) else [e])
    return tuple(str(p) for p in out)


def _params(entries: list[Any] | None, stage: str) -> tuple[str, ...]:
    keys = []
    for e in entries or []:
        if isinstance(e, dict):  # {other_file.yaml: [keys]}: the flows read params.yaml only
            raise ValueError(f"dvc.yaml stage {stage!r}: params from other files ({sorted(e)}) are not "
                             "supported by the flows; put the stage's params in a params.yaml section")
        keys.append(str(e))
    return tuple(keys)


def read_stages(root: str | Path = ".") -> dict[str, StageSpec]:
    """The stages of `root/dvc.yaml`, in file order."""
    path = Path(root) / DVC_YAML
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run from the repository root")
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    specs = {}
    for name, d in stages.items():
        if "foreach" in d or "matrix" in d:
            raise ValueError(f"dvc.yaml stage {name!r}: foreach/matrix stages are not supported by the flows; "
                             "write one stage per variant")
        specs[name] = StageSpec(
            name=name, cmd=d["cmd"], deps=_paths(d.get("deps")), params=_params(d.get("params"), name),
            outs=_paths(d.get("outs")), metrics=_paths(d.get("metrics")), plots=_paths(d.get("plots")),
        )
    return specs


def _inside(path: str, parent: str) -> bool:
    p, q = Path(path).parts, Path(parent).parts
    return p[: len(q)] == q


def upstream(spec: StageSpec, specs: dict[str, StageSpec]) -> list[str]:
    """Stages producing a path that `spec` depends on (the dep lies inside an output or contains one)."""
    return [s.name for s in specs.values() if s.name != spec.name and any(
        _inside(dep, out) or _inside(out, dep) for dep in spec.deps for out in s.produced)]


def stage_order(specs: dict[str, StageSpec]) -> list[str]:
    """Names in an order that runs every stage after its upstream stages; file order breaks ties."""
    order: list[str] = []
    pending = list(specs)
    while pending:
        ready = [n for n in pending if all(u in order for u in upstream(specs[n], specs))]
        if not ready:
            raise ValueError(f"dvc.yaml: stages {pending} depend on each other in a cycle")
        order.append(ready[0])
        pending.remove(ready[0])
    return order


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.dag args <stage>`: the stage's arguments in dvc.yaml's cmd, shell-quoted, e.g.
    `torchrun --nproc_per_node 8 -m stages.grpo $(python -m flows.dag args grpo)`."""
    argv = sys.argv[1:] if argv is None else argv
    specs = read_stages()
    if len(argv) != 2 or argv[0] != "args" or argv[1] not in specs:
        print(f"usage: python -m flows.dag args <stage>   (stages: {', '.join(specs)})", file=sys.stderr)
        return 2
    print(shlex.join(specs[argv[1]].args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
