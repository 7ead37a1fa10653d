"""Batched, cached generation: parity with transformers, batch invariance, seeds, stops, compile."""

from __future__ import annotations

import re

import pytest
import torch

from reasoning import generate as generate_module
from reasoning.devices import checkpoint_dtype
from reasoning.generate import (NUCLEUS_PREFIX, Completion, Generator, SamplingConfig,
                                TextStream, fastest_matmul_dtype, main, sample_full, sample_tokens)
from reasoning.model import Qwen3
from reasoning.prompts import PromptConfig, render
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, save_model

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


def test_calls_after_a_compacted_batch_reuse_caches_safely(gen):
    """A batch whose rows stop early shrinks the caches; the next same-shape call must re-allocate."""
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, stop_strings=("e",))
    first = [gen.generate([f"What is {i}+{j}?" for j in range(4)], cfg, seeds=[10 * i + j for j in range(4)])
             for i in range(3)]
    again = [gen.generate([f"What is {i}+{j}?" for j in range(4)], cfg, seeds=[10 * i + j for j in range(4)])
             for i in range(3)]
    assert [[c.tokens for [c] in b] for b in first] == [[c.tokens for [c] in b] for b in again]


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


def draw(logits, cfg, n=None):
    """sample_tokens' tokens for each row, row b drawing from the stream seeded b (first draw), with the
    short rows drawn again by sample_full, as the generator does."""
    seeds = torch.arange(logits.shape[0])
    counters = torch.zeros_like(seeds)
    tokens, _, short = sample_tokens(logits, cfg, seeds, counters)
    if short.any():
        tokens[short] = sample_full(logits[short], cfg, seeds[short], counters[short])
    return tokens


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]] * 1000)
    assert (draw(logits, SamplingConfig(temperature=1.0, top_k=1)) == 1).all()
    assert set(draw(logits, SamplingConfig(temperature=1.0, top_k=2)).tolist()) == {1, 2}
    # p = (0.025, 0.507, 0.459, 0.009): top_p=0.5 keeps token 1 alone, 0.6 adds token 2
    assert set(draw(logits, SamplingConfig(temperature=1.0, top_p=0.5)).tolist()) == {1}
    assert set(draw(logits, SamplingConfig(temperature=1.0, top_p=0.6)).tolist()) == {1, 2}
    assert set(draw(logits, SamplingConfig(temperature=1.0)).tolist()) == {0, 1, 2, 3}
    assert (draw(logits, SamplingConfig()) == 1).all()  # greedy


def test_sampled_log_probs_are_the_models_own():
    logits = torch.randn(64, 40, generator=torch.Generator().manual_seed(2)) * 3
    seeds = torch.arange(64)
    for cfg in (SamplingConfig(), SamplingConfig(temperature=0.5, top_p=0.9), SamplingConfig(temperature=2.0)):
        tokens, logp, _ = sample_tokens(logits, cfg, seeds, torch.zeros_like(seeds))
        expected = torch.log_softmax(logits, -1)[torch.arange(64), tokens]  # temperature 1, unfiltered
        assert torch.allclose(logp, expected)


def test_sampling_frequencies_follow_the_distribution():
    p = torch.tensor([0.1, 0.6, 0.3])
    picks = draw(p.log().expand(4000, 3), SamplingConfig(temperature=1.0))
    assert (torch.bincount(picks, minlength=3) / 4000 - p).abs().max() < 0.03


def test_one_rows_successive_draws_follow_the_distribution():
    """Draws 0..3999 of one stream (one row decoding 4,000 tokens), not 4,000 streams' first draws."""
    p = torch.tensor([0.1, 0.6, 0.3])
    seeds = torch.full((4000,), 12345)
    tokens, _, _ = sample_tokens(p.log().expand(4000, 3), SamplingConfig(temperature=1.0), seeds,
                                 torch.arange(4000))
    assert (torch.bincount(tokens, minlength=3) / 4000 - p).abs().max() < 0.03


