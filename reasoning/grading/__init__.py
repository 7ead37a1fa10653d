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

The modules follow the pipeline, each importing only the ones listed before it:
    verdict, limits   the Verdict and its reasons; every resource and time limit
    lexicon           which letter runs are math and which are prose
    extraction        the final answer in a completion
    normalisation     the canonical string form of an answer
    arithmetic        limit checks, exact and 40-digit arithmetic on the parse tree
    parser            LaTeX/plain math -> tuple AST, refused when over a limit
    values            the structure of an answer: tuples, intervals, sets, matrices, equations
    sympy_worker      the parent's side of the sympy child process
    comparison        the ladder of checks, `answers_equivalent` and `grade`
    sympy_child       the child process itself (run with -m; never imported by the parent)
This package re-exports only the public API and imports no sympy (or torch).
"""

from __future__ import annotations

from .comparison import answers_equivalent, grade
from .extraction import extract_answer
from .limits import DEFAULT_TIMEOUT_S
from .sympy_worker import shutdown_worker
from .verdict import GRADER_NAME, GRADER_VERSION, REASONS, Verdict

__all__ = ["DEFAULT_TIMEOUT_S", "GRADER_NAME", "GRADER_VERSION", "REASONS", "Verdict", "answers_equivalent",
           "extract_answer", "grade", "shutdown_worker"]
