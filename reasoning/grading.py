"""Answer grading: pull the final answer out of a completion and decide whether it matches the gold.

Design choices
- Nothing is ever evaluated as code. Answers go through our own recursive-descent parser for a
  LaTeX/plain-math subset into a small tuple AST, and the AST is checked against resource limits
  (input length, nesting, exponent size, factorial and binomial arguments, digits of any constant)
  before any arithmetic, so power towers, huge factorials and deep nesting are refused up front.
- Cheap decisions stay in the calling process: normalised strings, exact rational arithmetic
  (`fractions.Fraction`) and 40-digit numeric evaluation (mpmath) decide numbers and constants, and
  reject non-identities between symbolic expressions by evaluating both at sample points.
- Only a symbolic identity that survives that test (an expression with variables, or an equation)
  is proved with sympy, in a persistent child process started lazily with `subprocess` (so it also
  works from daemonic multiprocessing workers and from any thread; `signal.alarm` only works on the
  main thread). The child is killed and restarted when a check overruns its wall-clock limit.
- Grading never raises: any internal error is an incorrect verdict with reason "grader-error".
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import mpmath

GRADER_NAME = "reasoning.grading"
GRADER_VERSION = "1.0.0"
DEFAULT_TIMEOUT_S = 5.0  # wall-clock budget for the sympy checks of one comparison

# Resource limits, checked before any arithmetic.
MAX_ANSWER_CHARS = 4000
MAX_DEPTH = 50  # parser recursion (brackets, \frac, \sqrt ... nested)
MAX_NODES = 2000
MAX_ITEMS = 64  # elements of a tuple, set or matrix
MAX_LITERAL_DIGITS = 1000
MAX_EXPONENT = 1000
MAX_FACTORIAL = 100
MAX_BINOMIAL = 1000
MAX_DIGITS = 10_000  # of any constant subexpression (estimated before computing it)

REASONS = ("string-match", "numeric-match", "symbolic-match", "mismatch", "no-answer",
           "refused-unsafe", "timeout", "grader-error")
_RANK = {"string-match": 0, "numeric-match": 1, "symbolic-match": 2}


@dataclass(frozen=True)
class Verdict:
    """Outcome of one comparison; truthy when correct. `extracted` is the answer found in the text.

    Reasons: string-match (same normalised text or parse tree), numeric-match (equal numbers, or a
    decimal within tolerance), symbolic-match (sympy proved it), mismatch, no-answer,
    refused-unsafe (over a resource limit), timeout (sympy overran), grader-error (a bug, contained).
    """

    correct: bool
    reason: str
    extracted: str | None = None

    def __bool__(self) -> bool:
        return self.correct


class _Unsafe(Exception):
    """The answer exceeds a resource limit; refused before computing anything."""


class _ParseError(Exception):
    """Not in our math grammar (the answer is then compared as text)."""


class _Timeout(Exception):
    """A sympy check overran the time limit (its child process was killed)."""


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_PHRASE = re.compile(r"(?:answer|correct\s+(?:option|choice))\s*(?:is\b\s*:?|:|=)", re.IGNORECASE)
_MATH_SEG = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])"  # not inside a word: "K2A" holds no number
                     r"(?:-?\d+ \d+/\d+|-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+)")
_BOX_JOINER = re.compile(r"(?:[\s$,;.&~]|\\q?quad|\\text\{\s*(?:and|or)\s*\}|\\[][()]|\b(?:and|or)\b)*")
_TAIL = 4000  # fallbacks only look at the end of the completion
_DOLLAR = "\x01"  # an escaped \\$ (currency) while math segments are delimited by $


def _match_brace(text: str, start: int, limit: int = MAX_ANSWER_CHARS) -> int:
    """Index of the `}` closing the `{` at `start`, skipping escaped braces; -1 when the text ends
    first, -2 when it is not closed within `limit` characters."""
    depth, i, end = 0, start, min(len(text), start + limit)
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1 if end == len(text) else -2


def _last_boxed(text: str) -> tuple[str, int] | None:
    """(content, end) of the last complete \\boxed{...} or \\fbox{...} (nested braces; also `\\boxed 5`).
    Boxes written back to back at the end ("\\boxed{-2} and \\boxed{1}") are one answer: "-2, 1"."""
    found: list[tuple[int, int, str]] = []  # (start of the command, end of the box, content)
    matches = list(_BOX_CMD.finditer(text))[-20:]
    for m in reversed(matches):  # a truncated last box falls back to the one before
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos < len(text) and text[pos] == "{":
            close = _match_brace(text, pos)
            if close == -2:  # too long to be an answer: hand it on so that it is refused
                return text[pos + 1:pos + 2 + MAX_ANSWER_CHARS], len(text)
            content, end = (text[pos + 1:close], close + 1) if close > 0 else ("", pos)
        else:
            content = re.match(r"[^\s$]*", text[pos:pos + MAX_ANSWER_CHARS]).group()
            end = pos + len(content)
        if not content.strip():
            continue
        if found and not _BOX_JOINER.fullmatch(text[end:found[-1][0]]):
            break
        found.append((m.start(), end, content.strip()))
    return (", ".join(c for _, _, c in reversed(found)), found[0][1]) if found else None


def _segment(m: re.Match) -> str:
    return next(g for g in m.groups() if g is not None).replace(_DOLLAR, "\\$").strip()


def _phrase_answer(tail: str) -> str | None:
    """The answer after the last 'final answer is' / 'the answer is' / 'Answer:' phrase."""
    matches = list(_PHRASE.finditer(tail))
    if not matches:
        return None
    rest = tail[matches[-1].end():].lstrip()
    seg = _MATH_SEG.match(rest)  # the phrase is directly followed by a math segment
    if seg:
        return _segment(seg)
    line = rest.split("\n", 1)[0]
    line = re.split(r"(?<!\d)\.(?!\d)|\.(?=\s|$)", line, maxsplit=1)[0]  # end of sentence
    if re.search(r"\bis\b", line):
        line = re.split(r"\bis\b", line)[-1]
    segs = list(_MATH_SEG.finditer(line))
    if segs:
        return _segment(segs[-1])
    line = line.replace(_DOLLAR, "\\$").strip().strip("*").strip()
    if re.search(r"[A-Za-z]{3,}(?:\s+[A-Za-z]{2,}){2,}", line):  # prose, not an answer
        nums = _NUMBER.findall(line)
        return nums[-1] if nums else None
    return line or None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: the last \\boxed{}/\\fbox{} (unless a 'final answer is'
    phrase with a number or formula follows it), else the answer after such a phrase, else the last
    math segment or number, whichever comes later."""
    if not isinstance(text, str) or not text.strip():
        return None
    special = _SPECIAL_TOKEN.search(text)
    if special and text[:special.start()].strip():
        text = text[:special.start()]  # a hallucinated next turn is not part of the answer
    boxed = _last_boxed(text)
    if boxed:
        later = _phrase_answer(text[boxed[1]:][-_TAIL:].replace("\\$", _DOLLAR))
        # a model that changes its mind after boxing: "\\boxed{15} ... no, the final answer is 16"
        return later if later and re.search(r"\d", later) and not _BOX_CMD.search(later) else boxed[0]
    after_think = text.rsplit("</think>", 1)[-1]
    short = after_think.strip()
    if 0 < len(short) <= 100 and "\n" not in short and not _is_prose(short) and not _BOX_CMD.search(short):
        return short  # a bare answer such as "11 + 4/9" or "x = 5"
    tail = (after_think if after_think.strip() else text)[-_TAIL:].replace("\\$", _DOLLAR)
    phrase = _phrase_answer(tail)
    if phrase:
        return phrase
    segs, nums = list(_MATH_SEG.finditer(tail)), list(_NUMBER.finditer(tail))
    if segs and (not nums or segs[-1].end() >= nums[-1].end()):
        return _segment(segs[-1]) or None
    return nums[-1].group() if nums else None


