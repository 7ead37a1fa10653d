"""Batched, cached generation: parity with transformers, batch invariance, seeds, stops, compile."""

from __future__ import annotations

import pytest
import torch

from reasoning.generate import Generator, SamplingConfig, main, sample_rows
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model

PROMPTS = ["What is 12 + 7?", "Solve 3x + 4 = 10", "Question:\nAnswer:\n\\boxed{42} and more text here"]


@pytest.fixture(scope="module")
def gen(tiny_ckpt):
    return Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), batch_size=16)


def test_greedy_matches_transformers_generate(tiny_ckpt, gen):
    transformers = pytest.importorskip("transformers")
    ref = transformers.Qwen3ForCausalLM.from_pretrained(tiny_ckpt).eval()
    for text in PROMPTS:
        ids = gen.tokenizer.encode(text)
        [[ours]] = gen.generate([ids], SamplingConfig(max_new_tokens=20))
        out = ref.generate(torch.tensor([ids]), max_new_tokens=len(ours.tokens), do_sample=False,
                           eos_token_id=None, pad_token_id=0)
        assert ours.tokens == out[0, len(ids):].tolist()


def test_batched_equals_one_by_one_greedy(gen):
    cfg = SamplingConfig(max_new_tokens=24)
    together = gen.generate(PROMPTS, cfg)
    for text, [c] in zip(PROMPTS, together):
        [[alone]] = gen.generate([text], cfg)
        assert c.tokens == alone.tokens
        assert c.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_rows_that_stop_early_leave_the_batch_unchanged(gen, monkeypatch):
    cfg = SamplingConfig(max_new_tokens=24)
    base = gen.generate(PROMPTS, cfg)
    # Make the 4th token of prompt 0 a stop token: that row ends early, the batch compacts.
    stop = base[0][0].tokens[3]
    monkeypatch.setattr(gen.tokenizer, "stop_ids", (stop,))
    stopped = gen.generate(PROMPTS, cfg)
    for [a], [b] in zip(base, stopped):
        cut = a.tokens.index(stop) + 1 if stop in a.tokens else len(a.tokens)
        assert b.tokens == a.tokens[:cut]
        assert b.finish_reason == ("stop" if stop in a.tokens else "length")
    assert stopped[0][0].finish_reason == "stop" and len(stopped[0][0].tokens) <= 4


def test_seeds_reproduce_samples_whatever_the_batch(gen):
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.95)
    batch = gen.generate(PROMPTS, cfg, n=3, seeds=[10, 11, 12])
    again = gen.generate(PROMPTS, cfg, n=3, seeds=[10, 11, 12])
    assert [[c.tokens for c in p] for p in batch] == [[c.tokens for c in p] for p in again]
    [alone] = gen.generate([PROMPTS[1]], cfg, n=3, seeds=[11])
    assert [c.tokens for c in alone] == [c.tokens for c in batch[1]]
    assert len({tuple(c.tokens) for c in batch[1]}) > 1  # the n samples differ from each other
    other = gen.generate([PROMPTS[1]], cfg, n=3, seeds=[99])
    assert [c.tokens for c in other[0]] != [c.tokens for c in alone]


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]] * 200)
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    top1 = sample_rows(logits, SamplingConfig(temperature=1.0, top_k=1), gens)
    assert (top1 == 1).all()
    top2 = sample_rows(logits, SamplingConfig(temperature=1.0, top_k=2), gens)
    assert set(top2.tolist()) == {1, 2}
    # p = (0.025, 0.507, 0.459, 0.009): top_p=0.5 keeps token 1 alone, 0.6 adds token 2
    assert set(sample_rows(logits, SamplingConfig(temperature=1.0, top_p=0.5), gens).tolist()) == {1}
    assert set(sample_rows(logits, SamplingConfig(temperature=1.0, top_p=0.6), gens).tolist()) == {1, 2}
    full = sample_rows(logits, SamplingConfig(temperature=1.0), gens)
    assert set(full.tolist()) == {0, 1, 2, 3}
    assert (sample_rows(logits, SamplingConfig(), gens) == 1).all()  # greedy


def test_stop_strings_and_streaming(gen):
    [[free]] = gen.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=30))
    stop = free.text[5:8]
    seen = []
    [[c]] = gen.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=30, stop_strings=(stop,)),
                         stream=lambda p, s, t: seen.append((p, s, t)))
    assert c.finish_reason == "stop" and stop not in c.text and free.text.startswith(c.text)
    assert [t for _, _, t in seen] == c.tokens


def test_compiled_decode_equals_eager(tiny_ckpt, gen):
    compiled = Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), compile=True, batch_size=16)
    cfg = SamplingConfig(max_new_tokens=12)
    assert [[c.tokens for c in p] for p in compiled.generate(PROMPTS, cfg)] == \
           [[c.tokens for c in p] for p in gen.generate(PROMPTS, cfg)]


def test_bad_input_is_refused(gen):
    with pytest.raises(ValueError, match="empty prompt"):
        gen.generate([[]])
    with pytest.raises(ValueError, match="exceeds the model's context"):
        gen.generate(["hi"], SamplingConfig(max_new_tokens=10_000))
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


def test_cli_prints_completion_and_speed(tiny_ckpt, capsys):
    main(["--model", str(tiny_ckpt), "--prompt", "What is 2 + 2?", "--chat", "--max-new-tokens", "8"])
    out, err = capsys.readouterr()
    assert "tok/s" in err and "8 tokens" in err or "finish=stop" in err
    with pytest.raises(SystemExit):
        main(["--help"])
