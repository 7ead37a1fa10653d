"""The toy tokenizer: Qwen3's special tokens and chat template path, round trips, determinism, lengths."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as HFTokenizer

from reasoning.prompts import COT_SUFFIX, PromptConfig, render
from reasoning.tokenizer import ENDOFTEXT, IM_END, IM_START, SPECIAL_TOKENS, THINK_CLOSE, THINK_OPEN, Tokenizer
from reasoning.toy.task import generate_problems, pretrain_corpus
from reasoning.toy.tokenizer import train_tokenizer

ROWS = generate_problems(2000, seed=5)
DOCS = pretrain_corpus(ROWS, seed=5)


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return train_tokenizer(DOCS, tmp_path_factory.mktemp("toytok"))  # a directory gets tokenizer.json


def test_loads_with_qwen3_special_tokens_at_fixed_ids(tok_path):
    assert tok_path.name == "tokenizer.json"
    tok = Tokenizer(tok_path.parent)
    assert tok.special_ids == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert tok.stop_ids == (2, 0) and 300 < tok.vocab_size <= 512
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.encode(t) == [i] and tok.decode([i]) == t


def test_round_trip_with_chat_template_and_thinking(tok_path):
    tok = Tokenizer(tok_path)
    assert tok.chat_template.builtin  # the toy tokenizer ships no template of its own
    row = ROWS[0]
    boxed = f"\\boxed{{{row['answer']}}}"
    chat = tok.apply_chat_template([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": row["problem"]},
        {"role": "assistant", "content": boxed, "reasoning_content": row["solution"]},
        {"role": "user", "content": "Again, naïve ∑ π ≤ 3 — ok?"},  # characters the corpus never had
    ])
    no_think = render(row["problem"], PromptConfig(template="chat", think=False), tok.chat_template)
    texts = [chat, no_think, DOCS[1], "1234567 + 89"]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        for special, i in tok.special_ids.items():
            assert ids.count(i) == text.count(special)
    hi = tok.apply_chat_template([{"role": "user", "content": "hi"}])  # defaults: generation prompt, thinking on
    assert hi == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=False) == (
        f"{hi}{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")  # thinking off: an empty think block is pre-filled
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == (
        f"{IM_START}user\nhi{IM_END}\n")
    # Qwen3 marks <think> and </think> as plain added tokens: skipping special tokens keeps them.
    reply = f"{THINK_OPEN}\n2 + 2 = 4\n{THINK_CLOSE}\n\n\\boxed{{4}}"
    ids = tok.encode(f"{IM_START}assistant\n{reply}{IM_END}{ENDOFTEXT}")
    assert tok.decode(ids, skip_special_tokens=True) == f"assistant\n{reply}"


def test_digits_split_and_no_merges_spent_on_special_tokens(tok_path):
    tok = Tokenizer(tok_path)
    assert [tok.decode([i]) for i in tok.encode("x = 90210")][-5:] == list("90210")
    pieces = set(HFTokenizer.from_file(str(tok_path)).get_vocab()) - set(SPECIAL_TOKENS)
    assert not [p for p in pieces if "<|" in p or "|>" in p or "think" in p]


def test_same_texts_same_bytes(tmp_path, tok_path):
    again = train_tokenizer(DOCS, tmp_path / "a.json")
    assert again.read_bytes() == tok_path.read_bytes()
    smaller = train_tokenizer(DOCS, tmp_path / "b.json", vocab_size=400)
    assert smaller.read_bytes() != tok_path.read_bytes() and Tokenizer(smaller).vocab_size == 400
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(DOCS, tmp_path / "c.json", vocab_size=200)


def test_problems_and_solutions_fit_the_tiny_model_budget(tok_path):
    tok = Tokenizer(tok_path)
    problems = [len(ids) for ids in tok.encode_batch([r["problem"] for r in ROWS])]
    solutions = [len(ids) for ids in tok.encode_batch([r["solution"] for r in ROWS])]
    assert max(problems) <= 60 and max(solutions) <= 80
    cot = [render(r["problem"], PromptConfig(cot_suffix=COT_SUFFIX)) + "\n" + r["solution"] for r in ROWS]
    assert max(len(ids) for ids in tok.encode_batch(cot)) <= 160  # a whole CoT document fits a 256 context


def test_every_prompt_ends_on_a_token_boundary_of_its_documents(tok_path):
    """A prompt's tokens are a prefix of the tokens of every corpus document that continues it.

    Qwen's pattern glues newlines to punctuation, so "Answer:\\n" would be one token in training
    while the prompt ends on ":"; the model would then never have seen the prompt's last token.
    """
    tok = Tokenizer(tok_path)
    row = ROWS[0]
    for cfg in (PromptConfig(), PromptConfig(cot_suffix=COT_SUFFIX)):
        prompt = render(row["problem"], cfg)
        for continuation in ("\n" + row["solution"], "\n\\boxed{7}", " 7"):
            ids = tok.encode(prompt + continuation)
            assert ids[:len(tok.encode(prompt))] == tok.encode(prompt), (cfg, continuation)
