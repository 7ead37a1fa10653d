"""bench/throughput.py forces every engine to the drawn answer lengths, and refuses figures otherwise."""

from __future__ import annotations

import pytest
import torch

import reasoning.generate as engine
from bench import throughput as bench
from bench.decode import book_path

LENGTHS = [5, 9, 3, 12, 7, 4, 6, 8]  # prompt tokens
TARGETS = [1, 9, 2, 12, 3, 12, 5, 4]  # answer tokens: EOS as the first token, rows at the limit (12)
MAX_NEW = 12


def run(name: str) -> dict:
    spec = {"model": "tiny", "engine": name, "batch_size": 3, "max_new_tokens": MAX_NEW, "dtype": "float32",
            "device": "cpu", "compile": False, "prompt_lengths": LENGTHS, "targets": TARGETS,
            "book_path": book_path(None)}
    mc = bench.model_config("tiny", max(LENGTHS) + MAX_NEW)
    go = (bench.build_book if name == "book[batched]" else bench.build_ours)(spec, mc)
    with torch.inference_mode():
        return go(bench.prompt_ids(LENGTHS, mc.vocab_size, seed=0))


@pytest.mark.parametrize("name", bench.ENGINES)
def test_every_engine_emits_exactly_the_drawn_lengths(name):
    if name == "book[batched]" and book_path(None) is None:
        pytest.skip("the book's package is not installed (pip install --no-deps --target /tmp/rfs "
                    "reasoning-from-scratch)")
    plain = engine.Generator._take
    res = run(name)
    assert engine.Generator._take is plain  # the hook is gone once the run is over
    assert res["produced"] == TARGETS
    assert res["stopped"] == [t < MAX_NEW for t in TARGETS]
    checked = bench.verify(res, TARGETS, MAX_NEW)
    assert checked["verified"] and checked["tokens"] == sum(TARGETS)


def test_continuous_batching_keeps_the_batch_fuller_than_static_chunks():
    cont, static = run("ours[continuous]"), run("ours[static]")
    # static: three chunks of 3 rows (shortest prompts first) each run to their longest answer
    chunks = bench.static_chunks(LENGTHS, 3)
    assert static["rounds"] == sum(max(TARGETS[i] for i in c) for c in chunks)
    assert cont["rounds"] < static["rounds"]


def test_verify_refuses_a_run_that_missed_a_length():
    res = {"wall_s": 1.0, "rounds": 10, "produced": [1, 9, 2, 12], "stopped": [True, True, True, False]}
    assert bench.verify(res, [1, 9, 2, 12], MAX_NEW)["verified"]
    off = bench.verify({**res, "produced": [1, 8, 2, 12]}, [1, 9, 2, 12], MAX_NEW)
    assert "tok_s" not in off and "row 1: 8 tokens +stop, drawn 9" in off["error"]
    unstopped = bench.verify({**res, "stopped": [True, True, True, True]}, [1, 9, 2, 12], MAX_NEW)
    assert "tok_s" not in unstopped and "row 3" in unstopped["error"]


def test_workload_is_seeded_heavy_tailed_and_bounded():
    a, b = bench.answer_lengths(2000, 256, seed=1), bench.answer_lengths(2000, 256, seed=1)
    assert a == b != bench.answer_lengths(2000, 256, seed=2)
    d = bench.describe(a, 256)
    assert min(a) >= 1 and d["max"] == 256
    assert 0.05 < d["share_at_limit"] < 0.15 and d["mean"] > 1.3 * d["median"]  # the tail pulls the mean up
    assert len(bench.MATH500_PROMPT_TOKENS) == 500
    ids = bench.prompt_ids([4, 50], vocab=20, seed=0)
    assert [len(x) for x in ids] == [4, 50] and all(0 < t < 19 for x in ids for t in x)  # never PAD or EOS


def test_math500_file_needs_a_tokenizer_and_problems(tmp_path, tiny_tokenizer_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"problem": "What is 1+1?"}\n{"problem": "Solve x^2 = 4."}\n')
    with pytest.raises(ValueError, match="--tokenizer"):
        bench.prompt_lengths(f, None)
    short, longer = bench.prompt_lengths(f, tiny_tokenizer_path)
    assert 0 < short < longer  # the book's prompt around each problem, tokenized
    (tmp_path / "bad.jsonl").write_text('{"question": "?"}\n')
    with pytest.raises(ValueError, match="lack a 'problem'"):
        bench.prompt_lengths(tmp_path / "bad.jsonl", tiny_tokenizer_path)
