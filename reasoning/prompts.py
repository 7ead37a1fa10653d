"""Prompt templates: one place that turns a problem into the text a model sees.

Design: a `PromptConfig` names the template ("base": the book's MATH prompt for base models;
"chat": the model's own chat template, thinking on or off) and an optional chain-of-thought
suffix. Evaluation, inference-time scaling, teacher traces, SFT and GRPO rollouts all render
through `render`; a chat prompt is the model's `ChatTemplate` rendering of one user turn (after an
optional system turn), so it is exactly what transformers or vLLM would build from the checkpoint.
`prompt_hash` names the resulting text beside every metric: the settings, and for chat prompts
the template's text too, since a checkpoint with another template sees another prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .chat_template import ChatTemplate
from .config import stable_hash

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
        """Hash of the settings (and of BASE_TEMPLATE's text). A chat prompt's text also depends on the
        model's chat template: `prompt_hash` covers both."""
        return stable_hash({"base": BASE_TEMPLATE, **self.__dict__})

    def messages(self, problem: str) -> list[dict[str, str]]:
        """The chat conversation a problem becomes: an optional system turn, then the user's question."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": problem.strip() + self.cot_suffix}]


def render(problem: str, cfg: PromptConfig = PromptConfig(), chat_template: ChatTemplate | None = None) -> str:
    """The text a model sees for `problem`. A chat prompt needs the model's `chat_template`
    (`Tokenizer.chat_template`); ValueError without one."""
    if cfg.template == "base":
        return BASE_TEMPLATE.format(problem=problem.strip() + cfg.cot_suffix)
    if chat_template is None:
        raise ValueError("a chat prompt is rendered with the model's chat template: pass tokenizer.chat_template")
    return chat_template.render(cfg.messages(problem), add_generation_prompt=True, enable_thinking=cfg.think)


def prompt_hash(cfg: PromptConfig, chat_template: ChatTemplate | None) -> str:
    """Names the prompt text a model saw: `cfg.hash` for base prompts; for chat prompts, the settings
    and the template's text (None: a template we cannot see, such as an endpoint's)."""
    if cfg.template == "base" or chat_template is None:
        return cfg.hash
    return stable_hash({"prompt": cfg.hash, "chat_template": chat_template.hash})


def chat_template_of(generator: Any, cfg: PromptConfig) -> ChatTemplate | None:
    """The template `cfg`'s prompts render with on `generator` (a `Generator`): its tokenizer's for chat
    prompts; None for base prompts, which need none."""
    return generator.tokenizer.chat_template if cfg.template == "chat" else None