# --------------------------------------------------------------------------------------------
# Normalisation (string level)
# --------------------------------------------------------------------------------------------

_ROW = "\u2016"  # stands for the matrix row separator (two backslashes) in normalised strings
_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ",
            "\u00f7": "\\div ", "\u221a": "\\sqrt", "\u03c0": "\\pi ", "\u221e": "\\infty ",
            "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ", "\u00b0": "", "\u2248": "\\approx ",
            "\u222a": "\\cup ", "\u2208": "\\in ", "\u00b1": "\\pm ", "\u2205": "\\emptyset ",
            "\u00b2": "^2", "\u00b3": "^3", "\u00bd": "(1/2)", "\u00bc": "(1/4)", "\u00be": "(3/4)",
            "\u2153": "(1/3)", "\u2154": "(2/3)"}
# Prose wrappers (a block of words next to math is a unit) and font wrappers (always unwrapped).
_PROSE_CMDS = ("text", "textbf", "textit", "textrm", "textsf", "texttt", "textnormal", "textup",
               "mbox", "hbox", "emph")
_FONT_CMDS = ("mathrm", "mathbf", "mathit", "mathsf", "mathtt", "operatorname", "boldsymbol", "bm")
_TEXT_CMD = re.compile(r"\\(" + "|".join(_PROSE_CMDS + _FONT_CMDS) + r")\s*\{")
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)"
                     r"(?![A-Za-z])\s*\.?")
_SPACING = re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|\\enspace|\\thinspace|~")
_DEGREE = re.compile(r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])|\\degree(?:s)?(?![A-Za-z]))"
                     r"(?:\s*(?:\\text\s*\{\s*[CF]\s*\}|[CF](?![A-Za-z])))?")  # 20^\circ C
_UNITS = {"cm", "mm", "km", "m", "meter", "meters", "metre", "metres", "centimeters", "kilometers",
          "inch", "inches", "in", "ft", "feet", "foot", "yard", "yards", "mile", "miles", "mph",
          "unit", "units", "square", "sq", "cubic", "degree", "degrees", "deg", "radian", "radians",
          "dollar", "dollars", "cent", "cents", "percent", "percentage", "pct", "hour", "hours", "hr",
          "minute", "minutes", "min", "second", "seconds", "sec", "day", "days", "week", "weeks",
          "year", "years", "month", "months", "people", "students", "ways", "points", "kg", "g",
          "gram", "grams", "pounds", "lb", "lbs", "ounces", "oz", "liters", "gallons", "mL", "L"}
_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
          "tanh", "exp", "ln", "log", "sqrt"}
_FUNC_WORDS = sorted(_FUNCS, key=len, reverse=True)  # longest first: "sinh" before "sin"
_KNOWN_WORDS = _FUNCS | {"pi", "infty", "inf"}


