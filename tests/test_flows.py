"""Flows under prefect_test_harness, tracked into a temporary MLflow store.

In-process stage flows on tiny inputs (prepare_data on a small toy split, load_base re-saving
a tiny local checkpoint), and the pipeline flow on a stand-in dvc.yaml whose stages are small
scripts, so retries, ordering, failure messages and the final artifact are tested in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import dag, pipeline, stage, tracking
from reasoning.config import load_params, stable_hash
from reasoning.data import DataSourceError
from reasoning.files import read_json, sha256_file
from reasoning.weights import model_id
from tests.test_pipeline import ROOT, copy_repo, git_commit_all

pytest.importorskip("prefect")
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowFilter, FlowFilterName  # noqa: E402
from prefect.client.schemas.sorting import FlowRunSort  # noqa: E402
from prefect.settings import get_current_settings  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One temporary SQLite store for the module (creating one takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI")
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def set_params(repo: Path, **sections) -> dict:
    params = load_params(repo / "params.yaml")
    for name, value in sections.items():
        params[name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture
def repo(tmp_path, monkeypatch, prefect_api, mlflow_store, request):
    """A copy of the repository as a git repo, as the working directory, with its own registered model."""
    path = copy_repo(tmp_path / "repo")
    set_params(path, prepare_data={"world": "toy", "toy": {"n_train": 40, "n_test": 8, "seed": 1}},
               tracking={"experiment": "tests", "registered_model": f"m-{request.node.name}"[:60]})
    git_commit_all(path)
    monkeypatch.chdir(path)
    return path


def flow_runs(flow_name: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=100)


def artifacts(key: str) -> list[dict]:
    """Artifacts with `key`, newest first. Over plain HTTP: Prefect 3.8.8's client sends `null` for
    the filters not given, which its own server refuses (422)."""
    import httpx

    r = httpx.post(f"{get_current_settings().api.url}/artifacts/filter",
                   json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 10, "offset": 0})
    r.raise_for_status()
    return r.json()


def runs_of(stage_name: str, experiment: str = "tests") -> list:
    import mlflow

    return mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.stage = '{stage_name}'",
                              output_format="list", order_by=["start_time DESC"])


# ---------------------------------------------------------------------------------------------
# Stage flows


def test_stage_flow_logs_params_metrics_artifacts_and_provenance(repo):
    import mlflow

    before = len(flow_runs("prepare_data"))
    assert stage.run_stage("prepare_data") == 0

    [run] = runs_of("prepare_data")[:1]
    assert run.info.status == "FINISHED"
    assert run.data.params["prepare_data.toy.n_train"] == "40"
    assert run.data.params["prepare_data.world"] == "toy"
    assert run.data.metrics["train_rows"] == 40 and run.data.metrics["test_rows"] == 8
    assert run.data.metrics["wall_time_s"] > 0
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == head  # the stage's outputs are git-ignored: the tree stays clean
    params = load_params("params.yaml")
    declared = {"prepare_data": params["prepare_data"], "pipeline.limit": params["pipeline"]["limit"]}
    assert tags["params_hash"] == stable_hash(declared)  # the params dvc.yaml declares for the stage
    shas = {p: read_json(Path(p).with_suffix(".meta.json"))["sha256"]
            for p in ("data/datasets/train.jsonl", "data/datasets/test.jsonl")}
    assert shas["data/datasets/train.jsonl"] == sha256_file("data/datasets/train.jsonl")
    assert tags["data_hash"] == stable_hash(shas)

    artifacts = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(repo / "dl"))
    assert (Path(artifacts) / "data/datasets/train.jsonl").read_bytes() == Path("data/datasets/train.jsonl").read_bytes()
    assert read_json(Path(artifacts) / "data/metrics/prepare_data.json")["train_rows"] == 40
    assert read_json(Path(artifacts) / "params.json") == declared

    runs = flow_runs("prepare_data")
    assert len(runs) == before + 1 and all(r.state.is_completed() for r in runs)


def test_stage_flow_logs_the_params_file_the_stage_reads(repo):
    """`--params other.yaml`: MLflow gets other.yaml's section, the one the stage ran with."""
    other = load_params("params.yaml")
    other["prepare_data"]["toy"]["n_train"] = 24
    Path("other.yaml").write_text(yaml.safe_dump(other))
    argv = dag.read_stages()["prepare_data"].args + ["--params", "other.yaml"]
    assert stage.run_stage("prepare_data", argv) == 0
    [run] = runs_of("prepare_data")[:1]
    assert run.data.metrics["train_rows"] == 24 and run.data.params["prepare_data.toy.n_train"] == "24"


