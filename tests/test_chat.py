"""The terminal chat: history building and trimming, the streamed display, and whole sessions driven
through a pseudo-terminal with scripted input on tiny checkpoints."""

from __future__ import annotations

import codecs
import fcntl
import io
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from dataclasses import replace
from pathlib import Path

import pytest

from reasoning.chat import (DIM, PROMPT, RESET, AnswerPrinter, ContextFull, answer_part, fit_prompt, main,
                            opens_thinking)
from reasoning.generate import Generator, SamplingConfig
from reasoning.model import PRESETS, Qwen3
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 160  # the small checkpoint's context: three exchanges of 16-token answers fill it
MAX_NEW = 16


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory, tiny_tokenizer_path) -> Path:
    model = Qwen3(replace(PRESETS["tiny"], max_position_embeddings=CONTEXT))
    model.init_weights(0, std=0.2)
    return save_model(model, tmp_path_factory.mktemp("chat") / "small", tokenizer_path=tiny_tokenizer_path)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_path) -> Tokenizer:
    return Tokenizer(tiny_tokenizer_path)


def n_tokens(tok: Tokenizer, messages: list[dict[str, str]], think: bool = True) -> int:
    return len(tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=think)))


# -- history building and trimming ---------------------------------------------------------------------

HISTORY = [m for i in range(6) for m in (user(f"What is {i} + 7?"), assistant(f"The answer is {i + 7}."))]


def test_the_whole_conversation_is_rendered_when_it_fits(tok):
    p = fit_prompt(tok, HISTORY[:4], "And 3 + 3?", system="Be brief.", think=False, context_length=512,
                   max_new_tokens=100)
    messages = [{"role": "system", "content": "Be brief."}, *HISTORY[:4], user("And 3 + 3?")]
    assert p.text == tok.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    assert p.ids == tok.encode(p.text) and p.dropped == 0
    # the earlier turns are all there, in order, and the prompt ends asking the assistant to answer
    # past the empty think block (thinking off)
    positions = [p.text.index(m["content"]) for m in messages]
    assert positions == sorted(positions)
    assert p.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_trimming_keeps_the_most_recent_exchanges_that_fit_and_the_system_message(tok):
    system = {"role": "system", "content": "Be brief."}
    full = n_tokens(tok, [system, *HISTORY, user("And 3 + 3?")])
    max_new = 512 - full + 40  # 40 tokens too many: the oldest exchanges must go
    p = fit_prompt(tok, HISTORY, "And 3 + 3?", system="Be brief.", context_length=512, max_new_tokens=max_new)
    room = 512 - max_new
    assert p.dropped > 0 and p.dropped % 2 == 0  # whole exchanges: the kept history starts with a user turn
    kept = [system, *HISTORY[p.dropped:], user("And 3 + 3?")]
    assert p.ids == tok.encode(tok.apply_chat_template(kept)) and len(p.ids) <= room
    # as much recent history as fits: one more exchange would not
    assert n_tokens(tok, [system, *HISTORY[p.dropped - 2:], user("And 3 + 3?")]) > room


def test_a_message_that_cannot_fit_alone_is_refused_and_max_new_tokens_must_leave_room(tok):
    alone = n_tokens(tok, [user("x " * 100)])
    with pytest.raises(ContextFull, match=rf"takes {alone} prompt tokens.* leaves {alone - 1}; shorten it"):
        fit_prompt(tok, HISTORY, "x " * 100, context_length=512, max_new_tokens=512 - alone + 1)
    for max_new in (512, 600):
        with pytest.raises(ValueError, match=rf"max_new_tokens \({max_new}\) must be below the model's context "
                                             r"of 512 tokens.*lower --max-new-tokens"):
            fit_prompt(tok, [], "hi", context_length=512, max_new_tokens=max_new)


def test_the_history_keeps_answers_without_their_thinking():
    assert answer_part("<think>\nadd them\n</think>\n\nThe answer is 19.") == "The answer is 19."
    assert answer_part("The answer is 19.") == "The answer is 19."
    assert answer_part("<think>\nstill thinking when cut off") == ""
    # a template whose generation prompt opens the think block: the answer starts inside it
    assert opens_thinking("<|im_start|>assistant\n<think>\n") and not opens_thinking("<|im_start|>assistant\n")
    assert answer_part("add them\n</think>\n\n19", thinking_open=True) == "19"
    assert answer_part("add them", thinking_open=True) == ""


# -- the streamed display ---------------------------------------------------------------------------------

def printed(tok: Tokenizer, ids: list[int], **kw) -> str:
    out = io.StringIO()
    printer = AnswerPrinter(tok, out, **kw)
    for t in ids:
        printer(0, 0, t)
    printer.finish()
    return out.getvalue()