def test_top_p_nucleus_wider_than_the_candidate_prefix():
    """A flat distribution's nucleus holds more than NUCLEUS_PREFIX tokens: it must not be cut."""
    V = 4 * NUCLEUS_PREFIX
    logits = torch.linspace(0.0, -1.0, V)[torch.randperm(V, generator=torch.Generator().manual_seed(0))]
    probs = logits.softmax(-1)
    sorted_p, order = probs.sort(descending=True)
    nucleus = set(order[(sorted_p.cumsum(0) - sorted_p) < 0.6].tolist())  # reference: full sort
    assert len(nucleus) > 1.5 * NUCLEUS_PREFIX
    cfg = SamplingConfig(temperature=1.0, top_p=0.6)
    seeds = torch.arange(500)
    _, _, short = sample_tokens(logits.expand(500, V), cfg, seeds, torch.zeros_like(seeds))
    assert short.all()  # the prefix cannot hold this nucleus: every row is drawn again
    picks = draw(logits.expand(500, V), cfg).tolist()
    assert set(picks) <= nucleus
    rank = {t: r for r, t in enumerate(order.tolist())}
    assert max(rank[t] for t in picks) >= NUCLEUS_PREFIX  # the tail beyond the prefix is reachable


def test_a_row_draws_the_same_token_whether_its_batch_mates_need_the_full_sort():
    """Only the row whose nucleus is too wide is drawn by the full sort, not its whole batch: a row's
    token never depends on its batch mates."""
    V = 4 * NUCLEUS_PREFIX
    flat = torch.linspace(0.0, -1.0, V)
    peaked = torch.randn(V, generator=torch.Generator().manual_seed(1)) * 8
    cfg = SamplingConfig(temperature=1.0, top_p=0.9)
    alone = draw(peaked[None].expand(50, V), cfg)
    mixed = draw(torch.stack([peaked] * 50 + [flat]), cfg)
    assert mixed[:50].tolist() == alone.tolist()


@pytest.mark.parametrize("matmul_dtype", ["bfloat16", "int8"])
def test_low_precision_matmuls_stay_close_to_fp32(gen, matmul_dtype):
    low = Generator(gen.model, gen.tokenizer, batch_size=16, matmul_dtype=matmul_dtype)
    cfg = SamplingConfig(max_new_tokens=16)
    exact, approx = gen.generate(PROMPTS, cfg), low.generate(PROMPTS, cfg)
    agree = 0
    for [a], [b] in zip(exact, approx):
        same = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), len(a.tokens))
        agree += same
        # while the sequences agree, so do the token probabilities, to bf16/int8 precision
        p_exact, p_bf16 = torch.tensor(a.logprobs[:same]).exp(), torch.tensor(b.logprobs[:same]).exp()
        assert torch.allclose(p_bf16, p_exact, rtol=0, atol=0.05)
    assert agree >= 0.5 * sum(len(a.tokens) for [a] in exact)
    assert all(m.compute_weight is None for m in gen.model.modules() if hasattr(m, "compute_weight"))
    assert exact == gen.generate(PROMPTS, cfg)  # the model is back to exact fp32 afterwards


def test_auto_matmul_dtype_is_measured_and_valid(gen, monkeypatch):
    assert fastest_matmul_dtype(gen.model, 1) in (None, torch.bfloat16, torch.int8)
    measured, applied = [], []  # (rows, measured dtype) per forward; dtypes the model was switched to

    def measure(model, rows):
        measured.append((rows, fastest_matmul_dtype(model, rows)))
        return measured[-1][1]

    def switch(model, dtype, set_dtype=Qwen3.set_matmul_dtype):
        applied.append(dtype)
        set_dtype(model, dtype)

    monkeypatch.setattr(generate_module, "fastest_matmul_dtype", measure)
    monkeypatch.setattr(Qwen3, "set_matmul_dtype", switch)
    auto = Generator(gen.model, gen.tokenizer, batch_size=16, matmul_dtype="auto")
    cfg = SamplingConfig(max_new_tokens=8)
    [[c]] = auto.generate([PROMPTS[0]], cfg)
    # measured for the prefill (prompt-length rows) and for the decode steps (1 row) ...
    assert [rows for rows, _ in measured] == [len(gen.tokenizer.encode(PROMPTS[0])), 1]
    # ... and the model multiplies in whatever was measured faster, then is back to its own weights
    expected, active = [], None
    for _, dtype in measured:
        if dtype != active:
            expected.append(dtype)
            active = dtype
    assert applied == expected + [None]
    assert all(m.compute_weight is None for m in gen.model.modules() if hasattr(m, "compute_weight"))
    # valid: a full completion, the same tokens as pinning the measured dtype (when both phases agree)
    assert len(c.tokens) == 8 or (c.finish_reason == "stop" and c.tokens[-1] in gen.tokenizer.stop_ids)
    assert len(c.logprobs) == len(c.tokens) and all(-50 < lp <= 0 for lp in c.logprobs)
    chosen = {dtype for _, dtype in measured}
    if chosen == {None}:
        [[exact]] = gen.generate([PROMPTS[0]], cfg)
        assert c == exact
    elif len(chosen) == 1:
        pinned = {torch.bfloat16: "bfloat16", torch.int8: "int8"}[chosen.pop()]
        [[low]] = Generator(gen.model, gen.tokenizer, matmul_dtype=pinned).generate([PROMPTS[0]], cfg)
        assert c == low
    with pytest.raises(ValueError, match="matmul_dtype: 'int4' is not one of model, auto"):
        Generator(gen.model, gen.tokenizer, matmul_dtype="int4")


