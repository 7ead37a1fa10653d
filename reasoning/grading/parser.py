"""A recursive-descent parser for the LaTeX / plain-text math subset that answers are written in.

Design choice: answers are never evaluated as code, not even through sympy's own parser (which
`eval`s). Our grammar knows only arithmetic, the common functions and constants, roots, factorials
and binomials, so nothing an answer contains can name an attribute, call a builtin or import a
module; text outside the grammar is a `_ParseError` and is compared as text instead. The parser
counts nodes and nesting as it goes and `_parse_expr` checks the finished tree against the resource
limits before anyone computes with it, so a hostile answer is refused from its shape.

The result is a small tuple AST, plain data that crosses the pipe to the sympy child as JSON:
    ("num", "12") ("dec", "0.5") ("sym", "x") ("const", "pi"|"e"|"i"|"oo") ("neg", a)
    ("add", [a, b, ...]) ("mul", [a, b, ...]) ("div", a, b) ("pow", a, b) ("fact", a)
    ("root", a, n) ("binom", a, b) ("fn", name, a) ("log", a, base)
"""

from __future__ import annotations

import re
from typing import Any

from .arithmetic import _check_limits
from .lexicon import _FUNC_WORDS, _FUNCS
from .limits import MAX_DEPTH, MAX_LITERAL_DIGITS, MAX_NODES
from .verdict import _ParseError, _Unsafe

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
