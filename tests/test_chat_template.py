"""Chat templates: ours renders exactly as transformers' `apply_chat_template` does, for our built-in
template and for Qwen3's own on its real vocabulary; the built-in template follows Qwen3's rules; the
sandbox holds against templates that reach for Python internals."""

from __future__ import annotations

import json
import shutil
import unicodedata

import pytest

from reasoning.chat_template import BUILTIN_TEMPLATE, ChatTemplate, ChatTemplateError
from reasoning.prompts import PromptConfig, prompt_hash, render
from reasoning.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str, reasoning: str | None = None) -> dict:
    return {"role": "assistant", "content": text, **({"reasoning_content": reasoning} if reasoning is not None else {})}


SYSTEM = {"role": "system", "content": "You are a careful math tutor."}
CONVERSATIONS = {
    "single": [user("What is 12 + 7?")],
    "system": [SYSTEM, user("Solve 3x + 4 = 10.")],
    "multi_turn": [user("What is 2 + 2?"), assistant("\\boxed{4}", "2 + 2 = 4"), user("And 3 + 3?")],
    "multi_turn_system": [SYSTEM, user("Hi"), assistant("Hello!"), user("What is 5 * 6?"),
                          assistant("\\boxed{30}", "5 * 6 = 30"), user("Thanks. And 7 * 8?")],
    "final_assistant_without_reasoning": [user("Say hi."), assistant("Hi!")],
    "final_assistant_with_reasoning": [SYSTEM, user("What is 9 - 4?"), assistant("\\boxed{5}", "9 - 4 = 5")],
    "reasoning_with_spaces": [user("What is 1 + 1?"), assistant("  \\boxed{2}", "  one plus one \n is two  ")],
    "reasoning_with_newlines": [user("What is 1 + 2?"), assistant("\n\n\\boxed{3}", "\n\n1 + 2 = 3\n\n")],
    "think_block_in_content": [user("What is 4 / 2?"), assistant("<think>\n4 / 2 = 2\n</think>\n\n\\boxed{2}")],
    "two_answers_after_the_last_question": [user("What is 3 + 4?"), assistant("Let me see.", "3 + 4"),
                                            assistant("\\boxed{7}", " = 7 ")],
    "unicode": [user("Is ∑ π ≤ 3, naïvely? 日本語で答えて。"), assistant("いいえ 😀", "π ≈ 3.14 ")],
}
MODES = [(gen, think) for gen in (True, False) for think in (True, False)]  # generation prompt, thinking


@pytest.fixture(scope="module")
def loaded():
    """(ours, transformers') tokenizer of a directory, loaded once per module (Qwen3's takes ~2 s)."""
    cache: dict = {}

    def get(directory):
        if directory not in cache:
            cache[directory] = Tokenizer(directory), transformers.AutoTokenizer.from_pretrained(directory)
        return cache[directory]
    return get


def assert_same_as_transformers(ours: Tokenizer, hf, messages: list[dict]) -> None:
    for gen, think in MODES:
        text = ours.apply_chat_template(messages, add_generation_prompt=gen, enable_thinking=think)
        assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                              enable_thinking=think), (gen, think)
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_builtin_template_renders_as_transformers(loaded, tiny_ckpt, name):
    """The built-in template, as our exports carry it (tokenizer_config.json of a tiny checkpoint)."""
    ours, hf = loaded(tiny_ckpt)
    assert ours.chat_template.builtin
    assert_same_as_transformers(ours, hf, CONVERSATIONS[name])


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_qwen3_template_renders_as_transformers_on_the_real_vocabulary(loaded, qwen3_dir, name):
    ours, hf = loaded(qwen3_dir)
    assert not ours.chat_template.builtin
    assert_same_as_transformers(ours, hf, CONVERSATIONS[name])


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_builtin_template_follows_qwen3(loaded, qwen3_dir, name):
    """For system, user and assistant turns our template and Qwen3's render the same text."""
    qwen3, ours = loaded(qwen3_dir)[0].chat_template, ChatTemplate(BUILTIN_TEMPLATE)
    for gen, think in MODES:
        assert ours.render(CONVERSATIONS[name], gen, think) == qwen3.render(CONVERSATIONS[name], gen, think)