def test_stop_strings_and_streaming(gen):
    [[free]] = gen.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=30))
    stop = free.text[5:8]
    seen = []
    [[c]] = gen.generate([PROMPTS[0]], SamplingConfig(max_new_tokens=30, stop_strings=(stop,)),
                         stream=lambda p, s, t: seen.append((p, s, t)))
    assert c.finish_reason == "stop" and stop not in c.text and free.text.startswith(c.text)
    assert [t for _, _, t in seen] == c.tokens


@pytest.mark.slow
def test_compiled_decode_equals_eager_and_does_not_recompile_per_token(tiny_ckpt, gen):
    from torch._dynamo.utils import counters
    compiled = Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), compile=True, batch_size=16)
    for cfg in (SamplingConfig(max_new_tokens=12), SamplingConfig(max_new_tokens=12, temperature=0.8, top_p=0.9)):
        # sampling runs inside the compiled step: the same draws, so the same tokens
        assert [[c.tokens for c in p] for p in compiled.generate(PROMPTS, cfg, n=2)] == \
               [[c.tokens for c in p] for p in gen.generate(PROMPTS, cfg, n=2)]
    compiled.generate(PROMPTS, SamplingConfig(max_new_tokens=12))
    graphs = counters["stats"]["unique_graphs"]
    compiled.generate(PROMPTS, SamplingConfig(max_new_tokens=24))  # new positions, same cache shape
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
def test_compiled_decode_serves_a_grid_of_settings_within_a_few_graphs(tiny_ckpt, gen):
    """What inference_scaling asks of one generator: greedy, several temperatures, top-p, other answer
    lengths, one prompt or many, n samples. Dynamo's default limit is 8 graphs per function (an error
    under fullgraph): every call here must reuse the cache tensors and treat the temperature as a symbol,
    so the whole grid stays within 8 graphs, with the eager generator's tokens."""
    from torch._dynamo.utils import counters
    compiled = Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), compile=True, batch_size=8)
    before = counters["stats"]["unique_graphs"]
    grid = [(PROMPTS, SamplingConfig(max_new_tokens=16), 1), (PROMPTS[:1], SamplingConfig(max_new_tokens=20), 1)]
    for k, t in enumerate((0.3, 0.5, 0.7, 0.9, 1.1, 1.3)):  # greedy between sampled settings, as a grid runs them
        grid += [(PROMPTS[:1 + k % 3], SamplingConfig(max_new_tokens=8 + 4 * k, temperature=t), 1 + k % 2),
                 (PROMPTS[k % 3:], SamplingConfig(max_new_tokens=6 + k), 1 + k % 3)]
    grid += [(PROMPTS, SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=0.9), 3),
             (PROMPTS[1:], SamplingConfig(max_new_tokens=12, temperature=1.0, top_p=0.8), 1)]
    for prompts, cfg, n in grid:
        assert [[c.tokens for c in p] for p in compiled.generate(prompts, cfg, n=n, seeds=[3, 4, 5][:len(prompts)])] \
               == [[c.tokens for c in p] for p in gen.generate(prompts, cfg, n=n, seeds=[3, 4, 5][:len(prompts)])]
    assert counters["stats"]["unique_graphs"] - before <= 8


