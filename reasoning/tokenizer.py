"""The Qwen3 tokenizer (from `tokenizer.json` through `tokenizers`) and the Qwen3 chat template.

Design: the chat template is rendered as a plain string by our own code (not Jinja), so the
toy world's tokenizer, which carries the same special tokens, takes exactly the path Qwen3
takes. Special tokens are matched as whole tokens by `tokenizers` (they are "added tokens" in
tokenizer.json), so user text can never forge them by accident of BPE merges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, THINK_OPEN, THINK_CLOSE)


def render_chat(
    messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, enable_thinking: bool = True
) -> str:
    """Qwen3's chat template as text.

    `messages` are {"role": "system"|"user"|"assistant", "content": str} with an optional
    "reasoning_content" on assistant turns (rendered inside <think>...</think>). With thinking
    off, the generation prompt pre-fills an empty think block, as Qwen3's template does, so the
    model answers directly.
    """
    out = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown chat role {role!r}; use system, user or assistant")
        if role == "assistant" and m.get("reasoning_content") is not None:
            content = f"{THINK_OPEN}\n{m['reasoning_content'].strip()}\n{THINK_CLOSE}\n\n{content.lstrip()}"
        out.append(f"{IM_START}{role}\n{content}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
        if not enable_thinking:
            out.append(f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")
    return "".join(out)


class Tokenizer:
    """Encode/decode with Qwen3 special tokens and stop tokens."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: a model directory needs its tokenizer.json")
        self.path = path
        self._tok = HFTokenizer.from_file(str(path))
        vocab = self._tok.get_vocab(with_added_tokens=True)
        missing = [t for t in (ENDOFTEXT, IM_START, IM_END) if t not in vocab]
        if missing:
            raise ValueError(f"{path} lacks the Qwen3 special tokens {missing}")
        self.special_ids = {t: vocab[t] for t in SPECIAL_TOKENS if t in vocab}
        self.eos_id = vocab[ENDOFTEXT]
        self.im_end_id = vocab[IM_END]
        # Generation stops on either: base models end documents with <|endoftext|>, chat turns with <|im_end|>.
        self.stop_ids = (self.im_end_id, self.eos_id)
        self.pad_id = self.eos_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True,
                            enable_thinking: bool = True) -> str:
        return render_chat(messages, add_generation_prompt, enable_thinking)