def test_stage_args_come_from_the_dvc_cmd():
    """The paths are written once, in dvc.yaml's cmd: `python -m flows.stage <name>` alone runs with them."""
    specs = dag.read_stages(ROOT)
    assert specs["evaluate"].args == ["--model", "data/models/base", "--data", "data/datasets/test.jsonl",
                                      "--out", "data/eval/base", "--state", "runs/evaluate", "--no-progress"]
    bad = dag.StageSpec(name="x", cmd="python -m stages.x --out y")
    with pytest.raises(ValueError, match="must start with 'python -m flows.stage x'"):
        bad.args


def test_load_base_registers_versions_with_alias(repo, tiny_ckpt):
    import mlflow

    params = set_params(repo, load_base={"source": str(tiny_ckpt)})
    name = params["tracking"]["registered_model"]
    assert stage.run_stage("prepare_data") == 0
    assert stage.run_stage("load_base") == 0

    meta = read_json("data/models/base/metadata.json")
    assert meta["source"] == str(tiny_ckpt) and meta["params"] > 0
    assert meta["model_id"] == model_id("data/models/base") == model_id(tiny_ckpt)
    client = mlflow.MlflowClient()
    v1 = client.get_model_version_by_alias(name, "base")
    assert int(v1.version) == 1 and v1.tags["content_hash"] == tracking.dir_hash(Path("data/models/base"))
    assert v1.tags["stage"] == "load_base" and v1.run_id == runs_of("load_base")[0].info.run_id
    copied = Path(mlflow.artifacts.download_artifacts(artifact_uri=v1.source, dst_path=str(repo / "dl")))
    assert model_id(copied) == meta["model_id"]
    # the curve file exists for every source; a loaded checkpoint has no training steps
    assert read_json("data/plots/load_base.json") == []

    # Big models are registered by path; the alias moves to the newest version.
    set_params(repo, tracking={**params["tracking"], "log_model_files": False})
    assert stage.run_stage("load_base") == 0
    v2 = client.get_model_version_by_alias(name, "base")
    assert int(v2.version) == 2 and v2.source == (repo / "data/models/base").resolve().as_uri()

    table = tracking.versions_table(load_params("params.yaml")).splitlines()
    assert len(table) == 3 and table[2].split()[:3] == ["2", "base", "load_base"]
    assert table[1].split()[:2] == ["1", "-"]


