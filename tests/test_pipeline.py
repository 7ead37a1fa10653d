"""The pipeline as a whole: dvc.yaml's declarations, and the toy pipeline end to end at a tiny size.

The end-to-end tests run `python -m flows.pipeline` (what `make run` runs) in a copy of the
repository with tiny params, with Prefect's database and the MLflow store in temporary
directories: the first run builds everything, a second run with nothing changed does nothing,
and a bad parameter fails with the stage's own one-line error.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reasoning.config import from_dict, load_params, load_section
from reasoning.files import write_jsonl
from reasoning.toy.task import make_splits

ROOT = Path(__file__).resolve().parents[1]
REPO_FILES = ("reasoning", "stages", "flows", "dvc.yaml", "params.yaml", "params", ".dvc/config",
              ".dvc/.gitignore", ".dvcignore", ".gitignore")
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGES = tuple(DVC_STAGES)


def copy_repo(dest: Path) -> Path:
    """The files the pipeline needs (no data, stores or caches), as a fresh clone would have them."""
    for name in REPO_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def git_commit_all(repo: Path) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    if not (repo / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], cwd=repo, check=True)


def stage_config_classes() -> dict:
    from reasoning.distill import SFTConfig, TracesConfig
    from reasoning.evaluate import EvalConfig
    from reasoning.scaling import ScalingConfig
    from stages.final_eval import FinalEvalConfig
    from stages.grpo import GRPOStageConfig
    from stages.load_base import LoadBaseConfig
    from stages.prepare_data import PrepareConfig

    return {"prepare_data": PrepareConfig, "load_base": LoadBaseConfig, "evaluate": EvalConfig,
            "inference_scaling": ScalingConfig, "teacher_traces": TracesConfig, "distill_sft": SFTConfig,
            "grpo": GRPOStageConfig, "final_eval": FinalEvalConfig}


# ---------------------------------------------------------------------------------------------
# Declarations


def _module_file(name: str) -> Path | None:
    """The file of module `name`: a .py file, or a subpackage's __init__.py (whose imports are followed:
    a package such as reasoning.grading re-exports its modules); top-level __init__s aside."""
    p = ROOT.joinpath(*name.split("."))
    if p.with_suffix(".py").exists():
        return p.with_suffix(".py")
    return p / "__init__.py" if "." in name and (p / "__init__.py").exists() else None


def imported_files(path: Path) -> set[str]:
    """Project modules (reasoning/, stages/) that `path` imports, transitively; package __init__s aside."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        package = f.relative_to(ROOT).with_suffix("").parts[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = list(package[: len(package) - node.level + 1]) if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [f"{module}.{a.name}" for a in node.names]
            todo += [m for n in names if n.split(".")[0] in ("reasoning", "stages") and (m := _module_file(n))]
    return {str(f.relative_to(ROOT)) for f in seen}


@pytest.mark.parametrize("name", STAGES)
def test_stage_deps_cover_every_module_it_imports(name):
    spec = DVC_STAGES[name]
    deps = spec["deps"]
    missing = [m for m in sorted(imported_files(ROOT / "stages" / f"{name}.py"))
               if not any(m == d or m.startswith(d.rstrip("/") + "/") for d in deps)]
    assert not missing, f"dvc.yaml stage {name} lacks deps {missing}: a change there would not rerun it"
    assert spec["cmd"].startswith(f"python -m flows.stage {name}")
    assert spec["params"][0] == name


def test_final_eval_depends_on_every_model_it_compares():
    deps = DVC_STAGES["final_eval"]["deps"]
    for params_file in ("params.yaml", "params/real.yaml"):
        models = load_params(ROOT / params_file)["final_eval"]["models"]
        assert set(models.values()) <= set(deps), f"{params_file}: add each final_eval model dir to its deps"


@pytest.mark.parametrize("params_file", ["params.yaml", "params/real.yaml"])
def test_grpo_depends_on_the_model_it_starts_from(params_file):
    start = load_params(ROOT / params_file)["grpo"]["start_from"]
    assert f"data/models/{start}" in DVC_STAGES["grpo"]["deps"], "grpo's dvc.yaml deps must name its start model"


