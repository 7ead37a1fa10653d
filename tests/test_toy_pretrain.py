"""The toy base model build: loss goes down, output is a loadable checkpoint, builds are reproducible."""

from __future__ import annotations

import pytest
import torch

from reasoning.files import sha256_file
from reasoning.prompts import COT_SUFFIX, PromptConfig, render
from reasoning.tokenizer import Tokenizer
from reasoning.toy.pretrain import ToyBaseConfig, build_base
from reasoning.toy.task import generate_problems
from reasoning.train import TrainConfig
from reasoning.weights import load_model

ROWS = generate_problems(240, seed=3)
TINY = ToyBaseConfig(
    n_train=200, vocab_size=320, num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, intermediate_size=64, val_frac=0.1, seed=1,
    train=TrainConfig(lr=1e-2, warmup_steps=3, max_steps=20, batch_size=16, micro_batch_size=16, max_len=256,
                      checkpoint_every=5, device="cpu", dtype="float32"),
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny build shared by the tests below: (output dir, metrics, per-step losses)."""
    out = tmp_path_factory.mktemp("toy") / "base"
    losses: list[float] = []
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    metrics = build_base(ROWS, out, TINY, log=lambda s, m: losses.append(m["loss"]) if "loss" in m else None)
    torch.set_num_threads(n)
    return out, metrics, losses


def test_tiny_build_lowers_the_loss_and_saves_a_loadable_base(built):
    out, metrics, losses = built
    assert metrics["steps"] == len(losses) == 20 and metrics["corpus_docs"] == 200 and metrics["examples"] == 180
    assert metrics["val_loss"] < losses[0] - 1.5  # from ~ln(320) = 5.8
    assert metrics["params"] == TINY.model_config().n_params
    assert not (out.parent / ".base.work").exists()  # training state is removed once the model is saved
    model, tok = load_model(out), Tokenizer(out)
    assert model.config == TINY.model_config() and tok.vocab_size <= TINY.vocab_size
    assert tok.decode(tok.encode(ROWS[0]["problem"])) == ROWS[0]["problem"]


def test_hf_transformers_loads_the_base(built):
    transformers = pytest.importorskip("transformers")
    out = built[0]
    ours = load_model(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = Tokenizer(out)
    ids = torch.tensor([tok.encode(ROWS[1]["problem"])])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
    # Its tokenizer: the toy pre-tokenizer as trained (not Qwen's pattern) and the built-in chat template.
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    chat = [{"role": "user", "content": ROWS[2]["problem"]}]
    text = tok.apply_chat_template(chat, enable_thinking=False)
    assert tok.chat_template.builtin and text == hf_tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    for t in (text, render(ROWS[1]["problem"], PromptConfig(cot_suffix=COT_SUFFIX)) + "\nAnswer:\n7"):
        assert hf_tok.encode(t, add_special_tokens=False) == tok.encode(t)
    assert transformers.GenerationConfig.from_pretrained(out).eos_token_id == [tok.im_end_id, tok.eos_id]


def test_build_is_deterministic_and_a_killed_build_resumes_to_the_same_model(built, tmp_path):
    def kill_at_8(step: int, metrics: dict) -> None:
        if step == 8:
            raise Killed

    with pytest.raises(Killed):
        build_base(ROWS, tmp_path / "b", TINY, log=kill_at_8)
    assert (tmp_path / ".b.work" / "train" / "latest").read_text().strip() == "step_00000005"
    resumed = build_base(ROWS, tmp_path / "b", TINY)
    assert resumed["resumed_from"] == 5 and resumed["val_loss"] == built[1]["val_loss"]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256_file(built[0] / name) == sha256_file(tmp_path / "b" / name), name
    build_base(ROWS, tmp_path / "c", ToyBaseConfig(**{**TINY.__dict__, "seed": 2}))
    assert sha256_file(built[0] / "model.safetensors") != sha256_file(tmp_path / "c" / "model.safetensors")


def test_asking_for_more_corpus_rows_than_given_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="n_train 500 exceeds the 240"):
        build_base(ROWS, tmp_path / "base", ToyBaseConfig(n_train=500))