def test_registry_follows_the_files_on_disk(repo, tiny_ckpt, tmp_path):
    """(a) DVC restores a model from its run cache without running its stage: the alias must follow the
    files. (b) With log_model_files: false a rerun overwrites the files a version points at: it is tagged."""
    import mlflow

    from tests.conftest import make_checkpoint

    other = make_checkpoint(tmp_path / "other", "tiny", tiny_ckpt / "tokenizer.json", seed=1)
    params = set_params(repo, load_base={"source": str(tiny_ckpt)})
    name, client = params["tracking"]["registered_model"], mlflow.MlflowClient()
    assert stage.run_stage("prepare_data") == 0 and stage.run_stage("load_base") == 0  # version 1: files A
    files_a = tmp_path / "a"
    shutil.copytree("data/models/base", files_a)
    set_params(repo, load_base={"source": str(other)})
    assert stage.run_stage("load_base") == 0  # version 2: files B, alias base -> 2
    shutil.rmtree("data/models/base")
    shutil.copytree(files_a, "data/models/base")  # what `dvc repro` restoring A from its run cache does
    assert int(client.get_model_version_by_alias(name, "base").version) == 2  # the lie
    notes = tracking.reconcile_registry(load_params("params.yaml"))
    assert int(client.get_model_version_by_alias(name, "base").version) == 1 and notes == [
        "alias base -> version 1 (the files in data/models/base)"]
    assert tracking.reconcile_registry(load_params("params.yaml")) == []  # nothing left to fix

    # (b) registered by path (big models), then overwritten by a rerun of the stage with other weights
    params = set_params(repo, tracking={**params["tracking"], "log_model_files": False},
                        load_base={"source": str(tiny_ckpt)})
    assert stage.run_stage("load_base") == 0  # version 3, by path
    set_params(repo, load_base={"source": str(other)})
    assert stage.run_stage("load_base") == 0  # version 4, by path: the files of version 3 are gone
    notes = tracking.reconcile_registry(load_params("params.yaml"))
    assert notes == ["version 3: files at data/models/base overwritten"]
    assert client.get_model_version(name, "3").tags["files_overwritten"] == "true"
    assert int(client.get_model_version_by_alias(name, "base").version) == 4
    rows = {line.split()[0]: line.split() for line in tracking.versions_table(load_params("params.yaml")).splitlines()}
    assert rows["3"][-2] == "OVERWRITTEN" and rows["4"][-2] == "on-disk" and rows["1"][-2] == "copied"


def test_stage_failure_is_one_line_and_failed_in_prefect_and_mlflow(repo, capsys):
    set_params(repo, prepare_data={"world": "toy", "toy": {"n_train": 40, "n_tset": 8}})
    assert stage.run_stage("prepare_data") == stage.EXIT_FAILED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    m = stage.FAILURE_LINE.match(last)
    assert m and m.group("stage") == "prepare_data"
    assert m.group("message").startswith("ValueError: params.yaml:prepare_data.toy: unknown key(s) ['n_tset']")

    [run] = runs_of("prepare_data")[:1]
    assert run.info.status == "FAILED" and "n_tset" in run.data.tags["error"]
    latest = max(flow_runs("prepare_data"), key=lambda r: r.created)
    assert latest.state.is_failed() and "n_tset" in latest.state.message


def test_network_failure_exits_75_for_a_retry(repo, monkeypatch, capsys):
    from stages import prepare_data

    def offline(argv):
        try:
            raise ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub (LocalEntryNotFoundError)")
        except ConnectionError as e:
            raise DataSourceError("cannot reach the Hugging Face Hub") from e

    monkeypatch.setattr(prepare_data, "main", offline)
    assert stage.run_stage("prepare_data") == stage.EXIT_TRANSIENT
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "ERROR: stage 'prepare_data' failed: DataSourceError: cannot reach the Hugging Face Hub")


def test_unknown_stage_and_bad_arguments_are_reported(repo, capsys):
    assert stage.run_stage("nope") == stage.EXIT_FAILED
    assert "unknown stage" in capsys.readouterr().err
    assert stage.run_stage("evaluate", ["--out", "x", "--no-such-flag"]) == stage.EXIT_FAILED
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no-such-flag" in err  # argparse's own message
    assert err.strip().splitlines()[-1].startswith("ERROR: stage 'evaluate' failed: bad arguments [")
    # the stage got dvc.yaml's arguments, then the ones given, which win
    assert "'--out', 'data/eval/base', '--state', 'runs/evaluate', '--no-progress', '--out', 'x', '--no-such-flag'] " \
        "(exit status 2" in err


TRACK_ONE_RUN = """
import os, sys, time
from pathlib import Path
from flows import tracking
go = Path(sys.argv[1])
while not go.exists():  # start together: both find the store missing
    time.sleep(0.001)
mlflow = tracking._mlflow(tracking.TrackingConfig(experiment="race"))
with mlflow.start_run(run_name=sys.argv[2]):
    mlflow.log_metric("x", 1.0)
"""


