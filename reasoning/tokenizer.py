"""The Qwen3 tokenizer (`tokenizer.json` through `tokenizers`), its chat template and its files.

Design choices:
- A tokenizer is a directory's Hugging Face tokenizer files: tokenizer.json for encoding, and
  tokenizer_config.json (or chat_template.jinja) for the chat template, which
  `reasoning.chat_template` renders as transformers does. A directory without a template (the toy
  world's, a bare tokenizer.json) gets our built-in one, so every model takes one rendering path.
- `save` writes the files a checkpoint needs for transformers, vLLM and the rest to load it: a
  directory's own files are carried over unchanged (a hub checkpoint keeps its own); a bare
  tokenizer.json gets a tokenizer_config.json with the template it was rendered with. That config
  names `PreTrainedTokenizerFast`, which loads tokenizer.json as written: transformers >= 5
  rebuilds a `Qwen2Tokenizer`'s pre-tokenizer from its own pattern, which the toy tokenizer changes.
- Special tokens are "added tokens" in tokenizer.json, matched whole by `tokenizers`, so user
  text can never forge them by accident of BPE merges.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from .chat_template import BUILTIN_TEMPLATE, SPECIAL_TOKEN_NAMES, ChatTemplate, ChatTemplateError
from .files import atomic_write_text

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, THINK_OPEN, THINK_CLOSE)
# A checkpoint's tokenizer files besides tokenizer.json, carried over as they are when a model is saved.
TOKENIZER_FILES = ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_chat_template(directory: Path, config: dict[str, Any]) -> ChatTemplate:
    """The directory's chat template as transformers picks it: chat_template.jinja, else the config's
    `chat_template` (a string, or a list of named templates: "default"); else the built-in one."""
    special = {k: t for k in SPECIAL_TOKEN_NAMES if (t := _token_text(config.get(k))) is not None}
    jinja = directory / "chat_template.jinja"
    if jinja.exists():
        return ChatTemplate(jinja.read_text(encoding="utf-8"), special, origin=str(jinja))
    source = config.get("chat_template")
    where = f"{directory / 'tokenizer_config.json'}:chat_template"
    if isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
        if not isinstance(named.get("default"), str):
            raise ChatTemplateError(f"{where} lists templates {sorted(map(str, named))} but no 'default' one; "
                                    "name the one to chat with 'default'")
        source = named["default"]
    if source is None:
        return ChatTemplate(BUILTIN_TEMPLATE, special)
    if not isinstance(source, str):
        raise ChatTemplateError(f"{where} is a {type(source).__name__}, not Jinja text")
    return ChatTemplate(source, special, origin=where)


class Tokenizer:
    """Encode/decode with Qwen3 special tokens and stop tokens; render chats with the model's template.

    `path`: a model directory, or a tokenizer.json file (its directory's other tokenizer files, if
    any, are read too)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: a model directory needs its tokenizer.json")
        self.path, self.directory = path, path.parent
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
        config_path = self.directory / "tokenizer_config.json"
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON ({e}); re-download or re-save the checkpoint") from None
        self.chat_template = _read_chat_template(self.directory, self.config)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            enable_thinking: bool = True) -> str:
        """The conversation as text in this model's chat template (`ChatTemplate.render`): messages are
        {"role", "content"} with an optional "reasoning_content" on assistant turns. With thinking off,
        Qwen3's templates pre-fill an empty think block after the generation prompt."""
        return self.chat_template.render(messages, add_generation_prompt, enable_thinking)

    def generation_token_ids(self) -> dict[str, Any]:
        """generation_config.json's token ids for our engine's behaviour: eos = the stop tokens
        [<|im_end|>, <|endoftext|>], bos and pad = <|endoftext|> (as Qwen3's own)."""
        return {"bos_token_id": self.eos_id, "eos_token_id": list(self.stop_ids), "pad_token_id": self.pad_id}

    def hf_config(self, model_max_length: int) -> dict[str, Any]:
        """tokenizer_config.json for a bare tokenizer.json: the fields transformers reads, and our template."""
        added = json.loads(self.path.read_text(encoding="utf-8")).get("added_tokens", [])
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",  # loads tokenizer.json as is (see the module docstring)
            "added_tokens_decoder": {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                     "single_word", "special")} for t in added},
            "bos_token": None,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "add_bos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "model_max_length": model_max_length,
            "chat_template": self.chat_template.source,
        }

    def save(self, out_dir: str | Path, model_max_length: int) -> None:
        """Write this tokenizer's files into `out_dir` (an existing directory being assembled): the
        directory's own tokenizer files unchanged, or tokenizer.json plus `hf_config`. A directory
        whose config has no chat template gets the one we rendered with added to it."""
        out_dir = Path(out_dir)
        shutil.copyfile(self.path, out_dir / "tokenizer.json")
        if not (self.directory / "tokenizer_config.json").exists():
            atomic_write_text(out_dir / "tokenizer_config.json",
                              json.dumps(self.hf_config(model_max_length), indent=2, ensure_ascii=False) + "\n")
            return
        for name in TOKENIZER_FILES:
            if (self.directory / name).exists():
                shutil.copyfile(self.directory / name, out_dir / name)
        if "chat_template" not in self.config and not (self.directory / "chat_template.jinja").exists():
            atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(
                {**self.config, "chat_template": self.chat_template.source}, indent=2, ensure_ascii=False) + "\n")