def _unwrap_text_blocks(s: str) -> str:
    """Unwrap \\text{...}-like blocks; a block of words next to math is a unit and is dropped."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    for _ in range(200):
        m = _TEXT_CMD.search(s, pos)
        if not m:
            break
        close = _match_brace(s, m.end() - 1)
        if close < 0:
            break
        pieces.append((False, s[pos:m.start()]))
        pieces.append((m.group(1) in _PROSE_CMDS, s[m.end():close]))
        pos = close + 1
    pieces.append((False, s[pos:]))
    math_part = "".join(p for is_text, p in pieces if not is_text)
    has_math = bool(re.search(r"[0-9]|\\[A-Za-z]", math_part))
    out = []
    skip_power = False
    for is_text, p in pieces:
        if skip_power:  # the ^2 of a dropped "cm}^2"
            p = re.sub(r"^\s*\^\s*(?:\{\s*[23]\s*\}|[23])", "", p)
            skip_power = False
        if is_text and p.strip().lower() in ("and", "or", ","):
            out.append(",")
        elif is_text and has_math and re.fullmatch(r"[\sA-Za-z.()]*", p) and re.search(r"[A-Za-z]{2}", p):
            out.append(" ")
            skip_power = True
        else:
            out.append(p)
    return "".join(out)


def _strip_trailing_units(s: str) -> str:
    """Drop trailing unit words after a number: '20 square units', '15 cm^2', '28 percent'."""
    words = s.split(" ")
    while len(words) > 1:
        w = re.sub(r"\^\{?[23]\}?$", "", words[-1]).rstrip(".")
        if w in _UNITS or (len(w) >= 3 and w.isalpha() and w.lower() not in _KNOWN_WORDS):
            words.pop()
        else:
            break
    if len(words) < len(s.split(" ")) and re.search(r"[0-9}]\s*$|\\pi\s*$", " ".join(words)):
        return " ".join(words)
    return s


def _normalize(s: str) -> str:
    """Canonical string form of an answer (still LaTeX-ish): delimiters, spacing, units, degrees,
    percent, thousands separators and trailing punctuation removed."""
    s = s.strip()
    if _BOX_CMD.search(s):
        s = (_last_boxed(s) or (s,))[0]
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = s.replace("\\\\", _ROW)  # matrix row separator, before any single-backslash rule
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", " ", s)
    s = s.replace("\\displaystyle", " ")
    s = re.sub(r"(?<=\d)(?:,\\!\s*|\{,\})(?=\d{3})", "", s)  # explicit thousands separators
    s = s.replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"\\left\s*\\\{", "\\{", s)
    s = re.sub(r"\\right\s*\\\}", "\\}", s)
    s = _SIZING.sub("", s)
    s = s.replace("\\{", " \u2983 ").replace("\\}", " \u2984 ")
    s = s.replace("\\lbrace", " \u2983 ").replace("\\rbrace", " \u2984 ")
    s = s.replace("\\langle", "(").replace("\\rangle", ")")
    s = re.sub(r"\\mathbb\s*\{?\s*R\s*\}?", "(-\\\\infty,\\\\infty)", s)  # all reals
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    s = _DEGREE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _unwrap_text_blocks(s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<=\S) (?:and|or) (?=\S)", ",", s)
    s = _strip_trailing_units(s)
    if not re.search(r"[][(){}\u2983]", s):  # 58,500 but not the pair (100,200) or the list 1,-2
        s = re.sub(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?![\d,])", lambda m: m.group().replace(",", ""), s)
    if re.fullmatch(r"\d{1,3}(?: \d{3})+", s):
        s = s.replace(" ", "")
    mixed = re.fullmatch(r"([+-]?)(\d+) (\d+)/(\d+)", s)  # plain-text mixed number 4 4/9
    if mixed and int(mixed.group(3)) < int(mixed.group(4)):
        s = f"{mixed.group(1)}({mixed.group(2)}+{mixed.group(3)}/{mixed.group(4)})"
    while s and s[-1] in ".,;:" and not s.endswith(".."):  # an ellipsis is part of the answer
        s = s[:-1].rstrip()
    return s


def _key(s: str) -> str:
    return re.sub(r"\s+", "", s)


# --------------------------------------------------------------------------------------------
# Expression parser: LaTeX/plain math subset -> tuple AST
# --------------------------------------------------------------------------------------------
# Nodes: ("num", "12") ("dec", "0.5") ("sym", "x") ("const", "pi"|"e"|"i"|"oo") ("neg", a)
# ("add", [a, b, ...]) ("mul", [a, b, ...]) ("div", a, b) ("pow", a, b) ("fact", a)
# ("root", a, n) ("binom", a, b) ("fn", name, a) ("log", a, base)

_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
          "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon",
          "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma",
          "Phi", "Psi", "Omega"}
_INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan"}
_NUM_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_WORD_RE = re.compile(r"[A-Za-z]+")
_CMD_RE = re.compile(r"\\([A-Za-z]+|.)", re.DOTALL)
_MUL_CMDS = {"cdot", "times", "ast"}
_PRIMARY_CMDS = {"frac", "sqrt", "binom", "pi", "infty", "lfloor", "lceil", "lvert", "vert"} | _GREEK | _FUNCS


def _split_word(w: str) -> list[str]:
    """A letter run is function names and single-letter variables: 'sinx' -> sin, x; 'ab' -> a, b;
    'pi' alone is pi."""
    if w == "pi":
        return [w]
    out = []
    while w:
        name = next((f for f in _FUNC_WORDS if w.startswith(f)), w[0])
        out.append(name)
        w = w[len(name):]
    return out


def _tokenize(s: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
        elif c.isdigit() or (c == "." and i + 1 < n and s[i + 1].isdigit()):
            m = _NUM_RE.match(s, i)
            toks.append(("num", m.group()))
            i = m.end()
        elif c.isascii() and c.isalpha():
            m = _WORD_RE.match(s, i)
            toks.extend(("id", w) for w in _split_word(m.group()))
            i = m.end()
        elif c == "\\":
            m = _CMD_RE.match(s, i)
            if m is None:
                raise _ParseError("a lone backslash")
            toks.append(("cmd", m.group(1)))
            i = m.end()
        elif s.startswith("**", i):
            toks.append(("op", "^"))
            i += 2
        else:
            toks.append(("op", c))
            i += 1
    return toks


class _Parser:
    """Recursive descent with implicit multiplication; precedence: + - < * / juxtaposition < unary
    minus < ^ < ! ; LaTeX macro arguments are a {group} or a single character or command."""

    def __init__(self, text: str):
        self.toks = _tokenize(text)
        self.k = 0
        self.depth = 0
        self.nodes = 0
        self.in_abs = 0

    def parse(self) -> tuple:
        if not self.toks:
            raise _ParseError("empty")
        node = self.expr()
        if self.k != len(self.toks):
            raise _ParseError(f"unexpected {self.toks[self.k][1]!r}")
        return node

    # -- helpers
    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.k] if self.k < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        if self.k >= len(self.toks):
            raise _ParseError("unexpected end")
        self.k += 1
        return self.toks[self.k - 1]

    def at(self, kind: str, *vals: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == kind and (not vals or t[1] in vals)

    def expect(self, kind: str, val: str) -> None:
        if not self.at(kind, val):
            raise _ParseError(f"expected {val!r}")
        self.k += 1

    def node(self, *parts: Any) -> tuple:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Unsafe(f"more than {MAX_NODES} nodes")
        return parts

    def nested(self, fn):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Unsafe(f"nesting deeper than {MAX_DEPTH}")
        try:
            return fn()
        finally:
            self.depth -= 1

    # -- grammar
    def expr(self) -> tuple:
        return self.nested(self._expr)

    def _expr(self) -> tuple:
        terms = [self.term()]
        while self.at("op", "+", "-"):
            sign = self.take()[1]
            t = self.term()
            terms.append(t if sign == "+" else self.node("neg", t))
        return terms[0] if len(terms) == 1 else self.node("add", terms)

    def starts_primary(self) -> bool:
        t = self.peek()
        if t is None:
            return False
        kind, val = t
        if kind in ("num", "id"):
            return True
        if kind == "cmd":
            return val in _PRIMARY_CMDS
        return val in "({[" or (val == "|" and not self.in_abs)

    def term(self) -> tuple:
        node = self.factor()
        factors = [node]
        while True:
            if self.at("op", "*") or self.at("cmd", *_MUL_CMDS):
                self.take()
                factors.append(self.factor())
            elif self.at("op", "/") or self.at("cmd", "div"):
                self.take()
                rhs = self.factor()
                left = factors[0] if len(factors) == 1 else self.node("mul", factors)
                factors = [self.node("div", left, rhs)]
            elif self.starts_primary():
                factors.append(self.power())
            else:
                break
        return factors[0] if len(factors) == 1 else self.node("mul", factors)

    def factor(self) -> tuple:
        if self.at("op", "-"):
            self.take()
            return self.node("neg", self.nested(self.factor))
        if self.at("op", "+"):
            self.take()
            return self.nested(self.factor)
        return self.power()

    def power(self) -> tuple:
        base = self.postfix()
        if self.at("op", "^"):
            self.take()
            exp = self.nested(self.exponent)
            base = self.node("pow", base, exp)
            while self.at("op", "!"):
                self.take()
                base = self.node("fact", base)
        return base

    def exponent(self) -> tuple:
        if self.at("op", "-"):
            self.take()
            return self.node("neg", self.exponent())
        if self.at("op", "+"):
            self.take()
        return self.power()

    def postfix(self) -> tuple:
        node = self.primary()
        while self.at("op", "!"):
            self.take()
            node = self.node("fact", node)
        return node

    def group(self, close: str) -> tuple:
        node = self.expr()
        self.expect("op", close)
        return node

    def arg(self) -> tuple:
        """A LaTeX macro argument: {group}, one digit, one letter or one command."""
        t = self.peek()
        if t is None:
            raise _ParseError("missing argument")
        if t in (("op", "{"), ("op", "(")):  # sqrt(2), from plain text or a unicode root sign
            self.take()
            return self.group("}" if t[1] == "{" else ")")
        if t[0] == "num":
            self.take()
            if len(t[1]) > 1 and "." not in t[1]:
                self.toks.insert(self.k, ("num", t[1][1:]))  # \frac43 -> 4, 3
                return self.node("num", t[1][0])
            return self.number(t[1])
        if t[0] == "id" and len(t[1]) == 1:
            return self.primary()
        if t[0] == "cmd":
            return self.primary()
        raise _ParseError("bad argument")

    def number(self, text: str) -> tuple:
        digits = text.replace(".", "")
        if len(digits) > MAX_LITERAL_DIGITS:
            raise _Unsafe(f"a number with more than {MAX_LITERAL_DIGITS} digits")
        return self.node("dec", text) if "." in text else self.node("num", text)

    def primary(self) -> tuple:
        return self.nested(self._primary)

    def _primary(self) -> tuple:
        kind, val = self.take()
        if kind == "num":
            node = self.number(val)
            if node[0] == "num" and self.at("cmd", "frac"):
                return self.mixed_number(node)
            return node
        if kind == "id":
            if val in _FUNCS:
                return self.function(val)
            if val == "pi":
                return self.node("const", "pi")
            if val in ("e", "i"):
                return self.node("const", val)
            if self.at("op", "_"):
                self.take()
                return self.node("sym", f"{val}_{self.subscript()}")
            return self.node("sym", val)
        if kind == "op":
            if val in "([{":
                return self.group({"(": ")", "[": "]", "{": "}"}[val])
            if val == "|" and not self.in_abs:
                self.in_abs += 1
                try:
                    node = self.expr()
                finally:
                    self.in_abs -= 1
                self.expect("op", "|")
                return self.node("fn", "abs", node)
            raise _ParseError(f"unexpected {val!r}")
        return self.command(val)

    def mixed_number(self, whole: tuple) -> tuple:
        """'1\\frac{4}{5}' is 1 + 4/5, the convention of MATH answers (only for proper fractions)."""
        save = self.k
        self.take()
        num, den = self.arg(), self.arg()
        if num[0] == den[0] == "num" and 0 < int(num[1]) < int(den[1]):
            return self.node("add", [whole, self.node("div", num, den)])
        self.k = save
        return whole

    def subscript(self) -> str:
        if self.at("op", "{"):
            self.take()
            parts = []
            while not self.at("op", "}"):
                parts.append(self.take()[1])
            self.take()
            return "".join(parts)
        return self.take()[1]

    def command(self, name: str) -> tuple:
        if name == "frac":
            return self.node("div", self.arg(), self.arg())
        if name == "binom":
            return self.node("binom", self.arg(), self.arg())
        if name == "sqrt":
            index = self.node("num", "2")
            if self.at("op", "["):
                self.take()
                index = self.group("]")
            return self.node("root", self.arg(), index)
        if name == "pi":
            return self.node("const", "pi")
        if name == "infty":
            return self.node("const", "oo")
        if name in _GREEK:
            return self.node("sym", name)
        if name in _FUNCS:
            return self.function(name)
        if name in ("lfloor", "lceil"):
            node = self.expr()
            self.expect("cmd", "rfloor" if name == "lfloor" else "rceil")
            return self.node("fn", "floor" if name == "lfloor" else "ceiling", node)
        if name in ("lvert", "vert"):
            node = self.expr()
            self.expect("cmd", "rvert" if name == "lvert" else "vert")
            return self.node("fn", "abs", node)
        raise _ParseError(f"unsupported command \\{name}")

    def function(self, name: str) -> tuple:
        if name == "sqrt":
            return self.command("sqrt")
        base = power = None
        if name == "log" and self.at("op", "_"):
            self.take()
            base = self.arg()
        if self.at("op", "^"):
            self.take()
            power = self.arg() if self.at("op", "{") else self.exponent()
        if self.at("op", "("):
            self.take()
            arg = self.group(")")
        else:  # \sin 2x is sin(2x); the argument stops at an operator or the next function
            factors = [self.power()]
            while self.starts_primary() and self.peek()[1] not in _FUNCS:
                factors.append(self.power())
            arg = factors[0] if len(factors) == 1 else self.node("mul", factors)
        if power == ("neg", ("num", "1")) and name in _INVERSE:  # \sin^{-1} x is arcsin x
            name, power = _INVERSE[name], None
        node = self.node("log", arg, base) if base is not None else self.node("fn", name, arg)
        return self.node("pow", node, power) if power is not None else node


def _parse_expr(s: str) -> tuple:
    node = _Parser(s).parse()
    _check_limits(node)
    return node


# --------------------------------------------------------------------------------------------
# Resource limits and in-process arithmetic
# --------------------------------------------------------------------------------------------

_MP = mpmath.MPContext()  # private context: its precision is never changed, so threads can share it
_MP.dps = 40


def _walk(node: tuple):
    yield node
    for part in node[1:]:
        if isinstance(part, tuple):
            yield from _walk(part)
        elif isinstance(part, list):
            for p in part:
                yield from _walk(p)


def _symbols(node: tuple) -> set[str]:
    return {n[1] for n in _walk(node) if n[0] == "sym"}


def _has_decimal(node: tuple) -> bool:
    return any(n[0] == "dec" for n in _walk(node))


def _check_limits(node: tuple) -> float | None:
    """Refuse anything whose value could be huge, before computing it. Returns an upper bound on
    log10|value| for a constant subexpression (None when it has variables)."""
    kind = node[0]
    if kind in ("num", "dec"):
        return float(len(node[1].split(".")[0]))
    if kind == "sym":
        return None
    if kind == "const":
        return 1.0
    if kind == "neg":
        return _check_limits(node[1])
    if kind in ("add", "mul"):
        bounds = [_check_limits(c) for c in node[1]]
        if any(b is None for b in bounds):
            return None
        total = max(bounds) + 1 if kind == "add" else sum(bounds)
        return _within_digits(total)
    if kind == "div":
        a, b = _check_limits(node[1]), _check_limits(node[2])
        return None if a is None or b is None else _within_digits(a + b)
    if kind == "pow" or (kind == "fn" and node[1] == "exp"):
        base, exp = (node[1], node[2]) if kind == "pow" else (("const", "e"), node[2])
        bb, eb = _check_limits(base), _check_limits(exp)
        if eb is None:
            return None
        ev = _exponent_size(exp, eb)
        return None if bb is None else _within_digits(max(bb, 1.0) * max(ev, 1.0))
    if kind == "fact":
        ab = _check_limits(node[1])
        if ab is None:
            return None
        v = _small_integer(node[1], ab, MAX_FACTORIAL, "factorial")
        return math.lgamma(v + 1) / math.log(10) + 1
    if kind == "binom":
        ab, bb = _check_limits(node[1]), _check_limits(node[2])
        if ab is None or bb is None:
            return None
        n = _small_integer(node[1], ab, MAX_BINOMIAL, "binomial")
        return n * math.log10(2) + 1
    if kind == "root":
        ab, ib = _check_limits(node[1]), _check_limits(node[2])
        if ib is not None:
            _exponent_size(node[2], ib)
        return ab
    if kind == "log":
        a, b = _check_limits(node[1]), _check_limits(node[2])
        return None if a is None or b is None else 4.0
    if kind == "fn":
        a = _check_limits(node[2])
        return None if a is None else (a if node[1] in ("abs", "floor", "ceiling") else 4.0 + a)
    raise _ParseError(f"unknown node {kind}")


def _within_digits(bound: float) -> float:
    if bound > MAX_DIGITS:
        raise _Unsafe(f"a constant with more than {MAX_DIGITS} digits")
    return bound


def _exponent_size(exp: tuple, bound: float) -> float:
    """|value| of a constant exponent, refused above MAX_EXPONENT (power towers end here)."""
    if bound > 6:
        raise _Unsafe(f"exponent larger than {MAX_EXPONENT}")
    try:
        v = abs(_mp_eval(exp, {}))
    except (ArithmeticError, ValueError):
        return 1.0
    if not _MP.isfinite(v) or v > MAX_EXPONENT:
        raise _Unsafe(f"exponent larger than {MAX_EXPONENT}")
    return float(v)


def _small_integer(node: tuple, bound: float, limit: int, what: str) -> int:
    if bound > 6:
        raise _Unsafe(f"{what} of a number larger than {limit}")
    v = _exact(node)
    if v is None or v.denominator != 1 or v < 0:
        raise _ParseError(f"{what} of a non-integer")
    if v > limit:
        raise _Unsafe(f"{what} of a number larger than {limit}")
    return int(v)


def _exact(node: tuple) -> Fraction | None:
    """Exact rational value, or None when the expression is not a plain rational computation (or
    would be too big: the limits are checked again since a substituted variable bypasses them)."""
    kind = node[0]
    if kind == "num":
        return Fraction(int(node[1]))
    if kind == "dec":
        return Fraction(node[1] if not node[1].endswith(".") else node[1][:-1])
    if kind == "neg":
        v = _exact(node[1])
        return None if v is None else -v
    if kind in ("add", "mul"):
        vals = [_exact(c) for c in node[1]]
        if any(v is None for v in vals):
            return None
        return sum(vals, Fraction(0)) if kind == "add" else math.prod(vals, start=Fraction(1))
    if kind == "div":
        a, b = _exact(node[1]), _exact(node[2])
        return None if a is None or b is None or b == 0 else a / b
    if kind == "pow":
        a, b = _exact(node[1]), _exact(node[2])
        if a is None or b is None or b.denominator != 1 or (a == 0 and b < 0) or abs(b) > MAX_EXPONENT:
            return None
        digits = len(str(max(abs(a.numerator), a.denominator)))
        return a ** int(b) if digits * abs(b) <= MAX_DIGITS else None
    if kind == "fact":
        a = _exact(node[1])
        if a is None or a.denominator != 1 or not 0 <= a <= MAX_FACTORIAL:
            return None
        return Fraction(math.factorial(int(a)))
    if kind == "binom":
        a, b = _exact(node[1]), _exact(node[2])
        if a is None or b is None or a.denominator != 1 or b.denominator != 1 or b < 0:
            return None
        if not 0 <= a <= MAX_BINOMIAL:
            return None
        return Fraction(math.comb(int(a), int(b)))
    if kind == "fn" and node[1] == "abs":
        v = _exact(node[2])
        return None if v is None else abs(v)
    return None


_MP_FUNCS = {"sin": _MP.sin, "cos": _MP.cos, "tan": _MP.tan, "cot": _MP.cot, "sec": _MP.sec,
             "csc": _MP.csc, "arcsin": _MP.asin, "arccos": _MP.acos, "arctan": _MP.atan,
             "sinh": _MP.sinh, "cosh": _MP.cosh, "tanh": _MP.tanh, "exp": _MP.exp, "ln": _MP.ln,
             "log": _MP.ln, "abs": abs, "floor": _MP.floor, "ceiling": _MP.ceil}


def _mp_eval(node: tuple, env: dict[str, Any]) -> Any:
    """40-digit numeric value (complex where needed); raises ArithmeticError/ValueError if undefined."""
    kind = node[0]
    if kind == "num":
        return _MP.mpf(int(node[1]))
    if kind == "dec":
        return _MP.mpf(node[1].rstrip(".") or "0")
    if kind == "sym":
        return env[node[1]]
    if kind == "const":
        return {"pi": _MP.pi, "e": _MP.e, "i": _MP.mpc(0, 1), "oo": _MP.inf}[node[1]]
    if kind == "neg":
        return -_mp_eval(node[1], env)
    if kind == "add":
        return _MP.fsum(_mp_eval(c, env) for c in node[1])
    if kind == "mul":
        return _MP.fprod(_mp_eval(c, env) for c in node[1])
    if kind == "div":
        den = _mp_eval(node[2], env)
        if den == 0:
            raise ZeroDivisionError
        return _mp_eval(node[1], env) / den
    if kind == "pow":
        return _MP.power(_mp_eval(node[1], env), _mp_eval(node[2], env))
    if kind == "fact":
        return _MP.factorial(_mp_eval(node[1], env))
    if kind == "binom":
        return _MP.binomial(_mp_eval(node[1], env), _mp_eval(node[2], env))
    if kind == "root":
        return _MP.root(_mp_eval(node[1], env), _mp_eval(node[2], env)) if node[2] != ("num", "2") \
            else _MP.sqrt(_mp_eval(node[1], env))
    if kind == "log":
        return _MP.log(_mp_eval(node[1], env), _mp_eval(node[2], env))
    if kind == "fn":
        return _MP_FUNCS[node[1]](_mp_eval(node[2], env))
    raise ValueError(kind)


def _mp_value(node: tuple, env: dict[str, Any]) -> Any:
    try:
        v = _mp_eval(node, env)
    except (ArithmeticError, ValueError, KeyError, TypeError):
        return None
    return v if not _MP.isnan(v) else None


def _rel_diff(a: Any, b: Any) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else float(abs(a - b) / scale)


def _decimal_close(a: tuple, b: tuple, va: Any, vb: Any) -> bool:
    """A decimal matches a value that no short decimal can write exactly (1/3, sqrt 2) when it
    agrees to 1e-6 relative, or is that value correctly rounded to at least 6 decimals."""
    if _rel_diff(va, vb) <= 1e-6:
        return True
    for dec_side, other in ((a, vb), (b, va)):
        places = [len(n[1].split(".")[1]) for n in _walk(dec_side) if n[0] == "dec"]
        if places and min(places) >= 6 and abs(_mp_eval(dec_side, {}) - other) <= _MP.mpf(10) ** -min(places):
            return True
    return False


def _terminating(v: Fraction) -> bool:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


# --------------------------------------------------------------------------------------------
# Answer structure: tuples, intervals, sets, matrices, equations ...
# --------------------------------------------------------------------------------------------
# Values: ("expr", ast) ("text", s) ("choice", "C", v|None) ("base", digits, base) ("tuple", "(", ")", [v])
# ("list", [v]) unordered ("set", [v]) unordered ("union", [v]) ("matrix", [[v]]) ("eq", v, v)
# ("rel", [ops], [v])

_OPEN, _CLOSE = "([{\u2983", ")]}\u2984"
_REL_CMDS = {"le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=", "geqslant": ">=",
             "lt": "<", "gt": ">", "ne": "!=", "neq": "!=", "approx": "~", "in": "in"}
_FUNC_LABEL = re.compile(r"\s*[A-Za-z]\s*\(\s*[A-Za-z](?:\s*,\s*[A-Za-z])*\s*\)\s*")
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!="}


def _split_top(s: str, seps: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split at separators outside brackets and environments; returns (parts, separators)."""
    parts, ops, depth, last, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if s.startswith("\\begin", i):
            depth += 1
        elif s.startswith("\\end", i):
            depth -= 1
        if c == "\\":
            m = _CMD_RE.match(s, i)
            if m is None:
                break
            cmd = "\\" + m.group(1)
            if depth == 0 and cmd in seps:
                parts.append(s[last:i])
                ops.append(cmd)
                last = i = m.end()
                continue
            i = m.end()
            continue
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0:
            sep = next((p for p in seps if not p.startswith("\\") and s.startswith(p, i)), None)
            if sep:
                parts.append(s[last:i])
                ops.append(sep)
                last = i = i + len(sep)
                continue
        i += 1
    parts.append(s[last:])
    return parts, ops