def test_qwen3_rules_that_the_old_string_template_broke():
    tpl = ChatTemplate(BUILTIN_TEMPLATE)
    # (a) an answer before the last question loses its reasoning; the one after keeps it
    text = tpl.render(CONVERSATIONS["multi_turn"] + [assistant("\\boxed{6}", "3 + 3 = 6")], add_generation_prompt=False)
    assert text == ("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n\\boxed{4}<|im_end|>\n"
                    "<|im_start|>user\nAnd 3 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n3 + 3 = 6\n</think>\n\n\\boxed{6}<|im_end|>\n")
    # (b) a final answer without reasoning gets the empty think block
    assert tpl.render(CONVERSATIONS["final_assistant_without_reasoning"], add_generation_prompt=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHi!<|im_end|>\n")
    # (c) only newlines are stripped around the reasoning and before the content
    assert tpl.render(CONVERSATIONS["reasoning_with_spaces"], add_generation_prompt=False).endswith(
        "<think>\n  one plus one \n is two  \n</think>\n\n  \\boxed{2}<|im_end|>\n")
    assert tpl.render(CONVERSATIONS["reasoning_with_newlines"], add_generation_prompt=False).endswith(
        "<think>\n1 + 2 = 3\n</think>\n\n\\boxed{3}<|im_end|>\n")
    # thinking off pre-fills an empty think block after the generation prompt
    assert tpl.render([user("hi")], enable_thinking=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_real_qwen3_vocabulary(loaded, qwen3_dir):
    tiktoken = pytest.importorskip("tiktoken")
    from tests.qwen3_vocab import QWEN3_ADDED_TOKENS, QWEN_PATTERN, qwen_ranks

    tok = loaded(qwen3_dir)[0]
    assert tok.encode("Hello world") == [9707, 1879]
    assert tok.encode("<|im_start|>user\n") == [151644, 872, 198]
    assert tok.vocab_size == 151_669 and tok.stop_ids == (151_645, 151_643) and tok.pad_id == 151_643
    assert [tok.encode(t) for t, _ in QWEN3_ADDED_TOKENS] == [[151_643 + i] for i in range(26)]
    # The merges give tiktoken's encoding of Qwen's ranks (its own algorithm) on any text.
    oracle = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=qwen_ranks(), special_tokens={})
    texts = ["  leading spaces,\n\n\ttabs and newlines\r\n", "1234567 + 89 = 1234656", "naïve café 日本語 😀🎉",
             "x² + y² = z², ∫ f(x) dx", "def f(x):\n    return x ** 2  # square", "ﬁ ligature, Ünïcödé",
             "a" * 60, "Answer:\n\\boxed{\\frac{3}{4}}", "don't WON'T I'll they've", " " * 7 + "end"]
    for text in texts:
        assert tok.encode(text) == oracle.encode(unicodedata.normalize("NFC", text)), text
        assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)
    # <think> and </think> are plain added tokens in Qwen3: skipping special tokens keeps them.
    ids = tok.encode("<|im_start|>assistant\n<think>\nok\n</think>\n\nyes<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nok\n</think>\n\nyes"


def test_prompt_hash_names_the_template(loaded, qwen3_dir, tiny_ckpt):
    chat, base = PromptConfig(template="chat", think=True), PromptConfig()
    qwen3, builtin = loaded(qwen3_dir)[0].chat_template, loaded(tiny_ckpt)[0].chat_template
    assert prompt_hash(chat, qwen3) != prompt_hash(chat, builtin) != chat.hash
    assert prompt_hash(base, qwen3) == prompt_hash(base, builtin) == base.hash  # a base prompt uses no template
    assert render("What is 1 + 1?", chat, qwen3) == render("What is 1 + 1?", chat, builtin)
    with pytest.raises(ValueError, match="pass tokenizer.chat_template"):
        render("What is 1 + 1?", chat)


INJECTIONS = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ messages.__class__.__base__ }}",
    "{{ raise_exception.__globals__ }}",
    "{% set ns = namespace(__dict__=1) %}{{ ns }}",
    "{% set ns = namespace(x=1) %}{% set ns._secret = 2 %}",
    "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "{{ dict.__call__.__globals__ }}",
]


@pytest.mark.parametrize("source", INJECTIONS)
def test_templates_reaching_for_python_internals_are_refused(source, tmp_path, tiny_ckpt):
    with pytest.raises(ChatTemplateError, match="sandbox"):
        ChatTemplate(source).render([user("hi")])
    # The same from a checkpoint's tokenizer_config.json: the error names the file.
    ckpt = tmp_path / "evil"
    shutil.copytree(tiny_ckpt, ckpt)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": source}))
    with pytest.raises(ChatTemplateError, match=f"{ckpt}.*tokenizer_config.json:chat_template broke the sandbox"):
        Tokenizer(ckpt).apply_chat_template([user("hi")])


def test_template_sources_and_errors(tmp_path, tiny_ckpt):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())

    def write(template) -> None:
        (ckpt / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))

    # chat_template.jinja beside the config wins, as in transformers; `{% generation %}` renders its body.
    write("config's {{ messages[0].content }}")
    (ckpt / "chat_template.jinja").write_text("{% generation %}file's {{ messages[0].content }}{% endgeneration %}")
    hf = transformers.AutoTokenizer.from_pretrained(ckpt)
    assert Tokenizer(ckpt).apply_chat_template([user("x")]) == "file's x" == hf.apply_chat_template(
        [user("x")], tokenize=False, add_generation_prompt=True)
    (ckpt / "chat_template.jinja").unlink()
    # named templates: the "default" one
    write([{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ bos_token }}plain"}])
    assert Tokenizer(ckpt).apply_chat_template([user("x")]) == "plain"  # our exports set no bos_token
    write([{"name": "tool_use", "template": "tools"}])
    with pytest.raises(ChatTemplateError, match="no 'default' one"):
        Tokenizer(ckpt)
    write("{% if %}")
    with pytest.raises(ChatTemplateError, match="chat_template is not valid Jinja"):
        Tokenizer(ckpt)
    # the template's own raise_exception, and malformed conversations
    builtin = ChatTemplate(BUILTIN_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="unknown chat role tool: use system, user or assistant"):
        builtin.render([user("hi"), {"role": "tool", "content": "42"}])
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        builtin.render([])
    with pytest.raises(ChatTemplateError, match="message 1 must be a dict with string 'role' and 'content'"):
        builtin.render([user("hi"), {"role": "assistant", "content": None}])
    (ckpt / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer(ckpt)
