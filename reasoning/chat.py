"""A multi-turn terminal chat with a Qwen3 checkpoint, streaming the answer as it is generated.

Usage:

    python -m reasoning.chat --model data/models/grpo
    python -m reasoning.chat --model hf:Qwen/Qwen3-0.6B --no-think --system "Answer briefly."

Type a message and Enter. The model's thinking is shown dimmed (`--hide-thinking` hides it);
`/think` turns thinking on or off for the next answers, `/reset` forgets the conversation, `/help`
lists the commands, `/exit` or Ctrl-D quits. Ctrl-C stops an answer (the exchange is then left out
of the history); at the prompt it quits. After each answer a line on stderr gives its tokens,
tok/s and the process's peak memory.

Design choices:
- Every turn re-renders the whole conversation through the checkpoint's chat template
  (`Tokenizer.apply_chat_template`) and prefills it anew, as the book's chapter 2 `chat_multiturn`
  does; the KV cache is not kept across turns. The history holds each answer without its
  thinking, as Qwen3's template renders earlier assistant turns, so past reasoning costs no context.
- When the conversation outgrows the context less `max_new_tokens`, the oldest exchanges are left
  out, whole, until it fits (the system message stays), and stay out. The book cuts the token
  sequence instead (`trim_input_tensor`); cutting at message boundaries keeps the prompt a
  conversation the model has seen in training, not one that starts inside a torn turn. A message
  that cannot fit even alone is refused with the numbers, not cut.
- The thinking block is recognised by its `<think>`/`</think>` tokens (special tokens, one id each),
  so dimming or hiding it never depends on how the text around them decodes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TextIO

from .devices import peak_memory_bytes
from .generate import (Completion, Generator, SamplingConfig, TextStream, add_engine_flags, fastest_matmul_dtype,
                       load_for_cli)
from .tokenizer import THINK_CLOSE, THINK_OPEN, Tokenizer

DIM, RESET = "\x1b[2m", "\x1b[0m"
PROMPT = ">>> "
HELP = """/think   thinking on or off for the next answers
/reset   forget the conversation (the system message stays)
/exit    quit (also Ctrl-D, or Ctrl-C at the prompt); Ctrl-C during an answer stops it
/help    this list"""


class ContextFull(ValueError):
    """A message that does not fit the context even without any earlier turn."""


class FittedPrompt(NamedTuple):
    text: str  # the rendered conversation, ending in the generation prompt
    ids: list[int]
    dropped: int  # how many of the oldest history messages were left out to fit


def fit_prompt(tokenizer: Tokenizer, history: Sequence[dict[str, str]], user: str, *, system: str = "",
               think: bool = True, context_length: int, max_new_tokens: int) -> FittedPrompt:
    """The conversation `system` + `history` + `user`, rendered with the chat template, with the oldest
    exchanges of `history` (alternating user and assistant messages) left out until its tokens fit in
    `context_length - max_new_tokens`, so that the answer has room for `max_new_tokens` tokens.

    Raises ValueError when max_new_tokens leaves no room for any prompt, and ContextFull when the
    system message and `user` alone do not fit.
    """
    room = context_length - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) must be below the model's context of "
                         f"{context_length} tokens, to leave room for the prompt; lower --max-new-tokens")
    head = [{"role": "system", "content": system}] if system else []
    for dropped in range(0, len(history) + 1, 2):  # whole exchanges: the kept history starts with a user turn
        messages = [*head, *history[dropped:], {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=think)
        ids = tokenizer.encode(text)
        if len(ids) <= room:
            return FittedPrompt(text, ids, dropped)
    raise ContextFull(f"this message does not fit: {'with the system message ' if system else ''}it takes "
                      f"{len(ids)} prompt tokens, and the context of {context_length} less --max-new-tokens "
                      f"{max_new_tokens} leaves {room}; shorten it{' or the system message' if system else ''}, "
                      "or lower --max-new-tokens")


def opens_thinking(prompt: str) -> bool:
    """Whether the generation prompt itself opens the think block (some templates end in "<think>\\n"),
    so the answer starts inside it."""
    return prompt.rstrip().endswith(THINK_OPEN)


def answer_part(text: str, thinking_open: bool = False) -> str:
    """The answer in a generated `text`, without its thinking: what follows the last `</think>`, leading
    newlines removed, as Qwen3's template keeps an assistant turn in the history. A text still inside
    its thinking (it opened `<think>`, or the prompt did, and never closed it) has no answer: ""."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].lstrip("\n")
    return "" if thinking_open or text.lstrip().startswith(THINK_OPEN) else text


