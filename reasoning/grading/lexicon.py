"""Which letter runs are mathematics and which are prose.

Design choice: one vocabulary shared by every stage that has to tell a word from math. Extraction
must not take a sentence for a bare answer, normalisation must not strip `sin` as a unit, the
tokenizer splits `sinx` into a function and a variable, and the value parser compares prose as text.
If each stage kept its own word list they could disagree about the same answer; here they cannot.
"""

from __future__ import annotations

import re

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
          "tanh", "exp", "ln", "log", "sqrt"}
_FUNC_WORDS = sorted(_FUNCS, key=len, reverse=True)  # longest first: "sinh" before "sin"
_KNOWN_WORDS = _FUNCS | {"pi", "infty", "inf"}


def _is_prose(s: str) -> bool:
    """Words rather than math: 'east', 'no solution'; but '2abc' is a product of three variables."""
    body = re.sub(r"\\[A-Za-z]+", " ", s)
    words = [w for w in re.findall(r"[A-Za-z]{3,}", body) if w.lower() not in _KNOWN_WORDS
             and not any(w.startswith(f) and len(w) - len(f) <= 2 for f in _FUNC_WORDS)]
    return len(words) > 1 or any(len(w) > 3 for w in words) or (bool(words) and not re.search(r"\d", s))
