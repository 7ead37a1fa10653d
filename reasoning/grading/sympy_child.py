"""The sympy child process: proves the identities that numeric checks could not settle.

Design choice: this is the only place sympy is imported, and it runs in its own process
(`python -m reasoning.grading.sympy_child`, started by `sympy_worker`), so the grading process never
pays sympy's import time or memory, and a check that runs away can be killed without harm. The child
sets its own address-space limit and ignores Ctrl-C (the parent decides when it dies). Requests are
parse trees, not strings: the tree is rebuilt with sympy constructors, so no answer text ever
reaches sympy's parser. Symbols are real, since answers are about real quantities, and odd roots
of negative numbers are real roots, as in the parent's arithmetic. Its protocol is one JSON line
per request and per reply on its own copy of stdout; anything else sympy prints goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .limits import _CHILD_MEMORY_BYTES


def _to_sympy(node: Any) -> Any:
    import sympy as sp  # local, as everywhere here: `_child_main` imports it once the memory limit is set

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
        base, exp = _to_sympy(node[1]), _to_sympy(node[2])
        if exp.is_Rational and exp.q % 2 == 1 and exp.q > 1 and base.is_negative:
            return sp.real_root(base, exp.q) ** exp.p  # (-8)^(2/3) = 4, not the principal complex value
        return sp.Pow(base, exp)
    if kind == "fact":
        return sp.factorial(_to_sympy(node[1]))
    if kind == "binom":
        return sp.binomial(_to_sympy(node[1]), _to_sympy(node[2]))
    if kind == "root":
        base, index = _to_sympy(node[1]), _to_sympy(node[2])
        if index.is_Integer and index % 2 == 1:
            return sp.real_root(base, index)  # the cube root of -8 is -2
        return sp.root(base, index)
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


if __name__ == "__main__":
    _child_main()
