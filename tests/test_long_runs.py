"""Long runs survive real use: a kill under `dvc repro` resumes, and Ctrl-C stops every process of a run.

Each test drives the real commands in a subprocess on the tiny world, with real signals to the
process group, as a terminal's Ctrl-C sends them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reasoning.config import load_params
from reasoning.files import read_jsonl
from tests.test_pipeline import Toy

pytestmark = pytest.mark.slow

UNTIMED = ("seconds",)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world with a test split and an evaluation long enough to be interrupted (~40 batches)."""
    toy = Toy(tmp_path_factory.mktemp("long"))
    # dvc.yaml's `python` is this interpreter, as in an activated environment
    toy.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{toy.env.get('PATH', '')}"
    params = load_params(toy.repo / "params.yaml")
    params["prepare_data"]["toy"]["n_test"] = 80
    params["evaluate"].update(batch_size=2, sampling={"max_new_tokens": 96, "temperature": 0.0})
    (toy.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    built = toy.dvc("repro", "load_base")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    yield toy
    # Whatever of this world outlived a failed test ends here, so no server outlives the suite.
    for pid in world_processes(toy.env["PREFECT_HOME"]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def world_processes(prefect_home: str) -> list[int]:
    """Live processes started with PREFECT_HOME=`prefect_home` (the tiny world's runs and their servers)."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if f"PREFECT_HOME={prefect_home}".encode() in env.read_bytes().split(b"\0"):
                found.append(int(env.parent.name))
    return [p for p in found if p != os.getpid()]


def journal_lines(repo: Path) -> list[dict]:
    return [r for f in sorted((repo / "runs/evaluate").glob("*/records.jsonl")) for r in read_jsonl(f)]


def group_pids(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout.split()
    return [int(p) for p, g in zip(out[::2], out[1::2]) if int(g) == pgid]


def descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for p, pp in zip(out[::2], out[1::2]):
        children.setdefault(int(pp), []).append(int(p))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()
            .split("State:")[1].split("\n")[0]}


def start(world: Toy, *args: str) -> subprocess.Popen:
    """`python <args>` in the tiny repo, in a session of its own (the group a terminal's Ctrl-C reaches)."""
    log = open(world.repo / "run.log", "w")
    # SIGINT as a terminal's foreground job has it: a test runner started in the background of a
    # non-interactive shell (CI, nohup) ignores SIGINT, and its children would inherit that.
    return subprocess.Popen([sys.executable, *args], cwd=world.repo, env=world.env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_records(world: Toy, proc: subprocess.Popen, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while len(journal_lines(world.repo)) < n:
        assert proc.poll() is None, (world.repo / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no records journaled in time"
        time.sleep(0.05)


def fresh_evaluate(world: Toy) -> None:
    """Forget evaluate's journal and give it a new seed (greedy: same answers), so that the next run
    evaluates from scratch instead of DVC restoring the stage from its run cache."""
    subprocess.run(["rm", "-rf", "runs/evaluate", "data/eval"], cwd=world.repo, check=True)
    params = load_params(world.repo / "params.yaml")
    params["evaluate"]["seed"] = params["evaluate"].get("seed", 0) + 1
    (world.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def last_evaluate_run(world: Toy):
    runs = world.mlflow().search_runs(
        [e.experiment_id for e in world.mlflow().search_experiments()], "tags.stage = 'evaluate'",
        order_by=["start_time DESC"], max_results=1)
    return runs[0]


def test_killed_evaluate_resumes_under_dvc_repro(world, tmp_path):
    """DVC deletes a stage's outputs before running it: the journal lives under runs/, so a killed
    `dvc repro evaluate` continues where it stopped and ends with an uninterrupted run's records."""
    fresh_evaluate(world)
    ref = world.run("-m", "stages.evaluate", "--model", "data/models/base", "--data", "data/datasets/test.jsonl",
                    "--out", str(tmp_path / "ref"), "--state", str(tmp_path / "ref_runs"), "--no-progress")
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = start(world, "-m", "dvc", "repro", "evaluate")
    wait_for_records(world, proc, 10)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash: nothing gets to clean up
    proc.wait()
    # The stage's temporary Prefect server (in a session of its own, which the kill did not reach) goes
    # with it: the kernel ends it when its parent dies (flows.lifecycle). Before, it ran on for good.
    deadline = time.monotonic() + 15
    while alive(set(world_processes(world.env["PREFECT_HOME"]))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(set(world_processes(world.env["PREFECT_HOME"]))), "a SIGKILLed run left processes behind"
    before = {r["id"]: r for r in journal_lines(world.repo)}
    assert 10 <= len(before) < 80

    again = world.dvc("repro", "evaluate")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    final = read_jsonl(world.repo / "data/eval/base/records.jsonl")
    reference = read_jsonl(tmp_path / "ref/records.jsonl")

    def untimed(rs):
        return [{k: v for k, v in r.items() if k not in UNTIMED} for r in rs]

    assert untimed(final) == untimed(reference)
    # the records finished before the kill were not generated again: they keep their old timings
    assert all(r["seconds"] == before[r["id"]]["seconds"] for r in final if r["id"] in before)
    metrics = yaml.safe_load((world.repo / "data/eval/base/metrics.json").read_text())
    ref_metrics = yaml.safe_load((tmp_path / "ref/metrics.json").read_text())
    for key in ("accuracy", "ci_low", "ci_high", "n", "mean_generated_tokens", "truncation_rate"):
        assert metrics[key] == ref_metrics[key], key


@pytest.mark.parametrize("launcher", ["stage", "dvc", "pipeline"])
def test_ctrl_c_stops_the_run_within_10_s_and_leaves_it_resumable(world, launcher):
    fresh_evaluate(world)
    args = {"stage": ("-m", "flows.stage", "evaluate"), "dvc": ("-m", "dvc", "repro", "evaluate"),
            "pipeline": ("-m", "flows.pipeline")}[launcher]
    proc = start(world, *args)
    wait_for_records(world, proc, 4)
    tree = descendants(proc.pid) | {proc.pid}
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
    t0 = time.monotonic()
    while alive(tree) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    log = (world.repo / "run.log").read_text()
    assert not alive(tree), f"still running 10 s after Ctrl-C: {alive(tree)}\n{log[-3000:]}"
    assert proc.wait() != 0
    if launcher != "dvc":
        assert proc.returncode == 130, log[-3000:]
    assert "Finished in state Crashed" in log  # the evaluate flow run (Prefect) recorded how it ended
    assert last_evaluate_run(world).info.status == "KILLED"
    kept = len(journal_lines(world.repo))
    assert 4 <= kept < 80  # the journal stays for the next run
    # DVC's lock was released: the next run goes through, and resumes
    again = world.dvc("repro", "evaluate")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert len(read_jsonl(world.repo / "data/eval/base/records.jsonl")) == 80


def test_second_ctrl_c_or_sigterm_ends_it_at_once(world):
    for second in (signal.SIGINT, signal.SIGTERM):
        fresh_evaluate(world)
        proc = start(world, "-m", "flows.pipeline")
        wait_for_records(world, proc, 2)
        tree = descendants(proc.pid) | {proc.pid}
        if second == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)  # a SIGTERM to the pipeline alone ends its children too
        t0 = time.monotonic()
        while alive(tree) and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert not alive(tree), (second, alive(tree), (world.repo / "run.log").read_text()[-2000:])
        assert proc.wait() == 128 + second


def test_ctrl_c_stops_serve_and_its_server(world):
    proc = start(world, "-m", "flows.pipeline", "--serve", "--cron", "0 1 1 1 *")
    deadline = time.monotonic() + 120
    while "are being served and polling" not in (world.repo / "run.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (world.repo / "run.log").read_text()[-3000:]
        time.sleep(0.2)
    tree = descendants(proc.pid) | {proc.pid}  # the Prefect server too, in its own session
    assert len(tree) >= 2
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    while alive(tree) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert not alive(tree), (alive(tree), (world.repo / "run.log").read_text()[-3000:])
