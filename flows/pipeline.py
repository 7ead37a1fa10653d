"""The pipeline flow: `dvc repro`, one Prefect task per stage, then the final comparison table.

    python -m flows.pipeline                     # run the pipeline (what `make run` does)
    python -m flows.pipeline --serve [--cron C]  # serve it as a scheduled deployment

Design choices (the pattern of Prefect's dbt example): each task runs `dvc repro <stage>` as
a subprocess, in the order dvc.yaml implies (flows.dag), so DVC decides what is stale and
caches outputs; tasks pass stage names, never tensors, and Prefect's own result caching is off
(`NO_CACHE`). A task retries only transient failures (network, timeouts, a held DVC lock,
exit status 75 from flows.stage); a stage's own error fails at once. Failures travel as
Failed states with the stage's one-line error, so the command ends with that line rather than
Prefect's tracebacks.

Each stage command is itself a Prefect flow run in its own process. Without PREFECT_API_URL,
Prefect would start a temporary API server in every one of them (~8 s each); instead this
process starts the temporary server once and hands its URL to the stage processes. Ctrl-C ends
the whole run within seconds and leaves it resumable (flows.lifecycle); exit status 130.
`--serve` needs Prefect's scheduler, which the temporary server does not run, so it starts a
local `prefect server start` (UI on the same port) unless PREFECT_API_URL names a server.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments.runner import EntrypointType
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.states import Completed, Failed

from reasoning.config import load_params

from . import ROOT, lifecycle, tracking
from .dag import PipelineConfig, pipeline_config, read_stages, stage_order
from .stage import EXIT_TRANSIENT, FAILURE_LINE

FINAL_TABLE = Path("data/final/table.md")
# DVC's messages for a lock another DVC process holds (its repo lock; its per-output read/write
# lock), and a stage that exited with flows.stage's "transient" status: worth a retry.
TRANSIENT_DVC = ("Unable to acquire lock", "is busy, it is being blocked by", f"exited with {EXIT_TRANSIENT}")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str, transient: bool):
        super().__init__(f"stage '{stage}' failed: {message}")
        self.stage, self.transient = stage, transient


def failure(stage: str, returncode: int, output: list[str]) -> StageFailed:
    """The stage's own one-line error from `dvc repro`'s output (else DVC's last error line)."""
    text = "".join(output)
    own = [m.group("message") for line in output if (m := FAILURE_LINE.match(line.strip()))]
    dvc_errors = [line.strip().removeprefix("ERROR: ") for line in output if line.startswith("ERROR:")]
    message = own[-1] if own else dvc_errors[-1] if dvc_errors else f"dvc repro exited with {returncode}"
    return StageFailed(stage, message, transient=any(t in text for t in TRANSIENT_DVC))


def stage_env() -> dict[str, str]:
    """Environment of `dvc repro`: this interpreter first on PATH (dvc.yaml's `python`), the shared API."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_API_URL"] = lifecycle.start_api()
    return env


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.data, StageFailed) and state.data.transient


def _pump(stream: Any, tail: deque[str]) -> None:
    for line in stream:
        print(line, end="", flush=True)
        tail.append(line)


@task(cache_policy=NO_CACHE, retry_condition_fn=_transient)
def repro(stage: str, root: str) -> Any:
    """`dvc repro <stage>` in `root`, output streamed through; Completed('ran'|'unchanged') or Failed.

    DVC runs in a session of its own (flows.lifecycle): on Ctrl-C this task forwards the interrupt
    to it and its stage, waits for them to end (output still streamed), and then re-raises."""
    proc = lifecycle.spawn([sys.executable, "-m", "dvc", "repro", stage], cwd=root, env=stage_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: deque[str] = deque(maxlen=400)
    reader = threading.Thread(target=_pump, args=(proc.stdout, tail), daemon=True)
    reader.start()
    try:
        proc.wait()
    except KeyboardInterrupt:
        lifecycle.interrupt_children()
        reader.join(timeout=2)
        raise
    reader.join()
    if proc.returncode:
        err = failure(stage, proc.returncode, list(tail))
        return Failed(message=str(err), data=err)
    unchanged = any(re.search(rf"Stage '{re.escape(stage)}' didn't change", line) for line in tail)
    return Completed(message="unchanged" if unchanged else "ran", data="unchanged" if unchanged else "ran")


@flow(name="pipeline", persist_result=False)
def pipeline(root: str = str(ROOT)) -> Any:
    """Reproduce every stage of `root`/dvc.yaml in order, then publish the final comparison table."""
    logger = get_run_logger()
    params = load_params(Path(root) / "params.yaml")
    cfg = pipeline_config(params)
    tracking.ensure_store(params)  # created once, here, before stage processes write to it
    summary = {}
    for stage in stage_order(read_stages(root)):
        t0 = time.perf_counter()
        state = repro.with_options(name=f"dvc repro {stage}", retries=cfg.retries,
                                   retry_delay_seconds=cfg.retry_delay_s)(stage, root, return_state=True)
        if state.is_failed():
            return Failed(message=state.message)
        summary[stage] = (state.message, time.perf_counter() - t0)
        logger.info("%s: %s in %.1f s", stage, state.message, summary[stage][1])
    for note in tracking.reconcile_registry(params):  # stages DVC restored from its cache ran no code
        logger.info("registry: %s", note)
    if (Path(root) / FINAL_TABLE).exists():
        create_markdown_artifact((Path(root) / FINAL_TABLE).read_text(), key="final-comparison",
                                 description="Every model on the test split (stage final_eval)")
    return summary


NEXT_STEPS = """\
Where to look next:
  dvc metrics show                 every stage's metrics (dvc plots show: curves -> dvc_plots/index.html)
  mlflow ui --backend-store-uri sqlite:///mlflow.db
                                   runs, params, artifacts and the registered model versions
  python -m flows.tracking         the registered model versions side by side
  PREFECT_HOME=.prefect prefect server start
                                   the Prefect UI at http://127.0.0.1:4200 (flow runs, the final-comparison artifact)
(with the virtual environment active: source .venv/bin/activate)"""


def run() -> int:
    """Run the pipeline once; print the table (or the error) last. Exit status 130 after a Ctrl-C."""
    lifecycle.install_handlers()
    lifecycle.start_api()  # before Prefect's client would start a server of its own, in Ctrl-C's reach
    try:
        state = pipeline(return_state=True)
    except KeyboardInterrupt:
        lifecycle.interrupt_children()
        print("\nERROR: pipeline interrupted: every stage process has ended; rerun to resume (the stages "
              "continue from their journals and checkpoints under runs/)", file=sys.stderr)
        return lifecycle.EXIT_INTERRUPTED
    finally:
        # Stop our temporary server now rather than at exit, so the table or the error is the last output.
        lifecycle.stop_api()
    if not state.is_completed():
        print(f"\nERROR: pipeline failed: {state.message}", file=sys.stderr)
        return 1
    summary = state.result()
    print("\nStages: " + ", ".join(f"{s} {what} ({dt:.0f} s)" for s, (what, dt) in summary.items()))
    if (ROOT / FINAL_TABLE).exists():
        print(f"\nFinal comparison ({FINAL_TABLE}):\n\n{(ROOT / FINAL_TABLE).read_text()}")
    print(NEXT_STEPS)
    return 0


# ---------------------------------------------------------------------------------------------
# Serving as a scheduled deployment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, timeout_s: float = 120.0) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port` (output to $PREFECT_HOME/server.log), once its API answers."""
    import httpx

    log_path = Path(os.environ["PREFECT_HOME"]) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # in a session of its own: a Ctrl-C for the runner must not kill it first
        proc = lifecycle.spawn([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server start exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer on port {port} within {timeout_s:.0f} s")


def deployment(cfg: PipelineConfig, cron: str | None = None) -> Any:
    """The pipeline as a deployment on `cron` (default: params.yaml's pipeline.cron).

    Its entrypoint is the module path `flows.pipeline.pipeline` (a file path would load this
    file outside its package), taken from the importable module even when this file runs as
    `__main__`; runs start in the serving process's directory, the repository root.
    """
    from flows.pipeline import pipeline as importable

    return importable.to_deployment(name=cfg.deployment, cron=cron or cfg.cron,
                                    entrypoint_type=EntrypointType.MODULE_PATH,
                                    description="dvc repro of every stage, then the final comparison table")


def serve(cfg: PipelineConfig, cron: str | None = None, port: int | None = None) -> None:
    """Serve the pipeline on its schedule until interrupted (Ctrl-C)."""
    from prefect import serve as prefect_serve

    lifecycle.install_handlers()
    url = get_current_settings().api.url
    if not url:
        port = port or _free_port()
        start_server(port)  # in a session of its own; interrupt_children stops it below
        url = f"http://127.0.0.1:{port}/api"
        print(f"Prefect server (UI and API) at http://127.0.0.1:{port}, log in {os.environ['PREFECT_HOME']}/server.log")
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            prefect_serve(deployment(cfg, cron))
    except KeyboardInterrupt:
        pass  # the runner has cancelled its runs; the server goes next
    finally:
        lifecycle.interrupt_children()  # the server (and anything else started here) ends with us


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help="serve as a scheduled deployment instead of running once")
    ap.add_argument("--cron", help="schedule for --serve (default: params.yaml pipeline.cron)")
    ap.add_argument("--port", type=int, help="port of the local Prefect server --serve starts (default: free)")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    if args.serve:
        serve(pipeline_config(load_params()), args.cron, args.port)
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
