"""The toy world's tokenizer: a small byte-level BPE trained locally with `tokenizers`.

Design: it mirrors Qwen3's tokenizer.json, so prompts and chat templates take Qwen3's code path
in `reasoning.tokenizer`: NFC normalisation, Qwen's pre-tokenizer regex (digits split one per
token, so numbers are learnt digit by digit; TOY_PATTERN notes its one change), byte-level BPE
(any text encodes; nothing is unknown) and the five Qwen3 special tokens as added tokens, here at ids 0-4. As in Qwen3,
<think> and </think> are added tokens but not "special", so decoding with skip_special_tokens
keeps them. Special tokens are cut out of the training text, so no merges are spent on their
pieces. Same texts, same vocabulary size: same file bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ..files import atomic_write_text
from ..tokenizer import SPECIAL_TOKENS, THINK_CLOSE, THINK_OPEN

# Qwen2/Qwen3's pre-tokenizer pattern (their tokenizer.json) with one change: Qwen lets a
# punctuation run absorb the newlines after it (` ?[^\s\p{L}\p{N}]+[\r\n]*`), so "Answer:\n"
# is one token in training text while every prompt ends on a bare ":" (the book's prompt ends
# "Answer:"). A real model has seen ":" alone often enough; a toy model has not, and loses a
# third of its accuracy to that mid-token boundary. Here punctuation and newlines never merge.
TOY_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def _without_special_tokens(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield from (piece for piece in _SPECIAL_RE.split(text) if piece)


def train_tokenizer(texts: Iterable[str], path: str | Path, vocab_size: int = 512) -> Path:
    """Train on `texts` and write tokenizer.json to `path` (a .json file, or a directory).

    Returns the file written. The vocabulary holds 256 byte tokens, the 5 special tokens and
    up to `vocab_size - 261` merges (fewer if the texts run out of repeated pairs).
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path / "tokenizer.json"
    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= floor:
        raise ValueError(
            f"vocab_size {vocab_size} leaves no merges; use more than {floor} (256 bytes + special tokens)"
        )
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TOY_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(_without_special_tokens(texts), trainer)
    # The trainer marks all its tokens special; Qwen3 marks <think> and </think> as plain added tokens.
    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] not in (THINK_OPEN, THINK_CLOSE)
    atomic_write_text(path, json.dumps(spec, ensure_ascii=False, indent=1) + "\n")
    return path