def test_bad_input_is_refused(gen):
    with pytest.raises(ValueError, match="empty prompt"):
        gen.generate([[]])
    with pytest.raises(ValueError, match="exceeds the model's context"):
        gen.generate(["hi"], SamplingConfig(max_new_tokens=10_000))


def test_a_prompt_that_cannot_fit_gets_context_completions_not_an_error(gen):
    """One over-long prompt among others: n empty "context" completions for it, the others unchanged."""
    long = list(range(1, 60)) * 9  # 531 tokens: over the tiny model's context of 512 with 8 new tokens
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    out = gen.generate([PROMPTS[0], long, PROMPTS[1]], cfg, n=2, seeds=[5, 6, 7])
    assert [(c.finish_reason, c.tokens, c.text, c.truncated) for c in out[1]] == [("context", [], "", False)] * 2
    alone = gen.generate([PROMPTS[0], PROMPTS[1]], cfg, n=2, seeds=[5, 7])
    assert [[c.tokens for c in p] for p in (out[0], out[2])] == [[c.tokens for c in p] for p in alone]
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)


def test_cli_prints_completion_and_speed(tiny_ckpt, capsys):
    main(["--model", str(tiny_ckpt), "--prompt", "What is 2 + 2?", "--chat", "--max-new-tokens", "8"])
    out, err = capsys.readouterr()
    # the same generation by hand: chat template, greedy, 8 tokens, the CLI's default matmul dtype
    tok = Tokenizer(tiny_ckpt)
    prompt = render("What is 2 + 2?", PromptConfig(template="chat", think=False), tok.chat_template)
    [[ref]] = Generator(load_model(tiny_ckpt), tok, batch_size=1, matmul_dtype="auto").generate(
        [prompt], SamplingConfig(max_new_tokens=8), seeds=[0])
    assert ref.finish_reason == "stop" or len(ref.tokens) == 8
    # stdout: the decoded completion, stop tokens left out (a held-back multi-byte tail is flushed at the end)
    assert out == tok.decode([t for t in ref.tokens if t not in tok.stop_ids])
    # stderr: the speed line with the completion's token count, finish reason and prompt length, the
    # one-off set-up timed apart, and the process's peak memory
    speed = re.search(r"\[(\d+) tokens in ([\d.]+)s: ([\d.]+) tok/s, finish=(\w+), prompt (\d+) tokens; "
                      r"set-up ([\d.]+)s apart; peak memory (\d+) MiB\]", err)
    assert speed, err
    assert int(speed[1]) == len(ref.tokens) and speed[4] == ref.finish_reason
    assert int(speed[5]) == len(tok.encode(prompt)) and float(speed[3]) > 0
    assert float(speed[6]) >= 0 and int(speed[7]) > 50  # a Python process with torch holds > 50 MiB
    with pytest.raises(SystemExit):
        main(["--help"])


