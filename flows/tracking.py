"""MLflow tracking for stage runs: params, metrics, curves, artifacts, provenance tags, model registry.

Design choices:
- The store is a local SQLite file (`mlflow.db` in the repository, git-ignored) with artifacts
  under `mlartifacts/`, so a fresh clone tracks with no server; MLFLOW_TRACKING_URI overrides it.
- What to log comes from the stage's `dvc.yaml` entry (`flows.dag.StageSpec`): the params keys
  it declares, its metrics files (flattened to dotted keys), its plots (tabular curves with a
  `step` column become step metrics) and its outputs as artifacts. Stages stay MLflow-free.
- Every run is tagged with the git commit, a hash of the stage's params and a hash of the
  datasets it reads or writes (the sha256 that `reasoning.data.write_dataset` records).
- Every output directory `data/models/<name>` becomes a version of one registered model, with
  alias `<name>` (base, sft, grpo), tagged with a hash of its files. The files are logged as
  run artifacts, or registered by path when `tracking.log_model_files` is false (big models).
  After every pipeline run `reconcile_registry` makes the aliases name the versions whose files
  are on disk (DVC may restore a model from its cache without running its stage) and tags the
  versions registered by path whose files were overwritten since.

`python -m flows.tracking` prints the registered versions side by side (one line each).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasoning.config import from_dict, load_params, stable_hash
from reasoning.files import read_json, read_jsonl, sha256_file

from . import ROOT
from .dag import StageSpec

MODELS_DIR = Path("data/models")


@dataclass(frozen=True)
class TrackingConfig:
    """The `tracking` section of params.yaml (read by the flows only: it changes no stage output)."""
    experiment: str = "reasoning-pipeline"
    registered_model: str = "reasoning-pipeline"
    log_model_files: bool = True  # false: register big checkpoints by path instead of copying them
    max_artifact_mb: float = 200.0  # larger output files are skipped (named in a tag), not copied


def tracking_config(params: dict[str, Any]) -> TrackingConfig:
    return from_dict(TrackingConfig, params.get("tracking"), "params.yaml:tracking")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store (`<db>.lock`) for the body; no-op for servers.

    A fresh SQLite store gets its schema (MLflow's migrations) on first use, and two processes
    migrating it at once corrupt it ("duplicate column name", "table _alembic_tmp_... already
    exists"): stages run side by side (`dvc repro` of independent stages, `dvc exp run --queue`
    workers) serialise the creation of the store and of the experiment on this lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mlflow(cfg: TrackingConfig):
    """The mlflow module, pointed at the store and the experiment; creates (migrates) the store and the
    experiment the first time, once, under `store_lock`."""
    import mlflow

    uri = tracking_uri()
    with store_lock(uri):
        mlflow.set_tracking_uri(uri)
        if mlflow.get_experiment_by_name(cfg.experiment) is None:  # the first query creates the schema
            # A SQLite store keeps its artifacts beside it (MLflow's default is under the current
            # directory); a tracking server chooses its own.
            location = ((Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
                        if uri.startswith("sqlite:///") else None)
            mlflow.create_experiment(cfg.experiment, artifact_location=location)
        mlflow.set_experiment(cfg.experiment)
    return mlflow


def ensure_store(params: dict[str, Any]) -> None:
    """Create the tracking store and the experiment now (the pipeline does, before any stage runs)."""
    _mlflow(tracking_config(params))


# ---------------------------------------------------------------------------------------------
# Provenance


def git_commit(root: Path | None = None) -> str:
    """HEAD's sha, with `-dirty` when tracked files differ from it; `unknown` outside git."""
    root = root or Path.cwd()  # stages run in the repository root
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def lookup(params: dict[str, Any], key: str) -> Any:
    """`params['a']['b']` for key 'a.b'."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"params.yaml has no key {key!r} (declared in dvc.yaml)")
        node = node[part]
    return node


def stage_params(spec: StageSpec, params: dict[str, Any]) -> dict[str, Any]:
    return {key: lookup(params, key) for key in spec.params}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a.b': value}; lists stay values."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def dataset_hashes(spec: StageSpec) -> dict[str, str]:
    """sha256 of each dataset the stage reads or writes, from its `.meta.json`."""
    hashes = {}
    for p in spec.deps + spec.outs:
        meta = Path(p).with_suffix(".meta.json")
        if p.endswith(".jsonl") and meta.exists():
            hashes[p] = read_json(meta)["sha256"]
    return hashes


def dir_hash(path: Path) -> str:
    """Hash of a directory's files (relative names and contents)."""
    return stable_hash([[str(f.relative_to(path)), sha256_file(f)] for f in sorted(path.rglob("*")) if f.is_file()])


def provenance_tags(spec: StageSpec, params: dict[str, Any]) -> dict[str, str]:
    data = dataset_hashes(spec)
    return {
        "stage": spec.name,
        "git_commit": git_commit(),
        "params_hash": stable_hash(stage_params(spec, params)),
        "data_hash": stable_hash(data) if data else "none",
        "data_files": json.dumps(data, sort_keys=True),
    }