def _outer_group(s: str) -> bool:
    """True when s[0] is a bracket closed by s[-1] (any bracket kinds: intervals mix them)."""
    if len(s) < 2 or s[0] not in _OPEN or s[-1] not in _CLOSE:
        return False
    depth = 0
    for i, c in enumerate(s):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0 and i < len(s) - 1:
                return False
    return depth == 0


def _text_value(s: str) -> tuple:
    return ("text", re.sub(r"[^a-z0-9]", "", s.lower()))


def _is_prose(s: str) -> bool:
    """Words rather than math: 'east', 'no solution'; but '2abc' is a product of three variables."""
    body = re.sub(r"\\[A-Za-z]+", " ", s)
    words = [w for w in re.findall(r"[A-Za-z]{3,}", body) if w.lower() not in _KNOWN_WORDS
             and not any(w.startswith(f) and len(w) - len(f) <= 2 for f in _FUNC_WORDS)]
    return len(words) > 1 or any(len(w) > 3 for w in words) or (bool(words) and not re.search(r"\d", s))


def _parse_value(s: str, depth: int = 0) -> tuple:
    if depth > MAX_DEPTH:
        raise _Unsafe(f"nesting deeper than {MAX_DEPTH}")
    s = s.strip()
    while len(s) >= 2 and s[0] == "{" and _match_brace(s, 0) == len(s) - 1:
        s = s[1:-1].strip()
    if not s:
        return ("text", "")
    if s in ("\\emptyset", "\\varnothing", "\u2983 \u2984", "\u2983\u2984"):
        return ("set", [])
    m = re.fullmatch(r"\(([A-E])\)\s*(.*)|([A-E])", s, re.DOTALL)
    if m:  # "(D) 12" is choice D whose value is 12
        value = _parse_value(m.group(2), depth + 1) if m.group(2) else None
        return ("choice", m.group(1) or m.group(3), value)
    m = re.fullmatch(r"([0-9A-Fa-f]+)_\{?(\d{1,2})\}?", s)
    if m and not m.group(1).isalpha():
        return ("base", m.group(1).upper(), int(m.group(2)))
    env = re.fullmatch(r"(.*?)[\[(]?\s*\\begin\{([pbvBV]?matrix|array)\}(.*)\\end\{\2\}\s*[\])]?", s,
                       re.DOTALL)
    if env:
        try:
            matrix = _parse_matrix(env.group(3), depth)
        except _ParseError:
            return _text_value(s)
        if not env.group(1).strip():
            return matrix
        try:  # a scalar factor: \frac{1}{49} \begin{pmatrix} ... \end{pmatrix}
            k = _parse_expr(env.group(1))
            if all(c[0] == "expr" for row in matrix[1] for c in row):
                return ("matrix", [[("expr", ("mul", [k, c[1]])) for c in row] for row in matrix[1]])
        except _ParseError:
            pass  # "x = \begin{pmatrix} ..." is a relation, handled below
    parts, _ = _split_top(s, (",",))
    if len(parts) > 1:
        return ("list", _items(parts, depth))
    parts, ops = _split_top(s, ("=", "<=", ">=", "<", ">", "!=", *("\\" + c for c in _REL_CMDS)))
    if ops:
        return _parse_relation(parts, [_REL_CMDS.get(o.lstrip("\\"), o) for o in ops], depth)
    parts, ops = _split_top(s, ("\\cup",))
    if ops:
        return ("union", [_parse_value(p, depth + 1) for p in parts])
    parts, ops = _split_top(s, ("\\pm", "\\mp"))
    if len(ops) == 1:
        a, b = parts[0].strip(), parts[1].strip()
        if not a:
            return ("set", [_parse_value(b, depth + 1), _parse_value(f"-({b})", depth + 1)])
        return ("set", [_parse_value(f"{a}+({b})", depth + 1), _parse_value(f"{a}-({b})", depth + 1)])
    if _outer_group(s) and s[0] != "{":
        inner = s[1:-1]
        if s[0] == "\u2983":
            builder = re.fullmatch(r"\s*[A-Za-z]\s*(?::|\\mid|\|)(.+)", inner, re.DOTALL)
            if builder:  # set-builder notation {x : x > 1} is its condition
                return _parse_value(builder.group(1), depth + 1)
            items = _split_top(inner, (",",))[0] if inner.strip() else []
            return ("set", _items(items, depth))
        items = _split_top(inner, (",",))[0]
        if len(items) > 1:
            return ("tuple", s[0], s[-1], _items(items, depth))
    if _is_prose(s):
        return _text_value(s)
    try:
        return ("expr", _parse_expr(s))
    except _ParseError:
        return _text_value(s)


