"""Prompt templates: one place that turns a problem into the text a model sees.

Design: a `PromptConfig` names the template ("base": the book's MATH prompt for base models;
"chat": Qwen3's chat template with thinking on or off) and an optional chain-of-thought
suffix. Evaluation, inference-time scaling, teacher traces and GRPO rollouts all render
through `render`, and its hash is recorded beside every metric so results name their prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import stable_hash
from .tokenizer import render_chat

# The book's MATH prompt for base models (chapter 3), which asks for a \boxed{} final answer.
BASE_TEMPLATE = (
    "You are a helpful math assistant.\n"
    "Answer the question and write the final result on a new line as:\n"
    "\\boxed{{ANSWER}}\n\n"
    "Question:\n{problem}\n\nAnswer:"
)
COT_SUFFIX = " Explain step by step."


@dataclass(frozen=True)
class PromptConfig:
    template: Literal["base", "chat"] = "base"
    cot_suffix: str = ""  # e.g. " Explain step by step." (chain-of-thought prompting)
    think: bool = False  # chat template only: let the model open a <think> block
    system: str = ""  # chat template only: an optional system message

    def __post_init__(self) -> None:
        if self.template not in ("base", "chat"):
            raise ValueError(f"prompt template {self.template!r} is unknown; use 'base' or 'chat'")

    @property
    def hash(self) -> str:
        return stable_hash({"base": BASE_TEMPLATE, **self.__dict__})


def render(problem: str, cfg: PromptConfig = PromptConfig()) -> str:
    question = problem.strip() + cfg.cot_suffix
    if cfg.template == "base":
        return BASE_TEMPLATE.format(problem=question)
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [
        {"role": "user", "content": question}
    ]
    return render_chat(messages, add_generation_prompt=True, enable_thinking=cfg.think)