# ---------------------------------------------------------------------------------------------
# Logging a stage run


def _numeric(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def read_curve(path: Path) -> list[dict[str, Any]]:
    """Rows of a tabular plot file (.csv, .json list, .jsonl); [] for images or other shapes."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [{k: _maybe_float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        data = read_json(path)
        return data if isinstance(data, list) else []
    return []


def mlflow_key(key: str) -> str:
    """MLflow names allow letters, digits and `_-. /:`; anything else (e.g. `maj@8`) becomes `_`."""
    return re.sub(r"[^\w\-. /:]", "_", key)


def _maybe_float(v: str) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


@contextmanager
def stage_run(spec: StageSpec, params: dict[str, Any]) -> Iterator[Any]:
    """An MLflow run named after the stage, with its params and provenance tags; FAILED if the body raises,
    KILLED if it is interrupted (Ctrl-C)."""
    cfg = tracking_config(params)
    mlflow = _mlflow(cfg)
    run = mlflow.start_run(run_name=spec.name, tags=provenance_tags(spec, params))
    try:
        section = stage_params(spec, params)
        mlflow.log_params({mlflow_key(k): (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000]
                           for k, v in flatten(section).items()})  # 6000: MLflow's limit per value
        mlflow.log_dict(section, "params.json")  # the exact values, for long ones
        yield run
    except BaseException as e:
        mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
        mlflow.end_run("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")  # Ctrl-C: a kill, not a failure
        raise
    else:
        mlflow.end_run("FINISHED")


def log_outputs(spec: StageSpec, params: dict[str, Any], run: Any, wall_time_s: float) -> dict[str, Any]:
    """Log the finished stage's metrics, curves and outputs to `run`; register its models.

    Returns the logged metrics and registered versions, for the caller to report.
    """
    import mlflow
    from mlflow.entities import Metric

    cfg = tracking_config(params)
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    # Provenance again: the stage has now written its datasets (prepare_data's hash is of its outputs).
    mlflow.set_tags(provenance_tags(spec, params))

    metrics: dict[str, float] = {"wall_time_s": wall_time_s}
    for p in spec.metrics:
        for k, v in flatten(read_json(p)).items():
            if (x := _numeric(v)) is not None:
                metrics[mlflow_key(k)] = x
    mlflow.log_metrics(metrics)

    points, now_ms = [], int(time.time() * 1000)
    for p in spec.plots:
        for i, row in enumerate(read_curve(Path(p))):
            step = int(row.get("step", i))
            points += [Metric(mlflow_key(f"{Path(p).stem}.{k}"), x, now_ms, step)
                       for k, v in row.items() if k != "step" and (x := _numeric(v)) is not None]
    for i in range(0, len(points), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=points[i:i + 1000])

    skipped = []
    for p in spec.produced:
        path = Path(p)
        if not path.exists() or _inside_models(path):
            continue
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        for f in files:
            if f.stat().st_size > cfg.max_artifact_mb * 2**20:
                skipped.append(str(f))
                continue
            mlflow.log_artifact(str(f), artifact_path=str(f.parent))
    if skipped:
        mlflow.set_tag("artifacts_skipped", json.dumps(skipped)[:5000])

    versions = {alias: register_model(Path(p), alias, spec, params, run, cfg)
                for p in spec.outs if (alias := model_alias(Path(p)))}
    return {"metrics": metrics, "versions": versions}


def _inside_models(path: Path) -> bool:
    return path.parts[: len(MODELS_DIR.parts)] == MODELS_DIR.parts


def model_alias(path: Path) -> str | None:
    """'data/models/sft' -> 'sft'; None for any other output."""
    return path.name if path.parent == MODELS_DIR else None


def register_model(path: Path, alias: str, spec: StageSpec, params: dict[str, Any], run: Any,
                   cfg: TrackingConfig) -> int:
    """Register the checkpoint directory `path` as a new version with alias `alias`; return the version."""
    import mlflow

    client = mlflow.MlflowClient()
    if cfg.log_model_files:
        mlflow.log_artifacts(str(path), artifact_path=f"models/{alias}")
        source = f"{run.info.artifact_uri}/models/{alias}"
    else:
        source = path.resolve().as_uri()
    if not client.search_registered_models(f"name = '{cfg.registered_model}'"):
        client.create_registered_model(cfg.registered_model, description="Every model the pipeline produces; "
                                       "aliases name the stage that made each version (base, sft, grpo).")
    tags = {**provenance_tags(spec, params), "content_hash": dir_hash(path), "path": str(path)}
    mv = client.create_model_version(cfg.registered_model, source=source, run_id=run.info.run_id, tags=tags,
                                     description=f"{path} from stage {spec.name}")
    client.set_registered_model_alias(cfg.registered_model, alias, mv.version)
    return int(mv.version)


def find_version(path: Path, params: dict[str, Any]) -> Any | None:
    """The registered version holding exactly the files of `path` (newest first), or None."""
    import mlflow

    cfg = tracking_config(params)
    _mlflow(cfg)
    found = mlflow.MlflowClient().search_model_versions(
        f"name = '{cfg.registered_model}' and tags.content_hash = '{dir_hash(path)}'",
        order_by=["version_number DESC"])
    return found[0] if found else None


def annotate_version(path: Path, params: dict[str, Any], tags: dict[str, Any]) -> int | None:
    """Set `tags` on the registered version of the model in `path`; return its number (None if unregistered)."""
    import mlflow

    mv = find_version(path, params)
    if mv is None:
        return None
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(mv.name, mv.version, k, str(v))
    return int(mv.version)


def _by_path(mv: Any) -> bool:
    """True for a version registered by path (`log_model_files: false`): its files are the ones on disk."""
    path = mv.tags.get("path")
    return bool(path) and mv.source == Path(path).resolve().as_uri()


def reconcile_registry(params: dict[str, Any]) -> list[str]:
    """Make the registry tell the truth about what is on disk; return what changed, one line each.

    Run after every pipeline run, since DVC can restore a model directory from its cache without
    running the stage (so nothing registers it): each alias (data/models/<alias>) is pointed at the
    newest version whose content hash is the directory's (a version is registered by path when none
    has it), and each version registered by path is tagged `files_overwritten` when the files at its
    path are no longer the ones it was registered with (a rerun with `log_model_files: false`)."""
    import mlflow

    cfg = tracking_config(params)
    _mlflow(cfg)
    client, name, notes = mlflow.MlflowClient(), cfg.registered_model, []
    if not client.search_registered_models(f"name = '{name}'"):
        return notes
    versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"])
    for mv in filter(_by_path, versions):
        path = Path(mv.tags["path"])
        gone = not path.is_dir() or dir_hash(path) != mv.tags.get("content_hash")
        if gone != (mv.tags.get("files_overwritten") == "true"):
            client.set_model_version_tag(name, mv.version, "files_overwritten", str(gone).lower())
            notes.append(f"version {mv.version}: files at {path} {'overwritten' if gone else 'back'}")
    aliases = client.get_registered_model(name).aliases
    models = sorted(p for p in MODELS_DIR.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if MODELS_DIR.is_dir() else []
    for path in models:
        content = dir_hash(path)
        match = next((mv for mv in versions if mv.tags.get("content_hash") == content), None)
        if match is None:
            match = client.create_model_version(
                name, source=path.resolve().as_uri(), tags={"content_hash": content, "path": str(path),
                                                            "stage": "restored"},
                description=f"{path} as found on disk after a pipeline run (restored from DVC's cache)")
            notes.append(f"version {match.version}: registered {path} by path (no version held its files)")
        if str(aliases.get(path.name)) != str(match.version):
            client.set_registered_model_alias(name, path.name, match.version)
            notes.append(f"alias {path.name} -> version {match.version} (the files in {path})")
    return notes


# ---------------------------------------------------------------------------------------------
# Comparing versions


def versions_table(params: dict[str, Any]) -> str:
    """One line per registered version: aliases, stage, commit, its final evaluation (if any) and where its
    files are: "copied" (logged as artifacts), "on-disk" (registered by path, unchanged) or
    "OVERWRITTEN" (registered by path, and the files there have changed since)."""
    import mlflow

    cfg = tracking_config(params)
    _mlflow(cfg)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{cfg.registered_model}'", order_by=["version_number ASC"])
    if not versions:
        return f"no versions of {cfg.registered_model!r} in {tracking_uri()}: run the pipeline first (make run)"
    aliases = client.get_registered_model(cfg.registered_model).aliases  # alias -> version
    lines = [f"{'version':>7}  {'alias':<8} {'stage':<12} {'accuracy':>8}  {'95% CI':<15} {'p vs base':>9}  "
             f"{'commit':<12} {'files':<11} path"]
    for mv in versions:
        t = mv.tags
        alias = ",".join(a for a, v in aliases.items() if str(v) == str(mv.version)) or "-"
        ci = f"[{float(t['final_eval.ci_low']):.3f}, {float(t['final_eval.ci_high']):.3f}]" \
            if "final_eval.ci_low" in t else "-"
        acc = f"{float(t['final_eval.accuracy']):.3f}" if "final_eval.accuracy" in t else "-"
        p = f"{float(t['final_eval.p_value']):.2g}" if "final_eval.p_value" in t else "-"
        files = ("OVERWRITTEN" if t.get("files_overwritten") == "true" else "on-disk") if _by_path(mv) else "copied"
        lines.append(f"{mv.version:>7}  {alias:<8} {t.get('stage', '-'):<12} {acc:>8}  {ci:<15} "
                     f"{p:>9}  {t.get('git_commit', '-')[:12]:<12} {files:<11} {t.get('path', '-')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.tracking",
                                 description="Compare the registered model versions (one line each).")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--reconcile", action="store_true",
                    help="first point each alias at the version holding the files on disk (as the pipeline does)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    if args.reconcile:
        for note in reconcile_registry(params):
            print(note)
    print(versions_table(params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
