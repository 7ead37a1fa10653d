"""Every bound the grader enforces, in one place.

Design choice: safety comes from limits checked on the parse tree before any arithmetic (a power
tower or a huge factorial is refused from its shape, not by running it and waiting), plus wall-clock
and memory limits on the one place that runs open-ended work, the sympy child. Keeping all of them in
one small module lets a reviewer read the whole safety envelope at once, and lets the parent and the
child process share one figure for the child's memory without importing anything heavy.
"""

from __future__ import annotations

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

# The sympy child process.
_STARTUP_TIMEOUT_S = 60.0  # importing sympy on a loaded machine; not charged to any check
_CHILD_MEMORY_BYTES = 2 << 30  # address-space limit: a runaway simplification dies, not the host
