"""Resource checks and arithmetic on the parse tree, all inside the calling process.

Design choice: numbers and constants are decided here, without sympy and without a subprocess.
`_check_limits` bounds log10 of every constant subexpression from the tree's structure alone, so an
exponent, factorial or binomial that would be huge is refused before anything is computed. Then
`_exact` computes plain rational answers exactly with `fractions.Fraction`, and `_mp_eval`
evaluates everything else to 40 digits with mpmath (complex where needed), which settles constants
and rejects false identities at sample points. Two conventions of school mathematics (and of MATH's
answers) are kept over mpmath's principal values: an odd root of a negative number is real (the
cube root of -8 is -2, and so is (-8)^(1/3)), and an undefined value (a zeroth root, log 0, a
logarithm to base 0 or 1, division by zero) raises instead of becoming 1, 0 or an infinity, so that
it equals nothing. The mpmath context is private and its precision is never changed, so every
thread can share it without locks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import mpmath

from .limits import MAX_BINOMIAL, MAX_DIGITS, MAX_EXPONENT, MAX_FACTORIAL
from .verdict import _ParseError, _Unsafe

_MP = mpmath.MPContext()  # private context: its precision is never changed, so threads can share it
_MP.dps = 40


def _walk(node: tuple) -> Iterator[tuple]:
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


def _ln(x: Any) -> Any:
    if x == 0:
        raise ValueError("log of 0")  # mpmath says -inf; the logarithm of 0 is undefined
    return _MP.ln(x)


def _log(x: Any, base: Any) -> Any:
    if base == 0 or base == 1:
        raise ValueError("log to base 0 or 1")
    return _ln(x) / _ln(base)


def _odd_denominator(exp: tuple) -> Fraction | None:
    """The exponent as a fraction p/q with q odd and > 1 (a real odd root), else None."""
    v = _exact(exp)
    return v if v is not None and v.denominator > 1 and v.denominator % 2 == 1 else None


def _real_power(base: Any, exp: Fraction) -> Any:
    """base**(p/q) for q odd, as the real root when base is a negative real: (-8)^(2/3) = 4."""
    if _MP.im(base) == 0 and base < 0:
        magnitude = _MP.power(-_MP.re(base), _MP.mpf(exp.numerator) / exp.denominator)
        return -magnitude if exp.numerator % 2 else magnitude
    return _MP.power(base, _MP.mpf(exp.numerator) / exp.denominator)


def _root(x: Any, index: Any) -> Any:
    if index == 0:
        raise ZeroDivisionError("a zeroth root")
    if _MP.im(index) == 0 and _MP.isint(index) and int(index) % 2 == 1:
        return _real_power(x, Fraction(1, int(index)))  # the cube root of -8 is -2
    return _MP.root(x, index)


_MP_FUNCS = {"sin": _MP.sin, "cos": _MP.cos, "tan": _MP.tan, "cot": _MP.cot, "sec": _MP.sec,
             "csc": _MP.csc, "arcsin": _MP.asin, "arccos": _MP.acos, "arctan": _MP.atan,
             "sinh": _MP.sinh, "cosh": _MP.cosh, "tanh": _MP.tanh, "exp": _MP.exp, "ln": _ln,
             "log": _ln, "abs": abs, "floor": _MP.floor, "ceiling": _MP.ceil}


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
        odd = _odd_denominator(node[2])
        if odd is not None:
            return _real_power(_mp_eval(node[1], env), odd)
        return _MP.power(_mp_eval(node[1], env), _mp_eval(node[2], env))
    if kind == "fact":
        return _MP.factorial(_mp_eval(node[1], env))
    if kind == "binom":
        return _MP.binomial(_mp_eval(node[1], env), _mp_eval(node[2], env))
    if kind == "root":
        return _root(_mp_eval(node[1], env), _mp_eval(node[2], env)) if node[2] != ("num", "2") \
            else _MP.sqrt(_mp_eval(node[1], env))
    if kind == "log":
        return _log(_mp_eval(node[1], env), _mp_eval(node[2], env))
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
