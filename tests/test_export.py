"""Exports: every model directory is a complete Hugging Face checkpoint (tokenizer files with the chat
template, generation_config.json, bos/eos/pad ids in config.json), a hub checkpoint keeps its own files,
and transformers chats with a re-saved real-vocabulary Qwen3 checkpoint exactly as our engine does.
(The sft and grpo stages' exports are checked against transformers in test_distill.py and
test_grpo_stage.py, on the models those stages train.)"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from reasoning.chat_template import BUILTIN_TEMPLATE
from reasoning.generate import SamplingConfig, hf_generation_config
from reasoning.model import ModelConfig, Qwen3
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, save_model
from stages.load_base import main as load_base_main
from tests.hf_parity import assert_chat_matches_transformers

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

# Qwen/Qwen3-0.6B's generation_config.json.
QWEN3_GENERATION = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                    "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                    "transformers_version": "4.51.0"}


def test_a_bare_tokenizer_export_is_a_complete_checkpoint(tiny_ckpt):
    """make_checkpoint saves with a bare tokenizer.json, as the toy base build does."""
    tok = Tokenizer(tiny_ckpt)
    names = {p.name for p in tiny_ckpt.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tok.eos_id, tok.im_end_id, tok.eos_id)
    assert json.loads((tiny_ckpt / "generation_config.json").read_text()) == {
        "bos_token_id": tok.eos_id, "eos_token_id": [tok.im_end_id, tok.eos_id], "pad_token_id": tok.eos_id}
    tok_config = json.loads((tiny_ckpt / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == BUILTIN_TEMPLATE and tok_config["model_max_length"] == 512
    added = json.loads((tiny_ckpt / "tokenizer.json").read_text())["added_tokens"]
    assert {int(i): (t["content"], t["special"]) for i, t in tok_config["added_tokens_decoder"].items()} == {
        t["id"]: (t["content"], t["special"]) for t in added} and len(added) == 5

    hf = transformers.AutoTokenizer.from_pretrained(tiny_ckpt)
    assert (hf.eos_token, hf.pad_token, hf.model_max_length) == ("<|im_end|>", "<|endoftext|>", 512)
    assert hf.chat_template == BUILTIN_TEMPLATE
    generation = transformers.GenerationConfig.from_pretrained(tiny_ckpt)
    assert generation.eos_token_id == [tok.im_end_id, tok.eos_id] and generation.pad_token_id == tok.eos_id


def test_generation_config_holds_the_sampling_settings(tiny_ckpt, tmp_path):
    tok = Tokenizer(tiny_ckpt)
    ids = {"bos_token_id": tok.eos_id, "eos_token_id": [tok.im_end_id, tok.eos_id], "pad_token_id": tok.eos_id}
    assert hf_generation_config(tok) == ids
    assert hf_generation_config(tok, SamplingConfig(temperature=0.0, top_k=5)) == {**ids, "do_sample": False}
    sampled = hf_generation_config(tok, SamplingConfig(temperature=0.7, top_k=20, top_p=0.9))
    assert sampled == {**ids, "do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
    assert hf_generation_config(tok, SamplingConfig(temperature=1.0)) == {**ids, "do_sample": True, "temperature": 1.0}
    out = save_model(load_model(tiny_ckpt), tmp_path / "sampled", tokenizer_path=tiny_ckpt, generation_config=sampled)
    loaded = transformers.GenerationConfig.from_pretrained(out)  # transformers validates it on loading
    assert (loaded.do_sample, loaded.temperature, loaded.top_k, loaded.top_p) == (True, 0.7, 20, 0.9)


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory, qwen3_dir):
    """A Qwen3 checkpoint as the hub serves one: real tokenizer files and generation_config.json, tiny weights."""
    hub = tmp_path_factory.mktemp("hub") / "Qwen3-tiny"
    model = Qwen3(ModelConfig(151_936, 32, 1, 2, 1, 16, 64, rope_theta=1_000_000.0, max_position_embeddings=1024))
    model.init_weights(0, std=0.2)
    save_model(model, hub)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(qwen3_dir / name, hub / name)
    (hub / "generation_config.json").write_text(json.dumps(QWEN3_GENERATION, indent=2))
    return hub


def test_load_base_keeps_a_hub_checkpoints_own_files(hub_checkpoint, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"load_base": {"source": str(hub_checkpoint), "dtype": "float32"}}))
    out = tmp_path / "base"
    load_base_main(["--params", str(params), "--train", str(tmp_path / "unused.jsonl"), "--out", str(out),
                    "--metrics", str(tmp_path / "m.json"), "--curve", str(tmp_path / "c.json"),
                    "--chart", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # "no training steps"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (hub_checkpoint / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (151643, 151645, 151643)
    assert not Tokenizer(out).chat_template.builtin
    # transformers, reading only these files, chats exactly as our engine does on the real vocabulary.
    assert_chat_matches_transformers(out, tmp_path, think=False)


def test_a_tokenizer_config_without_a_template_gets_ours(hub_checkpoint, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(hub_checkpoint, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer(plain).chat_template.builtin
    out = save_model(load_model(plain), tmp_path / "out", tokenizer_path=plain)
    assert json.loads((out / "tokenizer_config.json").read_text()) == {**config, "chat_template": BUILTIN_TEMPLATE}
    assert (out / "generation_config.json").read_bytes() == (plain / "generation_config.json").read_bytes()