def test_two_stages_starting_on_a_fresh_store_both_track(tmp_path):
    """Two stage processes tracking at the same moment on a new SQLite store (dvc repro of independent
    stages, dvc exp queue workers): the store is created once, under a lock, and both runs land."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", TRACK_ONE_RUN, str(go), name], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    time.sleep(3)  # both have imported mlflow and wait at the barrier
    go.touch()
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b"]


def test_transient_errors_are_told_apart():
    try:
        try:
            raise ConnectionError("hub unreachable")
        except ConnectionError as e:
            raise DataSourceError("cannot reach the Hugging Face Hub") from e
    except DataSourceError as e:
        wrapped = e
    assert stage.is_transient(wrapped)
    assert stage.is_transient(TimeoutError())
    assert not stage.is_transient(ValueError("bad params"))

    out = ["Running stage 'x':\n", "ERROR: stage 'x' failed: ValueError: boom\n",
           "ERROR: failed to reproduce 'x': failed to run: python -m flows.stage x, exited with 1\n"]
    err = pipeline.failure("x", 255, out)
    assert str(err) == "stage 'x' failed: ValueError: boom" and not err.transient
    out[-1] = out[-1].replace("exited with 1", f"exited with {stage.EXIT_TRANSIENT}")
    assert pipeline.failure("x", 255, out).transient
    err = pipeline.failure("x", 255, ["ERROR: Unable to acquire lock. Most likely another DVC process is running\n"])
    assert err.transient and "Unable to acquire lock" in str(err)
    busy = [  # dvc 3's output when another `dvc repro` holds an output's read/write lock (captured)
        "ERROR: failed to reproduce 'prepare_data': '/tmp/repo/data/metrics/prepare_data.json' is busy, it is "
        "being blocked by:\n",
        "  (PID 16979): dvc repro prepare_data\n", "\n",
        "If there are no processes with such PIDs, you can manually remove '/tmp/repo/.dvc/tmp/rwlock' and try "
        "again.\n"]
    err = pipeline.failure("prepare_data", 255, busy)
    assert err.transient and "is busy, it is being blocked by" in str(err)


# ---------------------------------------------------------------------------------------------
# The pipeline flow, on stand-in stages


STANDIN_STAGES = {
    # Listed out of order: the flow orders stages by their deps and outs.
    "table": {"cmd": "python table.py", "deps": ["out/flaky.txt", "table.py"], "outs": ["data/final/table.md"]},
    "flaky": {"cmd": "python flaky.py", "deps": ["flaky.py"], "outs": ["out/flaky.txt"]},
}
FLAKY = """\
import pathlib, sys
attempts = pathlib.Path("attempts.txt")
attempts.write_text(attempts.read_text() + "flaky\\n" if attempts.exists() else "flaky\\n")
mode = pathlib.Path("mode.txt").read_text().strip()
if mode == "transient" and attempts.read_text().count("flaky") == 1:
    sys.exit({transient})
