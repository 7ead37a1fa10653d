"""What grading returns: the `Verdict`, its closed set of reasons, and the grader's identity.

Design choice: a verdict is a value, never an exception. Every way a comparison can end, including a
refusal, a timeout or a bug inside the grader, is one of the `REASONS`, so an evaluation can count
outcomes instead of catching errors. The three private exceptions are the internal signals that
`answers_equivalent` turns into reasons (or, for a parse error, into a fallback to comparing text).
They live here, below every other module of the package, so that any stage can raise them without
importing the stages that catch them.
"""

from __future__ import annotations

from dataclasses import dataclass

GRADER_NAME = "reasoning.grading"
# Recorded with every evaluation: bump it whenever any verdict could change; the major part when an
# answer it accepted may now be refused (a convention reversed), so old and new accuracies differ in
# meaning. 2.0.0: the last closed box beats a later "the answer is" phrase, a completion cut off inside
# its last box has no answer, x = 3 is not y = 3, and the other conventions of issue 15.
GRADER_VERSION = "2.0.0"

REASONS = ("string-match", "numeric-match", "symbolic-match", "mismatch", "no-answer",
           "refused-unsafe", "timeout", "grader-error")


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
