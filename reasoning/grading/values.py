"""The structure of an answer: tuples, intervals, sets, matrices, equations, relations, choices.

Design choice: an answer is parsed into a small tree of tagged values whose leaves are expressions,
so that the comparison can follow the structure (a set is unordered, an interval keeps its
brackets) and compare each leaf with the arithmetic it needs. Structure is recognised top-down by
splitting at separators outside brackets, most loosely binding first (commas, then relations, then
set differences, then unions, then plus-minus, then ratios); only what is left goes to the
expression parser. Notations that mean the same thing are rewritten into one value here rather than
special-cased in the comparison: "x > 2" is the interval (2, oo), "-x > -1" is solved to "x < 1",
"x \\neq 0" and "R \\setminus \\{0\\}" are the union (-oo, 0) U (0, oo), "1 \\pm \\sqrt 5" is a
two-element set, set-builder notation is its condition. The left side of an equation that names
what the answer is (a variable, f(x), f^{-1}(x), f(2), |PQ|, AB, an angle, V_1:V_2) becomes one
symbol, a label, so that "|PQ| = 1" can be compared with "1" by its right side. Anything that
does not parse is kept as normalised text.

Values:
    ("expr", ast) ("text", s) ("choice", "C", v|None) ("base", digits, base) ("tuple", "(", ")", [v])
    ("list", [v]) unordered ("set", [v]) unordered ("union", [v]) ("matrix", [[v]]) ("eq", v, v)
    ("rel", [ops], [v]); a ratio a:b:c is ("tuple", ":", ":", [v]).
"""

from __future__ import annotations

import re

from .arithmetic import _MP, _exact, _mp_value, _symbols
from .extraction import _match_brace
from .lexicon import _is_prose
from .limits import MAX_DEPTH, MAX_ITEMS
from .normalisation import _ROW
from .parser import _CMD_RE, _parse_expr
from .verdict import _ParseError, _Unsafe

_OPEN, _CLOSE = "([{\u2983", ")]}\u2984"
_REL_CMDS = {"le": "<=", "leq": "<=", "leqslant": "<=", "ge": ">=", "geq": ">=", "geqslant": ">=",
             "lt": "<", "gt": ">", "ne": "!=", "neq": "!=", "approx": "~", "in": "in"}
_REL_SEPS = ("=", "<=", ">=", "<", ">", "!=", *("\\" + c for c in _REL_CMDS))
# The left side of "f(x) = ...", "f^{-1}(x) = ...", "f'(x) = ...", "g_2(t) = ...": a function's value, like y.
_FUNC_NAME = r"[A-Za-z](?:\^\{?-1\}?|'+|_\{?\w+\}?)?"
_FUNC_VALUE = re.compile(_FUNC_NAME + r"\([A-Za-z](?:,[A-Za-z])*\)|y")
# Other left sides that name the answer: f(2), |PQ|, |z|, AB, ABC, \angle ABC, m\angle A, \overline{AB},
# and ratios of names: V_1:V_2, AB:CD, \frac{AB}{CD}.
_NAME = (_FUNC_NAME + r"\((?:[^()=A-Za-z]|\\[A-Za-z]+)*\)|\|(?:[A-Z]{1,3}|[a-z])\||[A-Z]{2,3}"
         r"|m?\\angle[A-Z]{1,3}|\\overline\{[A-Z]{2}\}")
_PART = rf"(?:{_NAME}|[A-Za-z](?:_\{{?\w+\}}?)?)"
_LABEL = re.compile(rf"{_NAME}|{_PART}(?::{_PART})+|\\frac\{{{_PART}\}}\{{{_PART}\}}")
_REALS = r"\(-\\infty,\\infty\)"  # the real line, as normalisation writes \mathbb{R}
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
        return _exclusion(parts, depth) or ("list", _items(parts, depth))
    parts, ops = _split_top(s, _REL_SEPS)
    if ops:
        ops = [_REL_CMDS.get(o.lstrip("\\"), o) for o in ops]
        return _exclusion([s], depth) or _parse_relation(parts, ops, depth)
    parts, ops = _split_top(s, ("\\setminus",))
    if len(ops) == 1:
        whole, removed = (_parse_value(p, depth + 1) for p in parts)
        return _set_difference(whole, removed) or _text_value(s)
    parts, ops = _split_top(s, ("\\cup",))
    if ops:
        return ("union", [_parse_value(p, depth + 1) for p in parts])
    parts, ops = _split_top(s, ("\\pm", "\\mp"))
    if len(ops) == 1:
        a, b = parts[0].strip(), parts[1].strip()
        if not a:
            return ("set", [_parse_value(b, depth + 1), _parse_value(f"-({b})", depth + 1)])
        return ("set", [_parse_value(f"{a}+({b})", depth + 1), _parse_value(f"{a}-({b})", depth + 1)])
    parts, _ = _split_top(s, (":",))
    clock = re.match(r"\d{1,2}:\d\d(?![\d:])\s*[A-Za-z]", s)  # "4:30 p.m." is a time, kept as text
    if len(parts) > 1 and all(p.strip() for p in parts) and not clock:  # a ratio 3:8, or the label V_1:V_2
        return ("tuple", ":", ":", _items(parts, depth))
    if _outer_group(s) and s[0] != "{":
        inner = s[1:-1]
        if s[0] == "\u2983":
            builder = re.fullmatch(rf"\s*[A-Za-z]\s*(?:\\in\s*{_REALS}\s*)?(?::|\\mid|\|)(.+)", inner,
                                   re.DOTALL)
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
    """The left side of an answer given as "x = 5", "|PQ| = 1", "(p, q, r) = (6, 31, -1)", "V_1:V_2 = 3:8"."""
    return _is_symbol(v) or (v[0] == "tuple" and all(_is_symbol(i) for i in v[3]))