def _items(parts: list[str], depth: int) -> list[tuple]:
    if len(parts) > MAX_ITEMS:
        raise _Unsafe(f"more than {MAX_ITEMS} items")
    out = []
    for p in parts:
        v = _parse_value(p, depth + 1)
        out.extend(v[1] if v[0] == "set" and "\\pm" in p else [v])  # 1 \pm \sqrt5 is two items
    return out


def _parse_matrix(body: str, depth: int) -> tuple:
    body = re.sub(r"^\s*\{[lcr|\s]*\}", "", body)  # array column spec
    rows = [r for r in body.split(_ROW) if r.strip() and r.strip() != "\\hline"]
    cells = [[c for c in r.split("&")] for r in rows]
    if not cells or len(cells) * len(cells[0]) > MAX_ITEMS or len({len(r) for r in cells}) != 1:
        raise _ParseError("ragged or empty matrix")
    return ("matrix", [[_parse_value(c, depth + 1) for c in r] for r in cells])


def _is_symbol(v: tuple) -> bool:
    return v[0] == "expr" and v[1][0] == "sym"


def _is_label(v: tuple) -> bool:
    """The left side of an answer given as "x = 5" or "(p, q, r) = (6, 31, -1)"."""
    return _is_symbol(v) or (v[0] == "tuple" and all(_is_symbol(i) for i in v[3]))


