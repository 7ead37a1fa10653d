"""Evaluation statistics: accuracy with a confidence interval, sampling metrics, paired tests.

Design: every number a stage reports comes with its uncertainty. Accuracy carries a 95% Wilson
interval (well behaved near 0 and 1, unlike the normal approximation); pass@k uses the unbiased
estimator from n >= k samples instead of drawing k; two models evaluated on the same problems
are compared with paired tests (McNemar's exact test and a bootstrap interval of the accuracy
difference), which are far more sensitive than comparing two independent intervals because they
use only the problems on which the models disagree. Pure Python except the bootstrap (numpy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (Wilson 1927); z=1.96 gives 95%."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(correct: Sequence[bool]) -> dict[str, float]:
    """Accuracy of a list of per-problem outcomes with its 95% Wilson interval."""
    if not correct:
        raise ValueError("no evaluation records: accuracy of zero problems is undefined")
    k, n = sum(bool(c) for c in correct), len(correct)
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n, "ci_low": lo, "ci_high": hi, "n": n}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code", eq. 1): 1 - C(n-c, k) / C(n, k), the probability that k
    samples drawn without replacement from the n contain at least one correct one. Computed as a
    running product, as in the paper, so large n does not overflow.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def mean_pass_at_k(correct_per_problem: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems, each from all its samples (`pass_at_k`)."""
    _check_nonempty(correct_per_problem)
    total = sum(pass_at_k(len(s), sum(map(bool, s)), k) for s in correct_per_problem)
    return total / len(correct_per_problem)


def answer_classes(
    answers: Sequence[str | None], equivalent: Callable[[str, str], bool] | None = None
) -> list[list[int]]:
    """Sample indices grouped into classes of equivalent answers, in order of first appearance.

    Samples with no extracted answer (None or "") are left out. Answers are compared with
    `equivalent` against each class's first member (default: exact string equality).
    """
    same = equivalent or (lambda a, b: a == b)
    classes: list[list[int]] = []  # sample indices; classes[j][0] is the representative
    for i, ans in enumerate(answers):
        if not ans:
            continue
        for members in classes:
            if same(ans, answers[members[0]]):
                members.append(i)
                break
        else:
            classes.append([i])
    return classes


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test for paired outcomes (McNemar 1947): under "same accuracy" the
    discordant pairs split as Binomial(b01 + b10, 1/2); the two-sided p-value doubles the smaller
    tail. b01 counts problems that a got wrong and b right, b10 the reverse.
    """
    _check_paired(a, b)
    b01 = sum(1 for x, y in zip(a, b) if not x and y)
    b10 = sum(1 for x, y in zip(a, b) if x and not y)
    m = b01 + b10
    # exact rational tail: 2**m overflows floats for m > 1023
    tail = Fraction(sum(math.comb(m, i) for i in range(min(b01, b10) + 1)), 2**m)
    return {"b01": b01, "b10": b10, "p_value": float(min(Fraction(1), 2 * tail))}


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], n_boot: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Accuracy difference acc(b) - acc(a) with a 95% percentile bootstrap interval over problems
    (Efron & Tibshirani 1993), resampling problems with their pair of outcomes.

    Each pair contributes -1, 0 or +1 to the difference, so resampling n pairs amounts to drawing
    the counts of those three values from Multinomial(n, observed proportions): the same
    distribution as index resampling at O(n_boot) cost. Deterministic given `seed`.
    """
    import numpy as np

    _check_paired(a, b)
    n = len(a)
    down = sum(1 for x, y in zip(a, b) if x and not y)
    up = sum(1 for x, y in zip(a, b) if not x and y)
    ties = n - down - up
    counts = np.random.default_rng(seed).multinomial(n, [down / n, ties / n, up / n], size=n_boot)
    diffs = (counts[:, 2] - counts[:, 0]) / n
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return {"diff": (up - down) / n, "ci_low": float(lo), "ci_high": float(hi)}


def compare_records(
    records_a: Sequence[dict[str, Any]],
    records_b: Sequence[dict[str, Any]],
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired comparison of two evaluation record lists (dicts with `id` and bool `correct`) on the
    same problems: both accuracies, McNemar's exact test and the bootstrap interval of b - a."""
    by_id_a, by_id_b = _by_id(records_a, "a"), _by_id(records_b, "b")
    if by_id_a.keys() != by_id_b.keys():
        only_a = sorted(by_id_a.keys() - by_id_b.keys())
        only_b = sorted(by_id_b.keys() - by_id_a.keys())
        raise ValueError(
            f"the two record files cover different problems ({len(only_a)} ids only in a, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in b, e.g. {only_b[:3]}); evaluate both on the same dataset and limit"
        )
    ids = sorted(by_id_a)
    a = [by_id_a[i] for i in ids]
    b = [by_id_b[i] for i in ids]
    boot = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    return {
        "n": len(ids),
        "accuracy_a": sum(a) / len(a),
        "accuracy_b": sum(b) / len(b),
        **mcnemar_exact(a, b),
        **boot,
    }


def _by_id(records: Sequence[dict[str, Any]], name: str) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for i, r in enumerate(records):
        if "id" not in r or not isinstance(r.get("correct"), bool):
            raise ValueError(f"records {name}[{i}] needs an `id` and a bool `correct`, got keys {sorted(r)}")
        if r["id"] in out:
            raise ValueError(f"records {name} repeat id {r['id']!r}; compare one record per problem")
        out[r["id"]] = r["correct"]
    if not out:
        raise ValueError(f"records {name} are empty")
    return out


def _check_nonempty(per_problem: Sequence[Sequence[Any]]) -> None:
    if not per_problem:
        raise ValueError("no problems given")
    if any(len(s) == 0 for s in per_problem):
        raise ValueError("every problem needs at least one sample")


def _check_paired(a: Sequence[bool], b: Sequence[bool]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired tests need two non-empty outcome lists of equal length, got {len(a)} and {len(b)}"
        )


def seed_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, min and max of one figure over runs that differ only in their training seed, and the
    number of runs `n`. The spread is what the toy world's figures move by between machines (float
    results differ between CPUs as seeds do), which the 95% intervals of one run do not cover: those
    only account for the choice of test problems. Raises ValueError on no values."""
    if not values:
        raise ValueError("seed_spread needs the figure of at least one run")
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}