def test_thinking_is_dimmed_or_hidden_and_the_answer_streams_whole(tok):
    thinking, answer = "<think>\nadd 12 and 7\n</think>", "\n\nThe answer is 19 é."
    ids = tok.encode(thinking + answer) + [tok.im_end_id]
    assert printed(tok, ids, dim=True) == f"{DIM}{thinking}{RESET}{answer}\n"
    assert printed(tok, ids, dim=False) == f"{thinking}{answer}\n"  # no terminal: plain text, tags show the block
    assert printed(tok, ids, show_thinking=False, dim=True) == "The answer is 19 é.\n"
    # the prompt opened the block: the answer starts dimmed, and the dim ends with the block
    inside = tok.encode("add 12 and 7\n</think>\n\n19")
    assert printed(tok, inside, dim=True, thinking_open=True) == f"{DIM}add 12 and 7\n</think>{RESET}\n\n19\n"
    # an answer stopped while thinking still ends the dim
    assert printed(tok, tok.encode("<think>\nadd"), dim=True) == f"{DIM}<think>\nadd{RESET}\n"


# -- whole sessions ---------------------------------------------------------------------------------------

class Terminal:
    """`python -m reasoning.chat` on a pseudo-terminal (its controlling terminal, so the \\x03 of Ctrl-C
    reaches it as SIGINT, as from a keyboard)."""

    def __init__(self, *args: str):
        master, slave = os.openpty()

        def as_a_terminal_session() -> None:  # runs in the child, after start_new_session's setsid
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # SIGINT as a foreground job has it, even if this test runner was started ignoring it
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "dumb", "PYTHONIOENCODING": "utf-8",
               "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "reasoning.chat", *args], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=ROOT, env=env, start_new_session=True,
                                     preexec_fn=as_a_terminal_session)
        os.close(slave)
        self.fd, self.decoder, self.buffer = master, codecs.getincrementaldecoder("utf-8")("replace"), ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        """Everything printed up to and including `text` (the terminal's \\r\\n read as \\n)."""
        deadline = time.monotonic() + timeout
        while text not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not printed in {timeout}s; got {self.buffer[-2000:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the chat has exited and the terminal closed
                    chunk = b""
                assert chunk, f"the chat exited before printing {text!r}; got {self.buffer[-2000:]!r}"
                self.buffer += self.decoder.decode(chunk).replace("\r\n", "\n")
        end = self.buffer.index(text) + len(text)
        seen, self.buffer = self.buffer[:end], self.buffer[end:]
        return seen

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def say(self, line: str) -> str:
        """Type `line` and Enter at the prompt; what is printed until the next prompt."""
        self.type(line + "\n")
        return self.read_until(PROMPT)

    def exit_code(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            os.close(self.fd)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def terminal():
    opened = []

    def start(*args: str) -> Terminal:
        opened.append(Terminal(*args))
        return opened[-1]
    yield start
    for t in opened:
        t.close()


def greedy(gen: Generator, messages: list[dict[str, str]], think: bool, max_new: int = MAX_NEW) -> str:
    tok = gen.tokenizer
    [[c]] = gen.generate([tok.encode(tok.apply_chat_template(messages, enable_thinking=think))],
                         SamplingConfig(max_new_tokens=max_new))
    assert not set(c.tokens) & {tok.special_ids["<think>"], tok.special_ids["</think>"]}  # printed plain
    return c.text


def shows_answer(output: str, answer: str) -> bool:
    """The answer printed on lines of its own, followed by the dimmed speed line."""
    return f"\n{answer}\n{DIM}[" in output


def test_a_conversation_remembers_toggles_thinking_trims_and_resets(small_ckpt, terminal):
    """Greedy answers through the terminal equal greedy generation on the conversation the chat must have
    rendered: the second prompt holds the first exchange; /think drops the empty think block; when the
    history outgrows the window the oldest exchanges go, the most recent stay; /reset starts afresh."""
    gen = Generator(load_model(small_ckpt), Tokenizer(small_ckpt), batch_size=1, matmul_dtype="model")
    tok, room = gen.tokenizer, CONTEXT - MAX_NEW
    u1, u2, u3, u4 = "What is 12 + 7?", "Solve 3x + 4 = 10", "And 2 + 2?", "Answer: 42"
    term = terminal("--model", str(small_ckpt), "--no-think", "--temperature", "0", "--max-new-tokens",
                    str(MAX_NEW), "--matmul-dtype", "model", "--device", "cpu")
    banner = term.read_until(PROMPT)
    assert f"context {CONTEXT}, answers up to {MAX_NEW} tokens, thinking off" in banner

    a1 = greedy(gen, [user(u1)], think=False)
    assert shows_answer(term.say(u1), a1)

    # the second turn's prompt holds the first exchange: its answer is the model's answer to both turns
    a2 = greedy(gen, [user(u1), assistant(a1), user(u2)], think=False)
    assert a2 != greedy(gen, [user(u2)], think=False)  # the history changes what this model says
    assert shows_answer(term.say(u2), a2)

    assert "(thinking on)" in term.say("/think")
    three = [user(u1), assistant(a1), user(u2), assistant(a2), user(u3)]
    assert n_tokens(tok, three) <= room  # still fits whole
    a3 = greedy(gen, three, think=True)
    assert shows_answer(term.say(u3), a3)

    # the fourth does not fit whole: the oldest exchanges go, as few as make it fit
    history = [*three, assistant(a3)]
    assert n_tokens(tok, [*history, user(u4)]) > room
    k = next(k for k in (2, 4) if n_tokens(tok, [*history[k:], user(u4)]) <= room)  # else: resize the test
    a4 = greedy(gen, [*history[k:], user(u4)], think=True)
    out = term.say(u4)
    assert f"(left out the {k} oldest messages: the conversation outgrew the context)" in out
    assert shows_answer(out, a4)

    assert "(conversation forgotten)" in term.say("/reset")
    assert shows_answer(term.say(u1), greedy(gen, [user(u1)], think=True))
    assert "/reset   forget the conversation" in term.say("/help")
    term.type("/exit\n")
    assert term.exit_code() == 0


def test_ctrl_c_stops_an_answer_and_at_the_prompt_quits(tiny_ckpt, terminal):
    gen = Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), batch_size=1, matmul_dtype="model")
    long_q, short_q = "Answer: 42", "What is 12 + 7?"
    full = greedy(gen, [user(long_q)], think=False, max_new=480)
    assert len(gen.tokenizer.encode(full)) > 400  # a long answer: Ctrl-C comes long before its end
    term = terminal("--model", str(tiny_ckpt), "--no-think", "--temperature", "0", "--max-new-tokens", "480",
                    "--matmul-dtype", "model", "--device", "cpu")
    term.read_until(PROMPT)
    term.type(long_q + "\n")
    term.read_until(long_q + "\n")  # the echo; the answer follows
    term.read_until(full[:3])  # the answer is streaming
    term.type("\x03")
    out = term.read_until(PROMPT)
    partial = out[:out.index("\n" + DIM + "(stopped; this exchange is left out of the history)")]
    shown = (full[:3] + partial).replace("^C", "", 1)  # less the terminal's echo of the key
    assert len(shown) < len(full) and full.startswith(shown[:-1])  # (the last character may be a cut one)
    # the stopped exchange is not in the history: the next answer is the one to the message alone
    assert shows_answer(term.say(short_q), greedy(gen, [user(short_q)], think=False, max_new=480))
    term.type("\x03")
    assert term.exit_code() == 0


def test_end_of_input_exits_and_output_is_plain_off_a_terminal(tiny_ckpt, capsys, monkeypatch):
    gen = Generator(load_model(tiny_ckpt), Tokenizer(tiny_ckpt), batch_size=1, matmul_dtype="model")
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 12 + 7?\n"))
    main(["--model", str(tiny_ckpt), "--temperature", "0", "--max-new-tokens", "8", "--matmul-dtype", "model",
          "--device", "cpu"])
    out, err = capsys.readouterr()
    tok = gen.tokenizer
    [[c]] = gen.generate([tok.encode(tok.apply_chat_template([user("What is 12 + 7?")]))],
                         SamplingConfig(max_new_tokens=8))
    assert out == f"{PROMPT}{c.text}\n{PROMPT}\n"  # piped: no escape codes; end of input ends the chat
    assert re.search(rf"\n\[{len(c.tokens)} tokens in [\d.]+s: [\d.]+ tok/s.*; peak memory \d+ MiB\]\n", err)
    assert DIM not in err


def test_max_new_tokens_that_fill_the_context_are_refused(tiny_ckpt, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Qwen3's recommended thinking-mode sampling" in " ".join(capsys.readouterr().out.split())
    for max_new in ("512", "1000"):
        with pytest.raises(SystemExit) as e:
            main(["--model", str(tiny_ckpt), "--max-new-tokens", max_new, "--device", "cpu"])
        assert e.value.code == 2
        assert (f"--max-new-tokens {max_new} leaves no room for the conversation in the model's context of 512 "
                "tokens; lower it") in capsys.readouterr().err