def _parse_relation(parts: list[str], ops: list[str], depth: int) -> tuple:
    if not parts[0].strip() and ops[0] in ("=", "~"):  # "= 5", "\approx 3.14"
        if len(ops) == 1:
            return _parse_value(parts[1], depth + 1)
        return _parse_relation(parts[1:], ops[1:], depth)
    if "~" in ops:  # keep the exact part: "x = 1/3 \approx 0.33" is x = 1/3; "x \approx 11" is 11
        cut = ops.index("~")
        if cut == 0 and re.fullmatch(r"\s*[A-Za-z]\s*", parts[0]):
            parts, ops = parts[1:], ops[1:]
        else:
            parts, ops = parts[:cut + 1], ops[:cut]
        if not ops:
            return _parse_value(parts[0], depth + 1)
        return _parse_relation(parts, ops, depth)
    values = [_parse_value(p, depth + 1) for p in parts]
    if _FUNC_LABEL.fullmatch(parts[0]):  # "f(x) = 2x + 1" names its value like "y = 2x + 1"
        values[0] = ("expr", ("sym", re.sub(r"\s+", "", parts[0])))
    if ops == ["in"]:
        return values[1]
    if set(ops) == {"="}:
        constant = all(v[0] == "expr" and not _symbols(v[1]) for v in values)
        if len(values) > 2 or constant:  # steps of a computation: x = 5 + 5 + 1 = 11, 5 * 24 = 120
            return ("eq", values[0], values[-1]) if _is_symbol(values[0]) else values[-1]
        return ("eq", values[0], values[1])
    if len(values) == 2 and ops[0] in _FLIP and ops[0] != "=":
        values, ops = _isolate_variable(values, ops)
    interval = _relation_interval(values, ops)
    return interval or ("rel", ops, values)


def _isolate_variable(values: list[tuple], ops: list[str]) -> tuple[list[tuple], list[str]]:
    """-x > -1 -> x < 1: solve a relation that is linear in one variable with rational coefficients."""
    if not all(v[0] == "expr" for v in values):
        return values, ops
    diff = ("add", [values[0][1], ("neg", values[1][1])])
    names = _symbols(diff)
    if len(names) != 1 or _is_symbol(values[0]) and not _symbols(values[1][1]):
        return values, ops
    (name,) = names
    m, m1 = _exact(_substitute(diff, name, "0")), _exact(_substitute(diff, name, "1"))
    m2 = _exact(_substitute(diff, name, "2"))
    if m is None or m1 is None or m2 is None or m1 - m == 0 or m2 - m1 != m1 - m:
        return values, ops
    k, root = m1 - m, -m / (m1 - m)  # diff = k (x - root)
    bound = ("div", ("num", str(abs(root.numerator))), ("num", str(root.denominator)))
    op = ops[0] if k > 0 else _FLIP[ops[0]]
    return [("expr", ("sym", name)), ("expr", ("neg", bound) if root < 0 else bound)], [op]


def _substitute(node: tuple, name: str, value: str) -> tuple:
    if node == ("sym", name):
        return ("num", value)
    return tuple(_substitute(p, name, value) if isinstance(p, tuple)
                 else [_substitute(c, name, value) for c in p] if isinstance(p, list) else p for p in node)


