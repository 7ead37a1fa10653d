"""Run one DVC stage as a Prefect flow tracked in MLflow: `python -m flows.stage <stage> [stage args]`.

This is every stage's `cmd` in dvc.yaml. The stage always gets the args of its dvc.yaml `cmd`
(where its paths are written once) followed by the ones given here, which override them:
`python -m flows.stage inference_scaling --params params/real.yaml --methods greedy` runs the
stage on dvc.yaml's paths with the real-world params. It runs `stages.<stage>.main(args)` inside a Prefect
flow named after the stage and an MLflow run that gets the stage's params, metrics, curves,
outputs and provenance tags (see flows.tracking); checkpoint directories become registered
model versions. Markdown outputs become Prefect markdown artifacts. With `pipeline.nproc_per_node`
> 1 a stage that can split its work runs under torchrun in child processes (flows.dag.launch_command),
and the flow and the tracking stay here.

A stage's exception ends the flow run as Failed with the error as its message, and the command
prints the traceback of the stage's own frames (none of Prefect's) and, last, one line:
`ERROR: stage '<stage>' failed: <Type>: <message>`. The exit status is 75 (EX_TEMPFAIL) when
the error is a network failure or timeout, so the pipeline retries it; otherwise 1. Ctrl-C
(SIGINT) ends the stage within seconds with status 130: its MLflow run is marked KILLED, its
Prefect flow run Crashed, and its journal or checkpoint stays for the next run (flows.lifecycle).
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from reasoning.config import load_params
from reasoning.files import read_json
from reasoning.hub import is_offline
from stages.common import params_file

from . import lifecycle, tracking
from .dag import StageSpec, launch_command, pipeline_config, read_stages

EXIT_FAILED, EXIT_TRANSIENT = 1, 75
FAILURE_LINE = re.compile(r"^ERROR: stage '(?P<stage>[\w-]+)' failed: (?P<message>.*)$")


def is_transient(exc: BaseException) -> bool:
    """A network failure or timeout anywhere in the cause chain (builtin, requests or httpx classes),
    unless the machine is offline (no name resolution, HF_HUB_OFFLINE=1): retrying cannot fix that."""
    if is_offline(exc):
        return False
    e: BaseException | None = exc
    while e is not None:
        if any("Connection" in c.__name__ or "Timeout" in c.__name__ for c in type(e).__mro__):
            return True
        e = e.__cause__ or e.__context__
    return False


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def publish_final_eval(spec: StageSpec, params: dict[str, Any]) -> None:
    """Tag each evaluated model's registered version with its final accuracy, interval and p-value."""
    results = read_json(next(p for p in spec.metrics if p.endswith("metrics.json")))["models"]
    for name, path in params["final_eval"]["models"].items():
        r = results[name]
        tracking.annotate_version(Path(path), params, {
            f"final_eval.{k}": r[k] for k in ("accuracy", "ci_low", "ci_high", "p_value", "n") if k in r})


AFTER_STAGE = {"final_eval": publish_final_eval}  # stage-specific publishing, on the flows side


@flow(log_prints=True, persist_result=False)
def stage_flow(stage: str, argv: list[str]) -> Any:
    logger = get_run_logger()
    spec = read_stages()[stage]
    params = load_params(params_file(argv))  # the file the stage reads (--params), not always params.yaml
    try:
        with tracking.stage_run(spec, params) as run:
            t0 = time.perf_counter()
            command = launch_command(stage, argv, pipeline_config(params))
            if command is None:
                importlib.import_module(f"stages.{stage}").main(argv)
            else:  # pipeline.nproc_per_node: torchrun's processes run the stage, rank 0 writes its outputs
                print(f"launching {shlex.join(command)}", flush=True)
                code = subprocess.run(command).returncode
                if code:
                    raise RuntimeError(f"torchrun exited with status {code} (the ranks' errors are above)")
            logged = tracking.log_outputs(spec, params, run, time.perf_counter() - t0)
    except SystemExit as e:  # argparse rejected the stage's arguments and printed why
        return Failed(message=f"bad arguments {argv} (exit status {e.code}; the usage error is above)")
    except Exception as e:
        # Traceback from the stage's frames only (the exception is caught in this frame), and a
        # Failed state instead of a raise, so Prefect adds no engine traceback of its own.
        logger.error("".join(traceback.format_exception(e)).rstrip())
        return Failed(message=one_line(e), data=e)
    for p in spec.produced:
        if p.endswith(".md"):
            create_markdown_artifact(Path(p).read_text(), key=artifact_key(stage, Path(p).stem),
                                     description=f"{p} from stage {stage}")
    if stage in AFTER_STAGE:
        AFTER_STAGE[stage](spec, params)
    for alias, version in logged["versions"].items():
        logger.info("registered %s as version %s (alias %r)", spec.name, version, alias)
    return {"metrics": logged["metrics"], "versions": logged["versions"]}


def run_stage(stage: str, argv: list[str] | None = None) -> int:
    """Run `stage` as a flow named after it; return the exit status (0, EXIT_FAILED or EXIT_TRANSIENT).

    The stage gets the arguments of its dvc.yaml `cmd` (its paths, written there once), then `argv`:
    a flag given in `argv` overrides the same flag of the cmd (argparse keeps the last value)."""
    stages = read_stages()
    if stage not in stages:
        print(f"ERROR: stage '{stage}' failed: unknown stage; dvc.yaml defines {list(stages)}", file=sys.stderr)
        return EXIT_FAILED
    argv = stages[stage].args + list(argv or [])
    try:
        state = stage_flow.with_options(name=stage)(stage, argv, return_state=True)
    except KeyboardInterrupt:  # Prefect has marked the flow run Crashed, tracking the MLflow run KILLED
        print(f"ERROR: stage '{stage}' interrupted; rerun to resume from its journal or checkpoint",
              file=sys.stderr, flush=True)
        return lifecycle.EXIT_INTERRUPTED
    if state.is_completed():
        return 0
    print(f"ERROR: stage '{stage}' failed: {state.message}", file=sys.stderr, flush=True)
    exc = state.result(raise_on_failure=False)
    return EXIT_TRANSIENT if isinstance(exc, BaseException) and is_transient(exc) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if "-h" in argv[1:] or "--help" in argv[1:]:  # the stage's own help, no flow run
        importlib.import_module(f"stages.{argv[0]}").main(argv[1:])
    lifecycle.install_handlers()
    lifecycle.start_api()  # PREFECT_API_URL (the pipeline's server), else our own, out of Ctrl-C's reach
    try:
        return run_stage(argv[0], argv[1:])
    finally:
        lifecycle.stop_api()


if __name__ == "__main__":
    sys.exit(main())