class AnswerPrinter:
    """Streams one answer to `out` as `Generator.generate`'s stream callback: the thinking block (from
    `<think>` to `</think>`, tags included) dimmed when `dim`, or left out when not `show_thinking`; the
    answer as it comes. Stop tokens are not printed; `finish` ends the answer's line."""

    def __init__(self, tokenizer: Tokenizer, out: TextIO, show_thinking: bool = True, dim: bool = False,
                 thinking_open: bool = False):
        self.text = TextStream(tokenizer, skip=tokenizer.stop_ids)
        self.open_id = tokenizer.special_ids.get(THINK_OPEN)
        self.close_id = tokenizer.special_ids.get(THINK_CLOSE)
        self.out, self.show_thinking, self.dim = out, show_thinking, dim
        self.thinking = False
        self.after_thinking = False  # hidden thinking: the newlines that follow it are not printed either
        if thinking_open:
            self._enter_thinking()

    def __call__(self, _prompt: int, _sample: int, token: int) -> None:
        if token == self.open_id:
            self._write(self.text.flush())
            self._enter_thinking()
        self._write(self.text.push(token))
        if token == self.close_id and self.thinking:
            self._write(self.text.flush())
            self._write(RESET if self.dim and self.show_thinking else "", raw=True)
            self.thinking, self.after_thinking = False, not self.show_thinking
        self.out.flush()

    def finish(self) -> None:
        self._write(self.text.flush())
        if self.thinking and self.dim and self.show_thinking:
            self._write(RESET, raw=True)
        self.thinking = False
        self.out.write("\n")
        self.out.flush()

    def _enter_thinking(self) -> None:
        self.thinking = True
        if self.dim and self.show_thinking:
            self._write(DIM, raw=True)

    def _write(self, text: str, raw: bool = False) -> None:
        if not raw:
            if self.thinking and not self.show_thinking:
                return
            if self.after_thinking:
                text = text.lstrip("\n")
                self.after_thinking = not text
        self.out.write(text)


@dataclass
class Chat:
    """A conversation with one model: its history, and the settings `/` commands change."""

    generator: Generator
    sampling: SamplingConfig
    system: str = ""
    think: bool = True
    seed: int = 0
    history: list[dict[str, str]] = field(default_factory=list)  # user and assistant turns, answers only
    answers: int = 0  # answers given: answer i samples with seed + i, so a sampled chat can be replayed

    def prompt(self, user: str) -> FittedPrompt:
        return fit_prompt(self.generator.tokenizer, self.history, user, system=self.system, think=self.think,
                          context_length=self.generator.model.config.max_position_embeddings,
                          max_new_tokens=self.sampling.max_new_tokens)

    def reply(self, user: str, prompt: FittedPrompt, stream: Callable[[int, int, int], None]) -> Completion:
        """Generate the answer to `user` from its fitted `prompt`, streaming tokens to `stream`; the
        history takes the exchange (and loses what the prompt left out) only once the answer is whole."""
        [[c]] = self.generator.generate([prompt.ids], self.sampling, seeds=[self.seed + self.answers], stream=stream)
        self.answers += 1
        del self.history[:prompt.dropped]
        self.history += [{"role": "user", "content": user},
                         {"role": "assistant", "content": answer_part(c.text, opens_thinking(prompt.text))}]
        return c

    def reset(self) -> None:
        self.history.clear()