def _names_function_value(v: tuple) -> bool:
    """Whether a label is y or f(x)-like: "y = 2x + 1" and "f(x) = 2x + 1" give the same function."""
    return _is_symbol(v) and bool(_FUNC_VALUE.fullmatch(v[1][1]))


def _real(node: tuple):
    """The real value of a constant expression (an mpf, maybe infinite), or None."""
    v = _mp_value(node, {})
    return None if v is None or _MP.im(v) != 0 else _MP.re(v)


def _puncture(intervals: list[tuple], points: list[tuple]) -> tuple | None:
    """The intervals without the points, as an interval or a union; None unless every bound and
    point is a real constant. (0, 20) without 4 is (0, 4) U (4, 20); [0, 5] without 0 is (0, 5]."""
    values = [_real(p) for p in points]
    if any(v is None or _MP.isinf(v) for v in values):
        return None
    cuts = sorted({v: p for v, p in zip(values, points)}.items())  # (value, expression), once each
    out = []
    for _, left, right, (lo, hi) in intervals:
        a, b = (_real(v[1]) if v[0] == "expr" else None for v in (lo, hi))
        if a is None or b is None:
            return None
        for x, node in cuts:
            if x == a and left == "[":
                left = "("
            elif x == b and right == "]":
                right = ")"
            elif a < x < b:
                out.append(("tuple", left, ")", [lo, ("expr", node)]))
                left, lo, a = "(", ("expr", node), x
        out.append(("tuple", left, right, [lo, hi]))
    return out[0] if len(out) == 1 else ("union", out)


def _set_difference(whole: tuple, removed: tuple) -> tuple | None:
    """An interval or union of intervals without a finite set of constants: R \\setminus {0}."""
    intervals = whole[1] if whole[0] == "union" else [whole]
    if removed[0] != "set" or not all(v[0] == "tuple" and len(v[3]) == 2 and v[1] in "([" and v[2] in ")]"
                                      for v in intervals):
        return None
    if not all(v[0] == "expr" and not _symbols(v[1]) for v in removed[1]):
        return None
    return _puncture(intervals, [v[1] for v in removed[1]])


def _exclusion(parts: list[str], depth: int) -> tuple | None:
    """"x \\neq 0" (or "x \\neq 2, x \\neq 3", "x \\neq \\pm 1") is the real line without those points;
    None unless every part is one variable "not equal" to constants, the same variable throughout."""
    if len(parts) > MAX_ITEMS:
        return None  # refused by _items
    names, points = set(), []
    for part in parts:
        sides, ops = _split_top(part, _REL_SEPS)
        op = _REL_CMDS.get(ops[0].lstrip("\\"), ops[0]) if len(ops) == 1 else None
        if op == "in" and re.fullmatch(rf"\s*[A-Za-z]\s*\\in\s*{_REALS}\s*", part):
            continue  # "x \in R, x \neq 0": the domain, not a condition
        if not ops and names:  # "x \neq -3, 3": more points excluded
            sides, op = [next(iter(names)), part], "!="
        if op != "!=":
            return None
        a, b = (_parse_value(x, depth + 1) for x in sides)
        if _is_symbol(b) and not _is_symbol(a):
            a, b = b, a
        excluded = b[1] if b[0] == "set" else [b]
        if not _is_symbol(a) or not all(v[0] == "expr" and not _symbols(v[1]) for v in excluded):
            return None
        names.add(a[1][1])
        points += [v[1] for v in excluded]
    if len(names) != 1:
        return None
    everything = ("tuple", "(", ")", [("expr", ("neg", ("const", "oo"))), ("expr", ("const", "oo"))])
    return _puncture([everything], points)


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
    label = re.sub(r"\s+", "", parts[0])  # "f(x) = ..." names its value like "y = ..."; "|PQ| = 1" its 1
    if not _is_symbol(values[0]) and (_FUNC_VALUE.fullmatch(label)
                                      or set(ops) == {"="} and _LABEL.fullmatch(label)):
        values[0] = ("expr", ("sym", label))
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
    m2, m_1 = _exact(_substitute(diff, name, "2")), _exact(_substitute(diff, name, "-1"))
    if None in (m, m1, m2, m_1) or m1 - m == 0 or m2 - m1 != m1 - m or m - m_1 != m1 - m:
        return values, ops  # not linear: |x| < 3 agrees with x < 3 at 0, 1 and 2, but not at -1
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
