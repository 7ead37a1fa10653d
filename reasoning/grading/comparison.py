"""Deciding whether two answers match, cheapest evidence first; and the public entry points.

Design choice: every comparison climbs a ladder and stops at the first rung that decides it. Equal
normalised strings, then equal parse trees, then exact rational arithmetic, then 40-digit numeric
evaluation (constants, and sample points that refute a false identity) all run in this process in
microseconds. Only an identity that survives the sample points (an expression with variables, or
an equation) costs a round trip to the sympy child, under one wall-clock deadline for the whole
comparison. Structured values are compared by their kind: ordered for tuples and matrices, as a
matching for sets and lists, an equation against a bare value by its right-hand side. The reason of
a match is the most expensive rung any part needed (`_RANK`). `answers_equivalent` turns every
internal signal into a `Verdict`, so grading never raises.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .arithmetic import (_MP, _decimal_close, _exact, _has_decimal, _mp_value, _rel_diff, _symbols,
                         _terminating)
from .extraction import extract_answer
from .limits import DEFAULT_TIMEOUT_S, MAX_ANSWER_CHARS
from .normalisation import _key, _normalize
from .sympy_worker import _worker
from .values import _FLIP, _is_label, _is_symbol, _names_function_value, _parse_value
from .verdict import Verdict, _Timeout, _Unsafe

# Match reasons ranked by the work they took: a structured match reports the costliest of its parts.
_RANK = {"string-match": 0, "numeric-match": 1, "symbolic-match": 2}


class _Ctx:
    """The deadline of one comparison: every sympy check it needs draws on what is left of it."""

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
    # Labels are compared by name: x = 3 (a vertical line) is not y = 3, but y and f(x) both name the
    # value of a function. Otherwise the two equations must have the same solutions.
    if _is_symbol(p[1]) and _is_symbol(g[1]) and (p[1] == g[1] or _names_function_value(p[1])
                                                 and _names_function_value(g[1])):
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
