"""Data-parallel generation stages under torchrun (gloo, 2 CPU processes): evaluate, inference_scaling,
teacher_traces (engine teacher) and final_eval split their problems over the ranks, journal per rank, and
write exactly what one process writes (greedy and sampled rows alike: every seed is per problem and
sample); a killed run's rank journals are resumed from, at another world size too."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reasoning.data import write_dataset
from reasoning.files import read_json, read_jsonl, write_jsonl
from reasoning.records import rank_journals

ROOT = Path(__file__).resolve().parents[1]
# fields that measure time or memory, or name the run's own state directory: they differ between any two runs
UNSHARED = {"seconds", "wall_time_s", "tokens_per_s", "peak_memory_bytes", "scoring_seconds", "journal"}

pytestmark = pytest.mark.slow  # four torchrun launches: ~1 minute


def problems(n: int) -> list[dict]:
    return [{"id": f"p{i}", "problem": f"What is {i} + {2 * i}?" + " Think." * (i % 4), "answer": str(3 * i),
             "solution": "", "level": 1, "subject": "arithmetic"} for i in range(n)]


def untimed(x):
    """`x` without the UNSHARED fields."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in UNSHARED}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def first_difference(a, b, where: str = "") -> str | None:
    """Where `a` and `b` differ, or None; floats count as equal within 1e-5 (relative): a batch of another
    width sums in another order, which moves a log-prob by ~1e-7."""
    if isinstance(a, float) and isinstance(b, float):
        return None if math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) else f"{where}: {a} != {b}"
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where}: keys {sorted(a)} != {sorted(b)}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{where}.{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{where}[{i}]"))),
                    None)
    return None if a == b else f"{where}: {a!r} != {b!r}"


def run(stage: str, args: list[str], nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    result = subprocess.run([*launcher, "-m", f"stages.{stage}", *args], capture_output=True,
                            text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("dp")
    write_dataset(problems(9), root / "test.jsonl", "test")
    write_dataset(problems(20)[11:], root / "train.jsonl", "test")
    sampling = {"max_new_tokens": 8, "temperature": 1.0}
    (root / "params.yaml").write_text(yaml.safe_dump({
        "evaluate": {"batch_size": 2, "device": "cpu", "dtype": "float32", "sampling": {"max_new_tokens": 8}},
        "inference_scaling": {"batch_size": 4, "device": "cpu", "dtype": "float32", "methods": [
            {"name": "greedy", "sampling": {"max_new_tokens": 8}},
            {"name": "sc", "sampling": sampling, "n": 3, "aggregate": "majority", "budgets": [1, 3]}]},
        "teacher_traces": {"teacher": {"model": str(tiny_ckpt), "device": "cpu", "dtype": "float32",
                                       "batch_size": 4}, "sampling": sampling, "n": 2},
        "final_eval": {"models": {"base": str(tiny_ckpt)}, "baseline": "base"},
    }))
    return root


def stage_args(root: Path, stage: str, out: str, tiny_ckpt: Path) -> list[str]:
    p = ["--params", str(root / "params.yaml"), "--state", str(root / out / "state")]
    return {
        "evaluate": ["--model", str(tiny_ckpt), "--data", str(root / "test.jsonl"), "--out", str(root / out / "o")],
        "inference_scaling": ["--model", str(tiny_ckpt), "--data", str(root / "test.jsonl"),
                              "--out", str(root / out / "o")],
        "teacher_traces": ["--train", str(root / "train.jsonl"), "--test", str(root / "test.jsonl"),
                           "--out", str(root / out / "o"), "--metrics", str(root / out / "metrics.json")],
        "final_eval": ["--data", str(root / "test.jsonl"), "--out", str(root / out / "o")],
    }[stage] + p + ([] if stage == "final_eval" else ["--no-progress"])


def outputs(root: Path) -> dict:
    return {str(f.relative_to(root)): untimed(read_jsonl(f) if f.suffix == ".jsonl" else read_json(f))
            for f in sorted(root.rglob("*")) if f.suffix in (".json", ".jsonl") and "state" not in f.parts}


@pytest.mark.parametrize("stage", ["evaluate", "inference_scaling", "teacher_traces", "final_eval"])
def test_two_processes_write_what_one_writes(world, tiny_ckpt, stage):
    run(stage, stage_args(world, stage, f"{stage}-1", tiny_ckpt), 1)
    run(stage, stage_args(world, stage, f"{stage}-2", tiny_ckpt), 2)
    one, two = outputs(world / f"{stage}-1"), outputs(world / f"{stage}-2")
    assert one and first_difference(one, two) is None, first_difference(one, two)
    assert not [p for p in (world / f"{stage}-2" / "state").rglob("*.rank*.jsonl")]  # merged, then removed


def test_a_killed_runs_rank_journals_are_resumed_at_another_world_size(world, tiny_ckpt):
    """Rank logs left by a killed 2-process run hold some records: a 1-process rerun keeps them (their
    timings are the old ones) and generates only the rest."""
    args = stage_args(world, "evaluate", "resume", tiny_ckpt)
    run("evaluate", args, 1)
    [log] = (world / "resume" / "state").rglob("records.jsonl")
    full = read_jsonl(log)
    marked = [{**r, "seconds": 1000.0 + i} for i, r in enumerate(full)]
    write_jsonl(log.with_name("records.rank0.jsonl"), marked[0::2][:3])  # what each rank had finished
    write_jsonl(log.with_name("records.rank1.jsonl"), marked[1::2][:2])
    log.unlink()
    run("evaluate", args, 1)
    again = read_jsonl(log)
    kept = {r["id"] for r in again if r["seconds"] >= 1000}
    assert kept == {r["id"] for r in marked[0::2][:3] + marked[1::2][:2]}
    assert first_difference(untimed(again), untimed(full)) is None and not rank_journals(log)
    metrics = json.loads((world / "resume" / "o" / "metrics.json").read_text())
    assert metrics["n"] == len(full)
