"""bench/decode.py builds the models it times as the engines run them: our tied output head stays
tied (one matrix, not two), and the book's model has the book's own Qwen3-0.6B configuration."""

from __future__ import annotations

import pytest
import torch

from bench import decode as bench
from reasoning.model import PRESETS


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_qwen3_keeps_the_output_head_tied(dtype):
    model = bench.random_qwen3(PRESETS["tiny"], dtype)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.lm_head.weight.dtype == dtype and model.lm_head.weight.device.type == "cpu"
    w = model.embed_tokens.weight
    assert float(w.detach().float().std()) == pytest.approx(0.02, rel=0.1)  # filled, not the empty storage
    # one matrix: the parameter count is the config's (tied embeddings counted once)
    assert sum(p.numel() for p in model.parameters()) == PRESETS["tiny"].n_params
    with torch.no_grad():
        w[0, 0] = 7.0
    assert float(model.lm_head.weight[0, 0].detach()) == 7.0


def test_random_qwen3_leaves_an_untied_head_untied():
    model = bench.random_qwen3(PRESETS["tiny-untied"], torch.float32)
    assert model.lm_head.weight is not model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == PRESETS["tiny-untied"].n_params
    assert not torch.equal(model.lm_head.weight, model.embed_tokens.weight)


def test_book_config_of_the_preset_is_the_books_own():
    path = bench.book_path(None)
    if path is None:
        pytest.skip("the book's package is not installed (pip install --no-deps --target /tmp/rfs "
                    "reasoning-from-scratch)")
    book = bench.book_module({"book_path": path}, "qwen3")
    assert bench.book_config(PRESETS["qwen3-0.6b"], torch.bfloat16) == book.QWEN_CONFIG_06_B


def test_budget_gives_each_engine_what_is_left_and_then_nothing():
    assert bench.Budget(None).timeout(900) == 900
    budget = bench.Budget(bench.MIN_ENGINE_S + 30)
    assert bench.MIN_ENGINE_S + 25 < budget.timeout(900) <= bench.MIN_ENGINE_S + 30
    assert budget.timeout(10) == 10
    assert bench.Budget(bench.MIN_ENGINE_S - 1).timeout(900) is None
