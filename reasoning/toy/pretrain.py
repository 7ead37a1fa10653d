"""The toy world's base model: a tiny Qwen3 pretrained locally on a corpus of toy problems.

Design: the base model is built the way real ones are, only small. A byte-level BPE tokenizer
is trained on the corpus (`toy.tokenizer`), a `Qwen3` from `reasoning.model` is initialised
from the seed, and it learns next-token prediction on every token of the corpus documents
(`toy.task.pretrain_corpus`: direct answers, worked solutions after a step-by-step prompt,
bare solutions and a few chat transcripts) through `reasoning.train.train`, the loop SFT
reuses. The result is saved in our HF-format checkpoint with its tokenizer, so `load_model`,
`Tokenizer` and `transformers` all read it. Training state lives in a work directory beside
the output until the model is saved, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model import ModelConfig
from ..model import Qwen3
from ..tokenizer import Tokenizer
from ..train import LogFn, TrainConfig, train
from ..weights import save_model
from .task import pretrain_corpus
from .tokenizer import train_tokenizer


@dataclass(frozen=True)
class ToyBaseConfig:
    n_train: int = 0  # corpus problems, the first n of the rows given; 0: all of them
    # Corpus mix (toy.task.pretrain_corpus): mostly bare worked solutions, which teach arithmetic
    # without spending compute on the prompt template; enough prompted documents to learn the format.
    direct_frac: float = 0.15
    chat_frac: float = 0.05
    plain_frac: float = 0.6
    shuffled_frac: float = 0.75  # worked solutions that add their terms in a random valid order (task.solution_path)
    val_frac: float = 0.02  # documents held out for the validation loss
    vocab_size: int = 512  # tokenizer and embedding rows (the tokenizer may use fewer)
    num_hidden_layers: int = 4
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    seed: int = 0
    # Small batches, many steps: a tiny model learns carrying arithmetic from the number of updates
    # more than from the tokens per update. Measured (300 toy test problems, greedy, step-by-step
    # prompt, about the same compute): batch 16 x 3,500 steps 72%, 32 x 2,000 33%, 64 x 1,200 23%.
    # Learning arithmetic is a sudden transition whose timing varies with the seed: at 3,500 steps
    # (lr 3e-3) bases scored 65 / 60 / 25% step by step on seeds 0 / 1 / 2 (lr 5e-3: 27 / 22 / 55%);
    # at 4,500 steps 73.6 / 75.0 / 75.2%: every seed past it (python -m bench.toy, 500 problems).
    # torch.compile of the training step measured no faster here (60 vs 58 ms per step).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=3e-3, min_lr_ratio=0.1, warmup_steps=100, max_steps=4500, batch_size=16, micro_batch_size=16,
        grad_clip=1.0, weight_decay=0.1, max_len=512, device="auto", dtype="auto",
    ))

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim, intermediate_size=self.intermediate_size, rope_theta=10_000.0,
            max_position_embeddings=self.max_position_embeddings,
        )


def build_base(train_rows: Sequence[dict[str, Any]], out_dir: str | Path, cfg: ToyBaseConfig = ToyBaseConfig(),
               log: LogFn | None = None, work_dir: str | Path | None = None) -> dict[str, Any]:
    """Pretrain the toy base model on a corpus made from `train_rows` and save it to `out_dir`.

    `work_dir` (default: a hidden sibling of out_dir) holds the tokenizer and the training
    checkpoints until the model is saved; a build killed before that resumes from it.
    Returns the training metrics plus params, corpus size, tokenizer size and wall time.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.parent / f".{out_dir.name}.work"
    if cfg.n_train > len(train_rows):
        raise ValueError(f"n_train {cfg.n_train} exceeds the {len(train_rows)} training rows given; "
                         "lower n_train or generate more training problems")
    rows = train_rows[: cfg.n_train or len(train_rows)]
    docs = pretrain_corpus(rows, cfg.seed, cfg.direct_frac, cfg.chat_frac, cfg.plain_frac,
                           cfg.shuffled_frac)
    tokenizer_path = train_tokenizer(docs, work / "tokenizer.json", cfg.vocab_size)
    tokenizer = Tokenizer(tokenizer_path)
    examples = [(ids, [1] * len(ids)) for ids in tokenizer.encode_batch(docs)]  # loss on every token
    n_val = int(len(examples) * cfg.val_frac)

    model = Qwen3(cfg.model_config())
    model.init_weights(cfg.seed)
    metrics = train(model, examples[n_val:], cfg.train, work / "train", examples[:n_val], log)
    save_model(model, out_dir, tokenizer_path=tokenizer_path)
    shutil.rmtree(work)
    return {**metrics, "params": model.config.n_params, "corpus_docs": len(docs),
            "corpus_tokens": sum(len(t) for t, _ in examples), "tokenizer_vocab": tokenizer.vocab_size,
            "build_wall_s": time.perf_counter() - t0}