def test_both_worlds_set_every_param_the_stages_read():
    from flows.tracking import lookup

    toy, real = load_params(ROOT / "params.yaml"), load_params(ROOT / "params/real.yaml")
    assert set(toy) == set(real) == set(STAGES) | {"tracking", "pipeline"}
    for name, spec in DVC_STAGES.items():
        for key in spec.get("params", []):
            lookup(toy, key), lookup(real, key)  # raises KeyError naming the key


@pytest.mark.parametrize("params_file", ["params.yaml", "params/real.yaml"])
def test_params_sections_parse_into_their_configs(params_file):
    from flows.dag import PipelineConfig
    from flows.tracking import TrackingConfig

    params = load_params(ROOT / params_file)
    for section, cls in stage_config_classes().items():
        load_section(cls, section, ROOT / params_file)
    from_dict(TrackingConfig, params["tracking"])
    from_dict(PipelineConfig, params["pipeline"])


def test_real_world_settings():
    real = {s: load_section(c, s, ROOT / "params/real.yaml") for s, c in stage_config_classes().items()}
    assert real["prepare_data"].world == "sources" and "MATH-500" in real["prepare_data"].test.source
    assert real["load_base"].source.startswith("hf:Qwen/Qwen3-0.6B")
    assert real["evaluate"].sampling.temperature == 0 and real["evaluate"].sampling.max_new_tokens == 2048
    assert real["evaluate"].prompt.template == "base"


def test_prepare_data_sources_world_removes_overlap(tmp_path, monkeypatch):
    """The real world's path on local files: MATH-500 rows leave the training split."""
    from reasoning.files import read_jsonl, write_jsonl
    from stages import prepare_data

    def row(i):
        return {"unique_id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i),
                "solution": "", "level": 1, "subject": "Algebra"}

    write_jsonl(tmp_path / "test.jsonl", [row(i) for i in range(3)])
    write_jsonl(tmp_path / "train.jsonl", [row(i) for i in range(2, 10)])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare_data": {
        "world": "sources", "test": {"source": str(tmp_path / "test.jsonl")},
        "train": {"source": str(tmp_path / "train.jsonl")}}}))
    monkeypatch.chdir(tmp_path)
    metrics = prepare_data.main(["--out", "data/datasets", "--metrics", "data/metrics/prepare_data.json"])
    assert metrics.pop("peak_memory_bytes") > 0
    assert metrics == {"train_rows": 7, "test_rows": 3, "dropped_overlap": 1, "skipped_train": 0, "skipped_test": 0}
    assert [r["id"] for r in read_jsonl("data/datasets/train.jsonl")] == [f"p{i}" for i in range(3, 10)]
    assert json.loads(Path("data/datasets/train.meta.json").read_text())["dropped_overlap"] == 1