if mode == "error":
    print("ERROR: stage 'flaky' failed: ValueError: boom", file=sys.stderr)
    sys.exit(1)
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/flaky.txt").write_text("ok")
"""
TABLE = """\
import pathlib
pathlib.Path("data/final").mkdir(parents=True, exist_ok=True)
pathlib.Path("data/final/table.md").write_text("| model | accuracy |\\n|---|---|\\n| base | 0.5 |\\n")
"""


@pytest.fixture
def standin(tmp_path, prefect_api):
    root = tmp_path / "standin"
    (root / ".dvc").mkdir(parents=True)
    (root / ".dvc/config").write_text((ROOT / ".dvc/config").read_text())
    (root / ".gitignore").write_text("attempts.txt\nmode.txt\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": STANDIN_STAGES}, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump({"pipeline": {"retries": 2, "retry_delay_s": 0}}))
    (root / "flaky.py").write_text(FLAKY.format(transient=stage.EXIT_TRANSIENT))
    (root / "table.py").write_text(TABLE)
    git_commit_all(root)
    return root


def test_pipeline_orders_stages_retries_transient_failures_and_publishes_the_table(standin):
    (standin / "mode.txt").write_text("transient")
    state = pipeline.pipeline(root=str(standin), return_state=True)
    assert state.is_completed(), state.message
    assert list(state.result()) == ["flaky", "table"]
    assert (standin / "attempts.txt").read_text().count("flaky") == 2  # failed once, retried once
    [art] = artifacts("final-comparison")[:1]
    assert art["type"] == "markdown" and art["data"] == (standin / "data/final/table.md").read_text()

    again = pipeline.pipeline(root=str(standin), return_state=True)
    assert {what for what, _ in again.result().values()} == {"unchanged"}
    assert (standin / "attempts.txt").read_text().count("flaky") == 2


def test_pipeline_stops_at_a_stage_error_without_retrying(standin):
    (standin / "mode.txt").write_text("error")
    state = pipeline.pipeline(root=str(standin), return_state=True)
    assert state.is_failed()
    assert state.message == "stage 'flaky' failed: ValueError: boom"
    assert (standin / "attempts.txt").read_text().count("flaky") == 1
    assert not (standin / "data/final/table.md").exists()


# ---------------------------------------------------------------------------------------------
# Deployment, DAG


def test_deployment_is_scheduled_by_cron(prefect_api):
    cfg = pipeline.pipeline_config(load_params(ROOT / "params.yaml"))
    for cron in (None, "*/15 6-18 * * 1-5"):
        dep = pipeline.deployment(cfg, cron)
        dep_id = dep.apply()
        with get_client(sync_client=True) as client:
            stored = client.read_deployment(dep_id)
        assert stored.name == cfg.deployment
        assert [s.schedule.cron for s in stored.schedules] == [cron or cfg.cron]
        assert stored.entrypoint == "flows.pipeline.pipeline"


def test_serve_command_line_takes_cron_and_port(monkeypatch):
    seen = {}
    monkeypatch.setattr(pipeline, "serve", lambda cfg, cron, port: seen.update(cfg=cfg, cron=cron, port=port))
    monkeypatch.chdir(ROOT)
    assert pipeline.main(["--serve", "--cron", "0 1 * * *", "--port", "4321"]) == 0
    assert seen["cron"] == "0 1 * * *" and seen["port"] == 4321
    assert seen["cfg"] == pipeline.pipeline_config(load_params(ROOT / "params.yaml"))


@pytest.mark.slow
def test_serve_starts_a_local_server_that_schedules_runs(tmp_path):
    """`python -m flows.pipeline --serve --cron ...` from a fresh clone: a local server, the deployment
    on its cron schedule, runs scheduled by Prefect's scheduler; stopping it stops the server."""
    import httpx

    repo = copy_repo(tmp_path / "repo")
    git_commit_all(repo)
    port = pipeline._free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1"}  # schedule within seconds, not a minute
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "--serve", "--cron", "*/10 * * * *",
                             "--port", str(port)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, scheduled, deployments = time.monotonic() + 240, [], []
        while time.monotonic() < deadline and not scheduled and proc.poll() is None:
            time.sleep(2)
            try:
                if not deployments:
                    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
                    deadline = min(deadline, time.monotonic() + 60) if deployments else deadline
                scheduled = httpx.post(f"{api}/flow_runs/filter", timeout=5, json={
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 5}).json()
            except httpx.HTTPError:
                continue  # the server is still starting
        assert [(d["name"], [x["schedule"]["cron"] for x in d["schedules"]]) for d in deployments] == [
            ("reasoning-pipeline", ["*/10 * * * *"])]
        log = Path(env["PREFECT_HOME"], "server.log")
        assert scheduled, "no scheduled runs; server log tail:\n" + log.read_text()[-2000:]
        assert all(r["deployment_id"] == deployments[0]["id"] for r in scheduled)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)
    assert f"http://127.0.0.1:{port}" in out


def test_stage_order_follows_deps_not_file_order():
    specs = {n: dag.StageSpec(n, "true", deps=tuple(d), outs=tuple(o)) for n, d, o in [
        ("c", ["data/b/x.json"], ["data/c"]),
        ("a", [], ["data/a.jsonl"]),
        ("b", ["data/a.jsonl"], ["data/b"]),
        ("d", [], ["data/d"]),
    ]}
    assert dag.stage_order(specs) == ["a", "b", "c", "d"]
    cyclic = {**specs, "a": dag.StageSpec("a", "true", deps=("data/c",), outs=("data/a.jsonl",))}
    with pytest.raises(ValueError, match="cycle"):
        dag.stage_order(cyclic)


