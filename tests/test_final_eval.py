"""final_eval measures each model with the prompt recorded in its metadata.json (sft/grpo), else the shared one."""

from __future__ import annotations

import json
import shutil

from reasoning.evaluate import EvalConfig
from reasoning.generate import SamplingConfig
from reasoning.prompts import PromptConfig, render
from stages.final_eval import evaluate_model, model_eval_config

PROBLEMS = [{"id": "p1", "problem": "What is 2 + 3?", "answer": "5", "solution": "", "level": 1, "subject": "toy"}]


def test_model_prompt_comes_from_its_metadata(tmp_path, tiny_ckpt):
    cfg = EvalConfig(sampling=SamplingConfig(max_new_tokens=4), device="cpu", dtype="float32")
    plain = tmp_path / "plain"
    shutil.copytree(tiny_ckpt, plain)
    assert model_eval_config(plain, cfg) == cfg  # no metadata: the shared settings

    chat = tmp_path / "chat"
    shutil.copytree(tiny_ckpt, chat)
    prompt = PromptConfig(template="chat", think=True)
    (chat / "metadata.json").write_text(json.dumps({"prompt": {"template": "chat", "think": True}}))
    assert model_eval_config(chat, cfg).prompt == prompt
    records, metrics = evaluate_model(chat, PROBLEMS, cfg, tmp_path / "records.jsonl")
    assert records[0]["prompt"] == render(PROBLEMS[0]["problem"], prompt)
    assert metrics["prompt_hash"] == prompt.hash