def repl(chat: Chat, show_thinking: bool = True) -> None:
    """Read messages and commands from stdin until /exit, end of input or Ctrl-C at the prompt; answer each
    message on stdout, and say everything else (notes, speed) on stderr."""
    out, err = sys.stdout, sys.stderr
    dim_out, dim_err = out.isatty(), err.isatty()

    def note(text: str) -> None:  # what the chat itself says, apart from the model's words
        err.write(f"{DIM}{text}{RESET}\n" if dim_err else f"{text}\n")
        err.flush()

    while True:
        try:
            line = input(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not line:
            continue
        if line.startswith("/"):
            command = line.split()[0].lower()
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                chat.reset()
                note("(conversation forgotten)")
            elif command == "/think":
                chat.think = not chat.think
                note(f"(thinking {'on' if chat.think else 'off'})")
            elif command == "/help":
                note(HELP)
            else:
                note(f"unknown command {command}; /help lists the commands")
            continue
        printer = None
        try:
            prompt = chat.prompt(line)
            if prompt.dropped:
                note(f"(left out the {prompt.dropped} oldest messages: the conversation outgrew the context)")
            printer = AnswerPrinter(chat.generator.tokenizer, out, show_thinking, dim_out,
                                    opens_thinking(prompt.text))
            t0 = time.perf_counter()
            c = chat.reply(line, prompt, printer)
            dt = time.perf_counter() - t0
            printer.finish()
        except ContextFull as e:
            note(str(e))
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            if printer is not None:
                printer.finish()
            note("(stopped; this exchange is left out of the history)")
            continue
        cut = ", cut at --max-new-tokens" if c.finish_reason == "length" else ""
        note(f"[{len(c.tokens)} tokens in {dt:.2f}s: {len(c.tokens) / dt:.1f} tok/s{cut}; prompt "
             f"{len(prompt.ids)} tokens; peak memory "
             f"{peak_memory_bytes(chat.generator.model.device) / 2**20:.0f} MiB]")

def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m reasoning.chat",
        description="Chat with a Qwen3 checkpoint in the terminal: multi-turn, streamed, thinking dimmed. "
                    "Commands: " + ", ".join(line.split()[0] for line in HELP.splitlines()) + ".")
    ap.add_argument("--model", required=True, help="checkpoint directory, or a hub id such as hf:Qwen/Qwen3-0.6B")
    ap.add_argument("--system", default="", help="a system message that opens the conversation (default: none)")
    ap.add_argument("--think", action=argparse.BooleanOptionalAction, default=True,
                    help="let the model think in <think> before answering (default: on, as Qwen3's template); "
                         "/think toggles it")
    ap.add_argument("--hide-thinking", action="store_true", help="do not print the thinking (default: dimmed)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="the longest answer, thinking included (default: 2048, or half the model's context if "
                         "that is less); the history keeps to the context less this")
    ap.add_argument("--temperature", type=float, default=0.6,
                    help="default 0.6 with --top-p 0.95 --top-k 20: Qwen3's recommended thinking-mode sampling "
                         "(greedy decoding makes thinking models repeat themselves); 0 decodes greedily")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="answer i samples with seed + i")
    add_engine_flags(ap)
    args = ap.parse_args(argv)

    tok, model = load_for_cli(args)
    dtype = model.embed_tokens.weight.dtype
    context = model.config.max_position_embeddings
    max_new = min(2048, context // 2) if args.max_new_tokens is None else args.max_new_tokens
    if max_new >= context:
        ap.error(f"--max-new-tokens {max_new} leaves no room for the conversation in the model's context of "
                 f"{context} tokens; lower it")
    try:
        sampling = SamplingConfig(max_new, args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        ap.error(str(e))
    gen = Generator(model, tok, compile=args.compile, batch_size=1, matmul_dtype=args.matmul_dtype)

    # One-off set-up before the first answer, so its tok/s is the model's: the matmul-dtype measurement
    # for every row bucket a prefill or decode step uses (1 to 256 rows), and the compilation.
    t0 = time.perf_counter()
    if args.matmul_dtype == "auto":
        for rows in (2**i for i in range(9)):
            fastest_matmul_dtype(model, rows)
    if args.compile:
        gen.generate([tok.encode(tok.apply_chat_template([{"role": "user", "content": "hi"}]))],
                     SamplingConfig(max_new_tokens=2))
    setup = time.perf_counter() - t0

    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and arrow-key history for input())
    sys.stderr.write(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
                     f"{str(dtype).removeprefix('torch.')} on {args.device}, context {context}, answers up to "
                     f"{max_new} tokens, thinking {'on' if args.think else 'off'}; set-up {setup:.2f}s. "
                     "/help lists the commands.\n")
    repl(Chat(gen, sampling, system=args.system, think=args.think, seed=args.seed),
         show_thinking=not args.hide_thinking)


if __name__ == "__main__":
    main()
