"""The structure of an answer: tuples, intervals, sets, matrices, equations, relations, choices.

Design choice: an answer is parsed into a small tree of tagged values whose leaves are expressions,
so that the comparison can follow the structure (a set is unordered, an interval keeps its
brackets) and compare each leaf with the arithmetic it needs. Structure is recognised top-down by
splitting at separators outside brackets, most loosely binding first (commas, then relations, then
unions, then plus-minus); only what is left goes to the expression parser. Notations that mean the
same thing are rewritten into one value here rather than special-cased in the comparison: "x > 2"
is the interval (2, oo), "-x > -1" is solved to "x < 1", "1 \\pm \\sqrt 5" is a two-element set,
set-builder notation is its condition. Anything that does not parse is kept as normalised text.

Values:
    ("expr", ast) ("text", s) ("choice", "C", v|None) ("base", digits, base) ("tuple", "(", ")", [v])
    ("list", [v]) unordered ("set", [v]) unordered ("union", [v]) ("matrix", [[v]]) ("eq", v, v)
    ("rel", [ops], [v])
"""

from __future__ import annotations

import re

from .arithmetic import _exact, _symbols
from .extraction import _match_brace
from .lexicon import _is_prose
from .limits import MAX_DEPTH, MAX_ITEMS
from .normalisation import _ROW
from .parser import _CMD_RE, _parse_expr
from .verdict import _ParseError, _Unsafe

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
