"""Stage `grpo`: its outputs, a killed run resuming to the same model and curves, bad params, --help,
and the stage under torchrun with two processes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import reasoning.grpo as core
import stages.grpo as stage
from reasoning.data import write_dataset
from reasoning.files import read_json
from reasoning.grading import GRADER_NAME, GRADER_VERSION
from reasoning.prompts import COT_SUFFIX, PromptConfig
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model
from tests.hf_parity import assert_chat_matches_transformers

ROOT = Path(__file__).resolve().parents[1]
PROMPT = {"template": "base", "cot_suffix": COT_SUFFIX}
TIMING = ("step_time", "rollout_time", "tokens_per_s", "wall_time_s")  # the only fields that may differ


def e_share(text: str, gold: str) -> float:
    """A reward the tiny random model learns quickly (it never gets an answer right): the share of 'e's."""
    return text.count("e") / max(len(text), 1)


@pytest.fixture(autouse=True)
def _one_thread_and_learnable_reward(one_thread, monkeypatch):
    monkeypatch.setitem(core.REWARDS, "e_share", e_share)


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1), "solution": "",
             "level": 1, "subject": "arithmetic"} for i in range(start, start + n)]


SECTION = {
    "start_from": "base",
    "eval": {"limit": 4, "batch_size": 4, "prompt": PROMPT, "sampling": {"max_new_tokens": 6}},
    "train": {"prompt": PROMPT, "reward_funcs": ["e_share"], "num_generations": 4, "prompts_per_step": 3,
              "max_new_tokens": 8, "learning_rate": 1e-3, "num_iterations": 2, "max_steps": 4,
              "eval_every": 2, "checkpoint_every": 2, "micro_batch_size": 6, "device": "cpu", "seed": 0},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_stage")
    write_dataset(rows(10), root / "train.jsonl", "test")
    write_dataset(rows(5, start=50), root / "test.jsonl", "test")
    (root / "params.yaml").write_text(yaml.safe_dump({"grpo": SECTION}))
    return root


def args(root: Path, name: str, model: Path, params: Path | None = None) -> list[str]:
    """The stage's command line; `model` is copied to ROOT/models/base, where start_from: base looks."""
    out, models = root / name, root / "models"
    if not (models / "base").exists():
        shutil.copytree(model, models / "base")
    return ["--models", str(models), "--train", str(root / "train.jsonl"), "--test", str(root / "test.jsonl"),
            "--out", str(out / "model"), "--metrics", str(out / "metrics.json"),
            "--curve", str(out / "curve.json"), "--eval-curve", str(out / "eval.json"),
            "--chart", str(out / "chart.png"),
            "--params", str(params or root / "params.yaml"), "--state", str(out / "state")]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def untimed(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_json(path)]