def test_real_pipeline_order():
    order = dag.stage_order(dag.read_stages(ROOT))
    assert order.index("prepare_data") < order.index("load_base") < order.index("evaluate")
    assert order[-1] == "final_eval"


def test_stage_help_runs_without_a_flow():
    out = subprocess.run([sys.executable, "-m", "flows.stage", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "python -m flows.stage <stage>" in out.stdout
    for name in ("prepare_data", "load_base", "final_eval"):
        out = subprocess.run([sys.executable, "-m", f"stages.{name}", "--help"], cwd=ROOT, capture_output=True,
                             text=True)
        assert out.returncode == 0 and f"Stage `{name}`" in out.stdout, out.stderr


# ---------------------------------------------------------------------------------------------
# Launching a stage over several processes (pipeline.nproc_per_node)


def test_launch_command_runs_only_distributed_stages_under_torchrun():
    one = dag.PipelineConfig()
    assert dag.launch_command("evaluate", ["--out", "x"], one) is None  # one process: run in place
    eight = dag.PipelineConfig(nproc_per_node=8)
    cmd = dag.launch_command("grpo", ["--out", "x"], eight)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "8",
                       "-m", "stages.grpo", "--out", "x"]
    assert dag.launch_command("prepare_data", [], eight) is None and dag.launch_command("load_base", [], eight) is None
    nodes = dag.launch_command("evaluate", [], dag.PipelineConfig(nproc_per_node=4, nnodes=2,
                                                                   rdzv_endpoint="10.0.0.1:29400"))
    assert nodes[3:11] == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.1:29400",
                           "--rdzv-id", "reasoning-pipeline-evaluate"]
    with pytest.raises(ValueError, match="nnodes > 1 needs rdzv_endpoint"):
        dag.PipelineConfig(nnodes=2)
    with pytest.raises(ValueError, match="must be >= 1"):
        dag.PipelineConfig(nproc_per_node=0)


@pytest.mark.slow
def test_a_stage_runs_under_torchrun_when_the_pipeline_says_so(repo, tiny_ckpt, capfd):
    """pipeline.nproc_per_node: 2 runs evaluate as two gloo processes behind the same flow and MLflow run,
    with the outputs of a one-process run; a rank's failure fails the stage with one line."""
    params = set_params(repo, load_base={"source": str(tiny_ckpt)},
                        evaluate={"batch_size": 2, "device": "cpu", "dtype": "float32",
                                  "sampling": {"max_new_tokens": 4}})
    assert stage.run_stage("prepare_data") == 0 and stage.run_stage("load_base") == 0
    assert stage.run_stage("evaluate") == 0
    alone = read_json("data/eval/base/metrics.json")
    set_params(repo, pipeline={**params["pipeline"], "nproc_per_node": 2})
    shutil.rmtree("runs/evaluate")  # generate again, split over two ranks
    capfd.readouterr()
    assert stage.run_stage("evaluate") == 0
    assert "Setting OMP_NUM_THREADS environment variable for each process" in capfd.readouterr().err  # torchrun's
    split = read_json("data/eval/base/metrics.json")
    timing = ("wall_time_s", "tokens_per_s", "peak_memory_bytes")
    assert {k: v for k, v in split.items() if k not in timing} == {k: v for k, v in alone.items() if k not in timing}
    assert runs_of("evaluate")[0].data.metrics["accuracy"] == split["accuracy"]
    assert not list(Path("runs/evaluate").rglob("*.rank*.jsonl"))
    # a rank that fails fails the stage, with the launcher's status in its one line
    assert stage.run_stage("evaluate", ["--model", "data/models/missing"]) == stage.EXIT_FAILED
    assert "failed: RuntimeError: torchrun exited with status 1" in capfd.readouterr().err