def _relation_interval(values: list[tuple], ops: list[str]) -> tuple | None:
    """x > 2 -> (2, oo); 3 <= x < 5 -> [3, 5); None unless it is one variable against constants."""
    inf, neg_inf = ("expr", ("const", "oo")), ("expr", ("neg", ("const", "oo")))
    if len(values) == 2 and ops[0] in ("<", ">", "<=", ">="):
        if _is_symbol(values[1]) and not _is_symbol(values[0]):
            values, ops = values[::-1], [_FLIP[ops[0]]]
        if not _is_symbol(values[0]) or _is_symbol(values[1]):
            return None
        closed = ops[0] in ("<=", ">=")
        if ops[0] in ("<", "<="):
            return ("tuple", "(", "]" if closed else ")", [neg_inf, values[1]])
        return ("tuple", "[" if closed else "(", ")", [values[1], inf])
    if len(values) == 3 and _is_symbol(values[1]) and not _is_symbol(values[0]) and not _is_symbol(values[2]):
        if all(o in ("<", "<=") for o in ops):
            lo, hi, lo_op, hi_op = values[0], values[2], ops[0], ops[1]
        elif all(o in (">", ">=") for o in ops):  # a > x > b is b < x < a
            lo, hi, lo_op, hi_op = values[2], values[0], _FLIP[ops[1]], _FLIP[ops[0]]
        else:
            return None
        return ("tuple", "[" if lo_op == "<=" else "(", "]" if hi_op == "<=" else ")", [lo, hi])
    return None


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

class _Ctx:
    def __init__(self, timeout_s: float):
        self.deadline = time.monotonic() + timeout_s

    def sympy_check(self, op: str, a: tuple, b: tuple) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout
        return _worker().call({"op": op, "a": a, "b": b}, remaining)


def _best(reasons: list[str | None]) -> str | None:
    if any(r is None for r in reasons):
        return None
    return max(reasons, key=_RANK.__getitem__, default="string-match")


def _sample_points(names: set[str]) -> list[dict[str, Any]]:
    rng = random.Random(" ".join(sorted(names)))
    return [{n: _MP.mpf(rng.uniform(0.2, 1.9)) for n in sorted(names)} for _ in range(4)]


def _cmp_expr(a: tuple, b: tuple, ctx: _Ctx) -> str | None:
    if a == b:
        return "string-match"
    fa, fb = _exact(a), _exact(b)
    decimal = _has_decimal(a) or _has_decimal(b)
    if fa is not None and fb is not None:
        if fa == fb:
            return "numeric-match"
        if decimal and not (_terminating(fa) and _terminating(fb)):
            va, vb = (_MP.mpf(f.numerator) / f.denominator for f in (fa, fb))
            return "numeric-match" if _decimal_close(a, b, va, vb) else None
        return None
    names = _symbols(a) | _symbols(b)
    if not names:
        va, vb = _mp_value(a, {}), _mp_value(b, {})
        if va is None or vb is None:
            return None
        if _MP.isinf(va) or _MP.isinf(vb):
            return "numeric-match" if va == vb else None
        if max(abs(va), abs(vb)) > 1e25:  # maybe a 1/sin(pi) blown up by rounding: let sympy decide
            return "symbolic-match" if ctx.sympy_check("equal", a, b) else None
        if decimal:
            return "numeric-match" if _decimal_close(a, b, va, vb) else None
        # 40-digit agreement decides constants, as sympy's own `equals` would, without a subprocess
        return "numeric-match" if _rel_diff(va, vb) <= 1e-30 else None
    for env in _sample_points(names):
        va, vb = _mp_value(a, env), _mp_value(b, env)
        if va is not None and vb is not None and _rel_diff(va, vb) > 1e-12:
            return None  # differs at a point: not an identity
    return "symbolic-match" if ctx.sympy_check("equal", a, b) else None


def _difference(v: tuple) -> tuple | None:
    return ("add", [v[1][1], ("neg", v[2][1])]) if v[1][0] == v[2][0] == "expr" else None


def _cmp_equation(p: tuple, g: tuple, ctx: _Ctx) -> str | None:
    if _is_symbol(p[1]) and _is_symbol(g[1]):
        rhs_const = not (_symbols(p[2][1]) | _symbols(g[2][1])) if p[2][0] == g[2][0] == "expr" else False
        if p[1] == g[1] or rhs_const:
            return _cmp_value(p[2], g[2], ctx)
    dp, dg = _difference(p), _difference(g)
    if dp is None or dg is None:
        return _best([_cmp_value(p[1], g[1], ctx), _cmp_value(p[2], g[2], ctx)])
    names = _symbols(dp) | _symbols(dg)
    ratios = []
    for env in _sample_points(names):
        va, vb = _mp_value(dp, env), _mp_value(dg, env)
        if va is None or vb is None:
            continue
        if abs(vb) < 1e-25 or abs(va) < 1e-25:
            if abs(va) >= 1e-25 or abs(vb) >= 1e-25:
                return None
            continue
        ratios.append(va / vb)
    if any(_rel_diff(r, ratios[0]) > 1e-12 for r in ratios):
        return None  # not proportional: different solution sets
    if not names:
        return None if ratios else "numeric-match"
    return "symbolic-match" if ctx.sympy_check("ratio", dp, dg) else None


def _cmp_ordered(ps: list[tuple], gs: list[tuple], ctx: _Ctx) -> str | None:
    if len(ps) != len(gs):
        return None
    reasons = []
    for p, g in zip(ps, gs):
        r = _cmp_value(p, g, ctx)
        if r is None:
            return None
        reasons.append(r)
    return _best(reasons)


def _cmp_unordered(ps: list[tuple], gs: list[tuple], ctx: _Ctx) -> str | None:
    if len(ps) != len(gs):
        return None
    unused = list(range(len(gs)))
    reasons = []
    for p in ps:
        for j in unused:
            r = _cmp_value(p, gs[j], ctx)
            if r is not None:
                unused.remove(j)
                reasons.append(r)
                break
        else:
            return None
    return _best(reasons)


def _cmp_value(p: tuple, g: tuple, ctx: _Ctx) -> str | None:
    """Reason for a match, or None for a mismatch."""
    if p[0] in ("list", "set") and len(p[1]) == 1:
        p = p[1][0]
    if g[0] in ("list", "set") and len(g[1]) == 1:
        g = g[1][0]
    P, G = p[0], g[0]
    if P == "eq" and G != "eq" and _is_label(p[1]):
        return _cmp_value(p[2], g, ctx)
    if G == "eq" and P != "eq" and _is_label(g[1]):
        return _cmp_value(p, g[2], ctx)
    if P == G == "eq":
        return _cmp_equation(p, g, ctx)
    if P == G == "expr":
        return _cmp_expr(p[1], g[1], ctx)
    if P == G == "choice":
        return "string-match" if p[1] == g[1] else None
    if "choice" in (P, G):  # a letter against a text, or the value attached to a choice
        c, other = (p, g) if P == "choice" else (g, p)
        if other[0] == "text" and other[1] == c[1].lower():
            return "string-match"
        return None if c[2] is None else (_cmp_value(c[2], g, ctx) if c is p else _cmp_value(p, c[2], ctx))
    if P == G and P in ("text", "base"):
        return "string-match" if p == g else None
    if {P, G} == {"base", "expr"}:
        base, expr = (p, g) if P == "base" else (g, p)
        return "numeric-match" if expr[1] == ("num", base[1].lstrip("0") or "0") else None
    if P == G == "tuple":
        return _cmp_ordered(p[3], g[3], ctx) if p[1:3] == g[1:3] else None
    if P == G == "matrix":
        if len(p[1]) != len(g[1]) or len(p[1][0]) != len(g[1][0]):
            return None
        return _cmp_ordered([c for r in p[1] for c in r], [c for r in g[1] for c in r], ctx)
    if P == G == "rel":
        direct = _cmp_ordered(p[2], g[2], ctx) if p[1] == g[1] else None
        flipped = [_FLIP.get(o) for o in reversed(p[1])]
        return direct or (_cmp_ordered(p[2][::-1], g[2], ctx) if flipped == g[1] else None)
    if P in ("list", "set", "union") and G in ("list", "set", "union"):
        return _cmp_unordered(p[1], g[1], ctx)
    seq = {"tuple": 3, "list": 1, "set": 1}
    if P in seq and G in seq:  # a tuple against a list or set: order matters, (round) brackets do not
        if "set" in (P, G) and (p if P == "tuple" else g)[1:3] != ("(", ")"):
            return None  # [1, 2] is an interval, not the set {1, 2}
        return _cmp_ordered(p[seq[P]], g[seq[G]], ctx)
    if "matrix" in (P, G) and (P in seq or G in seq):  # column vector written as a tuple
        m, other = (p, g) if P == "matrix" else (g, p)
        if min(len(m[1]), len(m[1][0])) == 1:
            flat = [c for r in m[1] for c in r]
            items = other[seq[other[0]]]
            return _cmp_ordered(flat, items, ctx) if m is p else _cmp_ordered(items, flat, ctx)
    return None