def test_cli_prints_a_cut_multibyte_tail_and_the_checkpoint_dtype(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """Output ending inside a multi-byte character: the held-back bytes are printed at the end (the
    printed text is tokenizer.decode of the generated ids). `--dtype auto` keeps a bf16 checkpoint bf16."""
    tok = Tokenizer(tiny_ckpt)
    ids = tok.encode("ok é")
    cut = ids[:-1] if tok.decode(ids[:-1]).endswith("\ufffd") else ids + tok.encode("é")[:1]
    assert tok.decode(cut).endswith("\ufffd")  # the last token is the first byte of a 2-byte character
    seen_dtypes = []

    def fake_generate(self, prompts, sampling, n=1, seeds=None, stream=None):
        seen_dtypes.append(self.model.layers[0].mlp.gate_proj.weight.dtype)
        for t in cut:
            stream(0, 0, t)
        return [[Completion(tokens=list(cut), text=tok.decode(cut), finish_reason="length")]]

    monkeypatch.setattr(Generator, "generate", fake_generate)
    main(["--model", str(tiny_ckpt), "--prompt", "hi", "--device", "cpu", "--matmul-dtype", "model"])
    assert capsys.readouterr().out == tok.decode(cut)
    bf16 = tmp_path / "bf16"
    save_model(load_model(tiny_ckpt), bf16, tokenizer_path=tiny_ckpt / "tokenizer.json", dtype=torch.bfloat16)
    assert checkpoint_dtype(bf16, "cpu") == torch.bfloat16 and checkpoint_dtype(tiny_ckpt, "cpu") == torch.float32
    assert checkpoint_dtype(tiny_ckpt, "cuda") == torch.bfloat16
    main(["--model", str(bf16), "--prompt", "hi", "--device", "cpu", "--matmul-dtype", "model"])
    assert seen_dtypes == [torch.float32, torch.bfloat16]


def test_text_stream_pieces_join_to_the_decoded_text_holding_back_cut_characters(tiny_ckpt):
    tok = Tokenizer(tiny_ckpt)
    ids = tok.encode("ok é, 汥 and ü!") + [tok.im_end_id]
    stream = TextStream(tok, skip=tok.stop_ids)
    pieces = [stream.push(t) for t in ids]
    assert "".join(pieces) + stream.flush() == tok.decode(ids[:-1])  # the stop token is not text
    assert not any("\ufffd" in p for p in pieces)  # a multi-byte character waits until it is whole
    assert sum(map(bool, pieces)) > 5  # and the text streams: pieces come as characters complete
    # cut inside a character: nothing shows until flush, which gives the replacement character
    assert len(tok.encode("汥")) > 1
    first_byte = tok.encode("汥")[:1]
    stream = TextStream(tok)
    assert [stream.push(t) for t in tok.encode("a ") + first_byte][-1] == ""
    assert stream.flush() == "\ufffd" and stream.flush() == ""


@pytest.mark.parametrize("field, value", [
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -0.5),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", float("nan")), ("top_k", -1), ("top_k", 2.5),
    ("max_new_tokens", 0), ("max_new_tokens", 1.5), ("stop_strings", ("",)), ("stop_strings", "\n\n"),
])
def test_impossible_sampling_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field} must"):
        SamplingConfig(**{field: value})