def test_killed_run_resumes_to_the_same_model_and_outputs(world, tiny_ckpt, monkeypatch):
    straight = stage.main(args(world, "straight", tiny_ckpt))
    out = world / "straight"
    assert straight["steps"] == 4 and straight["n"] == 4 and straight["resumed_from"] == 0
    # (That GRPO learns its reward is test_grpo's test_grpo_step_raises_a_rewarded_behaviour, over 30
    # steps: in these 4 the reward's change is noise, up or down by the seed.)
    assert (straight["grader"], straight["grader_version"]) == (GRADER_NAME, GRADER_VERSION)
    meta = read_json(out / "model" / "metadata.json")
    assert meta["prompt"] == dataclasses.asdict(PromptConfig(cot_suffix=COT_SUFFIX))
    # The export: the start model's tokenizer files and template, the held-out evaluation's (greedy)
    # sampling, stopping at <|im_end|> or <|endoftext|>; transformers chats with it as our engine does.
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / "model" / name).read_bytes() == (tiny_ckpt / name).read_bytes()
    tok = Tokenizer(tiny_ckpt)
    assert read_json(out / "model" / "generation_config.json") == {
        "bos_token_id": tok.eos_id, "eos_token_id": [tok.im_end_id, tok.eos_id], "pad_token_id": tok.eos_id,
        "do_sample": False}
    assert_chat_matches_transformers(out / "model", out, think=False)
    assert not any((out / "state").iterdir())  # the training state is deleted on success
    curve = read_json(out / "curve.json")
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "frac_zero_std", "completion_len_mean", "completion_len_max",
                "truncation_rate", "clip_ratio", "entropy", "kl", "grad_norm", "step_time", "tokens_per_s"):
        assert key in curve[-1], key
    evals = read_json(out / "eval.json")
    assert [e["step"] for e in evals] == [0, 2, 4] and all(e["n"] == 4 for e in evals)
    assert (straight["start_accuracy"], straight["accuracy"]) == (evals[0]["accuracy"], evals[-1]["accuracy"])
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # tests/test_report.py checks how it reads
    # start vs end, paired on the same held-out problems
    assert straight["paired_diff"] == pytest.approx(straight["accuracy"] - straight["start_accuracy"])
    assert straight["paired_ci_low"] <= straight["paired_diff"] <= straight["paired_ci_high"]
    assert 0 < straight["paired_p_value"] <= 1
    start, end = weights(tiny_ckpt), weights(out / "model")
    assert max((start[k] - end[k]).abs().max().item() for k in start) > 1e-3  # training moved the weights

    real_step = core.grpo_step

    def killed_in_step(n: int):  # dies mid-way through step n (1-based)
        def step(*a, **kw):
            if a[5] == n - 1:
                raise KeyboardInterrupt("killed")
            return real_step(*a, **kw)
        return step

    # Killed in step 1 (before any checkpoint: all is redone), then in step 3 (after step 2's).
    for n in (1, 3):
        monkeypatch.setattr(core, "grpo_step", killed_in_step(n))
        with pytest.raises(KeyboardInterrupt):
            stage.main(args(world, "resumed", tiny_ckpt))
    assert not (world / "resumed" / "model").exists()
    monkeypatch.setattr(core, "grpo_step", real_step)
    resumed = stage.main(args(world, "resumed", tiny_ckpt))
    assert resumed["resumed_from"] == 2
    again = weights(world / "resumed" / "model")
    assert all(torch.equal(end[k], again[k]) for k in end)
    for name in ("curve.json", "eval.json"):  # each step and evaluation logged once, with the same values
        assert untimed(world / "resumed" / name) == untimed(out / name)
    keep = ("start_accuracy", "accuracy", "ci_low", "ci_high", "n", "reward_first_tenth", "reward_last_tenth",
            "steps", "paired_diff", "paired_ci_low", "paired_ci_high", "paired_p_value")
    assert {k: resumed[k] for k in keep} == {k: straight[k] for k in keep}



def test_another_grader_version_trains_afresh_instead_of_resuming(world, tiny_ckpt, monkeypatch):
    """GRPO's rewards are the grader's verdicts: a run resumed under another grader version would mix two
    reward functions, so the version is part of the run's key (its state directory)."""
    def run(name: str) -> dict:
        argv = args(world, name, tiny_ckpt)
        argv[argv.index("--state") + 1] = str(world / "shared_state")
        return stage.main(argv)

    before = run("grader_now")
    monkeypatch.setattr(stage, "GRADER_VERSION", "99.0.0")
    after = run("grader_next")
    assert before["state_dir"] != after["state_dir"] and after["resumed_from"] == 0

def test_bad_params_fail_loudly(world, tiny_ckpt, tmp_path):
    def run_with(section: dict):
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"grpo": section}))
        stage.main(args(tmp_path, "x", tiny_ckpt, params))

    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\]"):
        run_with({**SECTION, "train": {"learning_rat": 1e-5}})
    with pytest.raises(ValueError, match="evaluate the model behind the prompt it is trained on"):
        run_with({**SECTION, "eval": {**SECTION["eval"], "prompt": {"template": "base"}}})
    with pytest.raises(ValueError, match="start_from 'instruct' is unknown"):
        run_with({**SECTION, "start_from": "instruct"})


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        stage.main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage: python -m stages.grpo" in text and "torchrun" in text


DDP_RUN = """
import sys, torch
import reasoning.grpo as core
import stages.grpo as stage
from tests.test_grpo_stage import e_share
torch.set_num_threads(1)
core.REWARDS["e_share"] = e_share
stage.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_stage_under_torchrun_with_two_processes(world, tiny_ckpt, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(DDP_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", str(script), *args(world, "ddp", tiny_ckpt)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if not (world / "straight" / "model").exists():
        stage.main(args(world, "straight", tiny_ckpt))
    one, two = weights(world / "straight" / "model"), weights(world / "ddp" / "model")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4
    assert read_json(world / "ddp" / "metrics.json")["steps"] == 4
    assert [r["step"] for r in read_json(world / "ddp" / "eval.json")] == [0, 2, 4]