def answers_equivalent(pred: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Whether two final answers are the same (also used to group equivalent answers in voting)."""
    try:
        if pred is None or not str(pred).strip():
            return Verdict(False, "no-answer", pred)
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            return Verdict(False, "refused-unsafe", pred)
        p, g = _normalize(pred), _normalize(gold)
        if not p:
            return Verdict(False, "no-answer", pred)
        if _key(p) == _key(g):
            return Verdict(True, "string-match", pred)
        reason = _cmp_value(_parse_value(p), _parse_value(g), _Ctx(timeout_s))
        return Verdict(reason is not None, reason or "mismatch", pred)
    except _Unsafe:
        return Verdict(False, "refused-unsafe", pred)
    except _Timeout:
        return Verdict(False, "timeout", pred)
    except Exception:  # noqa: BLE001 - grading must never crash an evaluation
        return Verdict(False, "grader-error", pred if isinstance(pred, str) else None)


def grade(completion: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """Grade a model completion against the gold final answer."""
    try:
        extracted = extract_answer(completion)
    except Exception:  # noqa: BLE001
        return Verdict(False, "grader-error", None)
    if extracted is None:
        return Verdict(False, "no-answer", None)
    return answers_equivalent(extracted, gold, timeout_s=timeout_s)


# --------------------------------------------------------------------------------------------
# The sympy child process
# --------------------------------------------------------------------------------------------

_STARTUP_TIMEOUT_S = 60.0
_CHILD_MEMORY_BYTES = 2 << 30


class _SympyWorker:
    """One persistent child process answering sympy checks, one request at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.buf = b""

    def start(self) -> None:
        script = ("import importlib.util, sys\n"
                  f"spec = importlib.util.spec_from_file_location('_grading_child', {__file__!r})\n"
                  "mod = importlib.util.module_from_spec(spec)\n"
                  "sys.modules['_grading_child'] = mod\n"
                  "spec.loader.exec_module(mod)\n"
                  "mod._child_main()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.buf = b""
        if self.read_line(time.monotonic() + _STARTUP_TIMEOUT_S) != {"ready": True}:
            raise RuntimeError("the sympy worker did not start")

    def read_line(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.stop()
                raise _Timeout
            chunk = os.read(fd, 65536)
            if not chunk:
                self.stop()
                raise RuntimeError("the sympy worker exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, request: dict, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if not self.lock.acquire(timeout=timeout_s):
            raise _Timeout
        try:
            if self.proc is not None and self.proc.poll() is not None:
                self.stop()  # it died (e.g. at its memory limit): start a fresh one
            if self.proc is None:
                self.start()
                deadline = time.monotonic() + timeout_s  # the start-up is not the check's time
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            response = self.read_line(deadline)
        finally:
            self.lock.release()
        if "error" in response:
            raise RuntimeError(response["error"])
        return bool(response["ok"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None


_WORKER: _SympyWorker | None = None
_WORKER_LOCK = threading.Lock()


def _worker() -> _SympyWorker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = _SympyWorker()
        return _WORKER


def shutdown_worker() -> None:
    """Stop the sympy child process (it restarts on the next symbolic check)."""
    worker = _WORKER
    if worker is not None and worker.lock.acquire(timeout=5):
        try:
            worker.stop()
        finally:
            worker.lock.release()


def _forget_worker_after_fork() -> None:
    # A forked process shares the parent's pipes (and maybe a held lock): it starts its own child.
    global _WORKER, _WORKER_LOCK
    _WORKER, _WORKER_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_worker_after_fork)
atexit.register(shutdown_worker)


def _to_sympy(node: Any) -> Any:
    import sympy as sp

    kind = node[0]
    if kind == "num":
        return sp.Integer(node[1])
    if kind == "dec":
        return sp.Rational(node[1].rstrip(".") or "0")
    if kind == "sym":
        return sp.Symbol(node[1], real=True)  # answers are about real quantities: sqrt(x^2) = |x|
    if kind == "const":
        return {"pi": sp.pi, "e": sp.E, "i": sp.I, "oo": sp.oo}[node[1]]
    if kind == "neg":
        return -_to_sympy(node[1])
    if kind == "add":
        return sp.Add(*[_to_sympy(c) for c in node[1]])
    if kind == "mul":
        return sp.Mul(*[_to_sympy(c) for c in node[1]])
    if kind == "div":
        return _to_sympy(node[1]) / _to_sympy(node[2])
    if kind == "pow":
        return sp.Pow(_to_sympy(node[1]), _to_sympy(node[2]))
    if kind == "fact":
        return sp.factorial(_to_sympy(node[1]))
    if kind == "binom":
        return sp.binomial(_to_sympy(node[1]), _to_sympy(node[2]))
    if kind == "root":
        return sp.root(_to_sympy(node[1]), _to_sympy(node[2]))
    if kind == "log":
        return sp.log(_to_sympy(node[1]), _to_sympy(node[2]))
    if kind == "fn":
        funcs = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "cot": sp.cot, "sec": sp.sec,
                 "csc": sp.csc, "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan,
                 "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "exp": sp.exp, "ln": sp.log,
                 "log": sp.log, "abs": sp.Abs, "floor": sp.floor, "ceiling": sp.ceiling}
        return funcs[node[1]](_to_sympy(node[2]))
    raise ValueError(f"unknown node {kind}")


def _sympy_check(op: str, a: Any, b: Any) -> bool:
    import sympy as sp

    ea, eb = _to_sympy(a), _to_sympy(b)
    if ea.has(sp.zoo, sp.nan) or eb.has(sp.zoo, sp.nan):
        return False  # an undefined value (division by zero) matches nothing
    if op == "equal":
        if ea == eb:
            return True
        diff = ea - eb
        if sp.simplify(diff) == 0:
            return True
        return diff.equals(0) is True
    if op == "ratio":  # two equations f = 0 and g = 0 with f = c * g, c a nonzero constant
        r = sp.simplify(ea / eb)
        return bool(r.is_number) and r.is_finite is not False and r != 0
    raise ValueError(f"unknown op {op}")


def _child_main() -> None:
    """Entry point of the sympy child: JSON requests on stdin, one JSON line per answer."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY_BYTES, _CHILD_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    out = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # only the protocol goes to the parent
    import sympy  # noqa: F401 - import before announcing readiness

    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            resp = {"ok": _sympy_check(req["op"], req["a"], req["b"])}
        except Exception as e:  # noqa: BLE001 - reported to the parent as a grader error
            resp = {"error": f"{type(e).__name__}: {e}"[:300]}
        out.write(json.dumps(resp) + "\n")
        out.flush()