@pytest.mark.parametrize("temperature", [1e-38, 1e-30, 1e-6])
def test_a_tiny_temperature_decodes_greedily(temperature):
    """Its limit is argmax; logits / 1e-38 overflowed to inf and every row took the last id."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 5
    cfg = SamplingConfig(temperature=temperature)
    assert cfg.greedy
    assert draw(logits, cfg).tolist() == logits.argmax(-1).tolist()
    assert not SamplingConfig(temperature=1e-3).greedy  # small but real temperatures still sample


def test_a_tiny_temperature_generates_the_greedy_tokens(gen):
    greedy = gen.generate(PROMPTS[:2], SamplingConfig(max_new_tokens=12))
    tiny = gen.generate(PROMPTS[:2], SamplingConfig(max_new_tokens=12, temperature=1e-38))
    assert [c.tokens for [c] in tiny] == [c.tokens for [c] in greedy]


MIXED = ["1+1?", "What is 12 + 7? Think it through, step by step, then write the answer.", "Solve 3x + 4 = 10",
         "x", "Question:\nAnswer:\n\\boxed{42} and more text here", "A much longer prompt, " * 6, "7*8", "Hi"]


@pytest.fixture(scope="module")
def small_batch(tiny_ckpt):
    """A generator of 3 slots: most calls below hold more rows than that, so slots get refilled.

    In float64: a batch of another width sums in another order, which moves fp32 logits by ~1e-6;
    the tiny model's near-flat distributions put a sampled draw that close to a CDF boundary about
    once in a thousand draws. What these tests check is the scheduling (slots, prefixes, seeds), so
    they take float noise out of the comparison."""
    return Generator(load_model(tiny_ckpt, torch.float64), Tokenizer(tiny_ckpt), batch_size=3)


@pytest.mark.parametrize("cfg, n", [
    (SamplingConfig(max_new_tokens=20), 1),
    (SamplingConfig(max_new_tokens=30, temperature=1.0, stop_strings=("e",)), 1),
    (SamplingConfig(max_new_tokens=24, temperature=1.2, top_p=0.9, stop_strings=(" ", "\n")), 3),
])
def test_continuous_batching_equals_one_by_one(small_batch, cfg, n):
    """Rows of mixed prompt and answer lengths, refilled into 3 slots as others finish: each completion
    is the one the prompt gets alone (greedy tokens, and sampled ones thanks to per-row seeds)."""
    seeds = [7 * i + 1 for i in range(len(MIXED))]
    together = small_batch.generate(MIXED, cfg, n=n, seeds=seeds)
    lengths = [len(c.tokens) for p in together for c in p]
    if cfg.stop_strings:  # the case under test: short rows finish while a long one keeps decoding
        assert min(lengths) * 3 <= max(lengths), lengths
    for text, seed, comps in zip(MIXED, seeds, together):
        [alone] = small_batch.generate([text], cfg, n=n, seeds=[seed])
        assert [c.tokens for c in comps] == [c.tokens for c in alone]
        assert [c.text for c in comps] == [c.text for c in alone]
        assert [c.finish_reason for c in comps] == [c.finish_reason for c in alone]
        for c, a in zip(comps, alone):
            assert c.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_a_finished_row_s_slot_is_refilled_at_once(small_batch, monkeypatch):
    """While prompts wait, every decode step runs a full batch: fewer steps than batches that only shrink."""
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, stop_strings=("e",))
    seeds = list(range(len(MIXED)))
    widths: list[int] = []
    decode = small_batch._decode
    monkeypatch.setattr(small_batch, "_decode", lambda tok, *args: (widths.append(len(tok)), decode(tok, *args))[1])
    out = small_batch.generate(MIXED, cfg, seeds=seeds)
    lengths = [len(c.tokens) for [c] in out]
    # decode steps of static batches of 3 (each runs as long as its longest row) taking the prompts in
    # the same order, shortest prompt first (as this engine did before continuous batching)
    order = [lengths[i] for i in sorted(range(len(MIXED)), key=lambda i: len(small_batch.tokenizer.encode(MIXED[i])))]
    static = sum(max(chunk) - 1 for chunk in (order[i:i + 3] for i in range(0, len(order), 3)))
    assert len(widths) < static
    assert sum(widths) >= sum(lengths) - len(lengths)  # every generated token after the first is a decode row
    assert widths[:len(widths) // 2] == [3] * (len(widths) // 2)  # the first half: always full


def test_the_cache_is_allocated_once_and_reused(tiny_ckpt, monkeypatch):
    """One storage per layer, sized by slots x positions: calls that fit reuse it whatever their shape (64
    slots of short answers, then one long answer), and a larger one grows it once, at least twice as large."""
    from reasoning import model as model_module
    made = []

    class Counting(model_module.KVCache):
        def __init__(self, capacity, *args, **kwargs):
            made.append(capacity)
            super().__init__(capacity, *args, **kwargs)

    monkeypatch.setattr(model_module, "KVCache", Counting)
    g = Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), batch_size=4)
    cfg = SamplingConfig(max_new_tokens=20, temperature=1.0, stop_strings=("e",))
    g.generate(MIXED, cfg, n=2)  # the largest call first: 4 slots x (the longest prompt + 20, rounded to 64)
    layers = len(g.model.layers)
    cache = g.model.layers[0].self_attn.kv_cache
    assert len(made) == layers and made[0] == 4 * cache.k_cache.shape[2]
    ptr = cache.k_store.data_ptr()
    long = min(made[0], 512) - 64  # one slot, as many positions as the storage (and the context) holds
    for prompts, n, new in ((MIXED[:3], 1, 20), (MIXED, 1, 20), (MIXED[2:5], 2, 20), (["x"], 1, long)):
        g.generate(prompts, SamplingConfig(max_new_tokens=new, temperature=1.0), n=n)
        assert g.model.layers[0].self_attn.kv_cache.k_cache.numel() <= cache.k_store.numel()
    assert len(made) == layers and g.model.layers[0].self_attn.kv_cache.k_store.data_ptr() == ptr
    g.generate(MIXED, SamplingConfig(max_new_tokens=200))  # 4 x ~256 positions: grown once
    assert len(made) == 2 * layers and made[-1] >= 2 * made[0]