def test_pipeline_limit_cuts_the_test_split_for_a_trial_run(tmp_path, monkeypatch):
    """pipeline.limit: N, the one trial knob: the test split is its first N problems, in both worlds."""
    from reasoning.files import read_jsonl
    from stages import prepare_data

    monkeypatch.chdir(tmp_path)
    argv = ["--out", "data/datasets", "--metrics", "m.json"]
    toy = {"world": "toy", "toy": {"n_train": 30, "n_test": 12, "seed": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare_data": toy, "pipeline": {"limit": 5}}))
    assert prepare_data.main(argv)["test_rows"] == 5
    first_five = [r["id"] for r in read_jsonl("data/datasets/test.jsonl")]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare_data": toy, "pipeline": {"limit": None}}))
    assert prepare_data.main(argv)["test_rows"] == 12
    assert [r["id"] for r in read_jsonl("data/datasets/test.jsonl")][:5] == first_five
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare_data": toy, "pipeline": {"limit": 0}}))
    with pytest.raises(ValueError, match="pipeline.limit: expected a positive number"):
        prepare_data.main(argv)



# ---------------------------------------------------------------------------------------------
# The README's `dvc exp run` commands work in both worlds

WORLDS = ("params.yaml", "params/real.yaml")


def readme_exp_commands() -> list[list[str]]:
    """Every `dvc exp run` command of the README's code blocks, as argv (continuation lines joined)."""
    import shlex

    lines = (ROOT / "README.md").read_text().splitlines()
    commands, i = [], 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("dvc exp run"):
            while line.endswith("\\"):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            commands.append(shlex.split(line))
        i += 1
    return commands


def set_params(argv: list[str]) -> list[str]:
    """The `-S`/`--set-param` values of a `dvc exp run` argv."""
    return [argv[i + 1] for i, a in enumerate(argv) if a in ("-S", "--set-param")]


def test_readme_documents_the_chapter_7_experiments():
    commands = readme_exp_commands()
    assert len(commands) >= 4 and all(set_params(c) for c in commands)
    assert sum(c[3:4] == ["grpo"] for c in commands) >= 3


def _override_keys(override: str) -> list[str]:
    """The dotted keys an override `a.b=value` sets: `a.b`, and `a.b.k` for each key of a `{k: v}` value."""
    key, value = override.split("=", 1)
    if value.startswith("{"):
        return [f"{key}.{kv.split(':', 1)[0].strip()}" for kv in value.strip("{}").split(",")]
    return [key]


@pytest.mark.parametrize("params_file", WORLDS)
def test_every_readme_set_param_key_is_in_the_params(params_file):
    """DVC (Hydra) refuses `-S` on a key the file does not have ("Key ... is not in struct")."""
    from flows.tracking import lookup

    params = load_params(ROOT / params_file)
    missing = []
    for argv in readme_exp_commands():
        for key in (k for o in set_params(argv) for k in _override_keys(o)):
            try:
                lookup(params, key)
            except KeyError:
                missing.append(key)
    assert not missing, f"{params_file} lacks keys the README's `dvc exp run` commands set: {missing}"


@pytest.mark.parametrize("params_file", WORLDS)
def test_readme_exp_commands_give_params_every_stage_reads(tmp_path, params_file):
    """Each README command's `-S` values, applied by DVC's own writer, give a file every stage loads."""
    from dvc.utils.hydra import apply_overrides
    from flows.dag import PipelineConfig
    from flows.tracking import TrackingConfig

    for n, argv in enumerate(readme_exp_commands()):
        path = tmp_path / f"params{n}.yaml"
        shutil.copy(ROOT / params_file, path)
        apply_overrides(path, set_params(argv))
        for section, cls in stage_config_classes().items():
            load_section(cls, section, path)
        load_section(TrackingConfig, "tracking", path), load_section(PipelineConfig, "pipeline", path)


def exp_repo(dest: Path, params_file: str) -> Path:
    """A git copy of the repository with `params_file` as params.yaml and a placeholder for every file
    dvc.yaml names (committed to git, so `dvc exp run --dry`, which runs in a clone, finds every dep)."""
    repo = copy_repo(dest)
    shutil.copy(ROOT / params_file, repo / "params.yaml")
    for spec in DVC_STAGES.values():
        for kind in ("deps", "outs", "metrics", "plots"):
            for entry in spec.get(kind, []):
                p = repo / (next(iter(entry)) if isinstance(entry, dict) else entry)
                if p.exists():
                    continue
                if p.suffix:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text("{}" if p.suffix == ".json" else "")
                else:
                    (p / "placeholder").parent.mkdir(parents=True, exist_ok=True)
                    (p / "placeholder").write_text("")
    git_commit_all(repo)
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("params_file", WORLDS)
def test_readme_dvc_exp_run_commands_dry_run(tmp_path, params_file):
    """Every README `dvc exp run` command, with `--dry`, in a git copy of the repository."""
    repo = exp_repo(tmp_path / "repo", params_file)
    for argv in readme_exp_commands():
        cmd = [sys.executable, "-m", "dvc", "exp", "run", "--dry", *argv[3:]]
        done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "ERROR" not in done.stderr, f"{' '.join(argv)}\n{done.stderr[-2000:]}"
        assert "Running stage" in done.stdout, done.stdout[-2000:]


# ---------------------------------------------------------------------------------------------
# End to end, tiny


# Tiny settings for the end-to-end run; a new stage adds its own here.
TINY = {
    "prepare_data": {"world": "toy", "toy": {"n_train": 200, "n_test": 16, "seed": 0}},
    "load_base": {"source": "toy", "toy": {
        "vocab_size": 300, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 64,
        "train": {"lr": 3e-3, "max_steps": 8, "batch_size": 16, "micro_batch_size": 16, "max_len": 256}}},
    "inference_scaling": {"batch_size": 32, "methods": [
        {"name": "direct", "sampling": {"max_new_tokens": 16}},
        {"name": "sc", "sampling": {"max_new_tokens": 16, "temperature": 0.9, "top_p": 0.9}, "n": 2,
         "aggregate": "majority", "budgets": [1, 2]}]},
    "distill_sft": {"think": True, "val_problems": 2, "train": {
        "lr": 1e-3, "warmup_steps": 0, "epochs": 1, "batch_size": 8, "micro_batch_size": 8, "max_len": 256}},
    "grpo": {"start_from": "base",
             "eval": {"limit": 8, "batch_size": 8, "prompt": {"template": "base"},
                      "sampling": {"max_new_tokens": 16, "temperature": 0.0}},
             "train": {"prompt": {"template": "base"}, "num_generations": 2, "prompts_per_step": 2,
                       "max_new_tokens": 16, "generation_batch_size": 8, "dynamic_sampling": "none",
                       "learning_rate": 1e-4, "max_steps": 2, "micro_batch_size": 4, "eval_every": 2,
                       "checkpoint_every": 0}},
}


class Toy:
    def __init__(self, tmp: Path):
        self.repo = copy_repo(tmp / "repo")
        params = load_params(self.repo / "params.yaml")
        params.update(TINY)
        params["evaluate"].update(batch_size=16, sampling={"max_new_tokens": 24, "temperature": 0.0})
        # An untrained tiny model verifies no trace of its own: the tiny teacher is a file of traces
        # written from the worked solutions (the path the book's published traces take).
        splits = TINY["prepare_data"]["toy"]
        train, _ = make_splits(splits["n_train"], splits["n_test"], splits["seed"])  # prepare_data's rows
        write_jsonl(self.repo / "tiny_traces.jsonl", [
            {"problem": r["problem"], "message_thinking": r["solution"].rsplit("\n", 1)[0],
             "message_content": f"\\boxed{{{r['answer']}}}"} for r in train[:24]])
        params["teacher_traces"].update(teacher={"kind": "file", "model": "tiny_traces.jsonl"}, n=1, limit=24,
                                        sampling={"max_new_tokens": 24, "temperature": 0.7})
        (self.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git_commit_all(self.repo)
        self.mlflow_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        self.env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "MLFLOW_TRACKING_URI": self.mlflow_uri}
        self.env.pop("PREFECT_API_URL", None)

    def run(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=self.repo, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def dvc(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("-m", "dvc", *args)

    def mlflow(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.mlflow_uri)


def stages_line(out: str) -> str:
    """The pipeline's summary line: `Stages: prepare_data ran (3 s), ...`."""
    [line] = [ln for ln in out.splitlines() if ln.startswith("Stages: ")]
    return line


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    toy = Toy(tmp_path_factory.mktemp("toy"))
    toy.first = toy.run("-m", "flows.pipeline")
    assert toy.first.returncode == 0, toy.first.stdout[-3000:] + toy.first.stderr[-3000:]
    return toy


@pytest.mark.slow
def test_first_run_builds_every_stage_and_prints_the_table(toy):
    out = toy.first.stdout
    assert all(f"{s} ran (" in stages_line(out) for s in STAGES)
    table = (toy.repo / "data/final/table.md").read_text()
    assert table in out and "| base |" in table
    assert "| sft |" in table and "| grpo |" in table
    assert "| base + " in table  # the inference_scaling stage's best setting, read from its records
    assert out.rstrip().endswith("source .venv/bin/activate)")
    for hint in ("dvc metrics show", "mlflow ui", "prefect server start", "python -m flows.tracking"):
        assert hint in out.split("Where to look next:")[1]
    for f in ("table.csv", "chart.png", "metrics.json", "records/base.jsonl"):
        assert (toy.repo / "data/final" / f).stat().st_size > 0
    assert (toy.repo / "data/final/chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = json.loads((toy.repo / "data/final/metrics.json").read_text())
    base = json.loads((toy.repo / "data/eval/base/metrics.json").read_text())
    assert final["models"]["base"]["n"] == base["n"] == 16
    assert final["models"]["base"]["accuracy"] == base["accuracy"]  # same model, settings, split


@pytest.mark.slow
def test_dvc_graph_is_valid_and_up_to_date(toy):
    dag = toy.dvc("dag")
    assert dag.returncode == 0 and all(s in dag.stdout for s in STAGES)
    status = toy.dvc("status")
    assert status.returncode == 0 and "Data and pipelines are up to date." in status.stdout


@pytest.mark.slow
def test_dvc_metrics_and_plots_show(toy):
    shown = toy.dvc("metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    [workspace] = json.loads(shown.stdout).values()  # one revision: the workspace
    metrics = workspace["data"]
    assert metrics["data/final/metrics.json"]["data"]["models"]["base"]["n"] == 16
    assert metrics["data/metrics/load_base.json"]["data"]["steps"] == 8
    # what each stage's run needed, beside its results (a toy stage holds at least torch: > 100 MiB)
    assert all(m["data"]["peak_memory_bytes"] > 100 * 2**20 for m in metrics.values()), metrics.keys()
    plots = toy.dvc("plots", "show")
    assert plots.returncode == 0 and "WARNING" not in plots.stdout + plots.stderr, plots.stderr
    assert (toy.repo / "dvc_plots/index.html").exists()


@pytest.mark.slow
def test_mlflow_has_every_stage_run_and_the_base_model(toy):
    client = toy.mlflow()
    exp = client.get_experiment_by_name("reasoning-pipeline")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" and len(r.data.tags["git_commit"]) >= 40 for r in runs)
    [lb] = [r for r in runs if r.data.tags["stage"] == "load_base"]
    assert [m.step for m in client.get_metric_history(lb.info.run_id, "load_base.loss")] == list(range(1, 9))
    v = client.get_model_version_by_alias("reasoning-pipeline", "base")
    assert v.run_id == lb.info.run_id and int(v.version) == 1
    final = json.loads((toy.repo / "data/final/metrics.json").read_text())["models"]["base"]
    assert float(v.tags["final_eval.accuracy"]) == pytest.approx(final["accuracy"])


@pytest.mark.slow
def test_second_run_with_nothing_changed_does_nothing(toy):
    lock = (toy.repo / "dvc.lock").read_bytes()
    client = toy.mlflow()
    exp = client.get_experiment_by_name("reasoning-pipeline")
    n_runs = len(client.search_runs([exp.experiment_id]))
    again = toy.run("-m", "flows.pipeline")
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(f"{s} unchanged (" in stages_line(again.stdout) for s in STAGES)
    assert "Running stage" not in again.stdout
    assert (toy.repo / "dvc.lock").read_bytes() == lock
    assert len(client.search_runs([exp.experiment_id])) == n_runs
    assert (toy.repo / "data/final/table.md").read_text() in again.stdout


@pytest.mark.slow
def test_stage_failure_surfaces_its_own_message(toy):
    params_path = toy.repo / "params.yaml"
    good = params_path.read_text()
    params = yaml.safe_load(good)
    params["load_base"]["bogus"] = 1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        failed = toy.run("-m", "flows.pipeline")
    finally:
        params_path.write_text(good)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: pipeline failed: stage 'load_base' failed: ValueError: "
                           "params.yaml:load_base: unknown key(s) ['bogus']")
    everything = failed.stdout + failed.stderr
    assert "flow_engine.py" not in everything and "task_engine.py" not in everything
    assert "Retry" not in everything  # a stage's own error is not retried
