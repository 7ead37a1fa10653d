import itertools
import math
import random

import pytest

from reasoning.metrics import (
    accuracy_summary,
    answer_classes,
    compare_records,
    mcnemar_exact,
    mean_pass_at_k,
    paired_bootstrap,
    pass_at_k,
    wilson_interval,
)

Z = 1.96


def test_wilson_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    # closed forms at the edges: 0/n -> (0, z^2/(n+z^2)), n/n -> (n/(n+z^2), 1)
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z * Z / (10 + Z * Z)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + Z * Z), 1.0))
    # symmetric under swapping successes and failures
    lo, hi = wilson_interval(3, 17)
    lo2, hi2 = wilson_interval(14, 17)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_accuracy_summary():
    s = accuracy_summary([True, True, True, False])
    assert s["accuracy"] == 0.75 and s["n"] == 4
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert s["ci_low"] < 0.75 < s["ci_high"]
    with pytest.raises(ValueError, match="zero problems"):
        accuracy_summary([])


def _pass_at_k_brute(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges():
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(1000, 1, 1000) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)


def test_mean_pass_at_k():
    per_problem = [[True, False, False, False], [False, False, False, False], [True, True, False, True]]
    # pass@1 is the mean per-problem fraction of correct samples
    assert mean_pass_at_k(per_problem, 1) == pytest.approx((1 / 4 + 0 + 3 / 4) / 3)
    # pass@2 per problem: 1 - C(3,2)/C(4,2) = 0.5, 0, 1 - 0 = 1
    assert mean_pass_at_k(per_problem, 2) == pytest.approx((0.5 + 0 + 1) / 3)
    with pytest.raises(ValueError):
        mean_pass_at_k([[True], []], 1)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_answer_classes_order_abstentions_and_equivalence():
    assert answer_classes(["1", "2", "2"]) == [[0], [1, 2]]
    assert answer_classes(["3", "2", "2", "3"]) == [[0, 3], [1, 2]]  # in order of first appearance
    assert answer_classes([None, "", "7", None]) == [[2]]  # no answer: in no class
    assert answer_classes([None, ""]) == []
    loose = lambda a, b: a.replace(" ", "") == b.replace(" ", "")  # noqa: E731
    assert answer_classes(["3", "1/2", "1 / 2"]) == [[0], [1], [2]]  # default: exact strings
    assert answer_classes(["3", "1/2", "1 / 2"], equivalent=loose) == [[0], [1, 2]]


def test_mcnemar_exact_hand_computed():
    # 1 pair a-wrong/b-right, 7 pairs a-right/b-wrong, 5 concordant pairs
    a = [False] + [True] * 7 + [True] * 3 + [False] * 2
    b = [True] + [False] * 7 + [True] * 3 + [False] * 2
    res = mcnemar_exact(a, b)
    assert (res["b01"], res["b10"]) == (1, 7)
    assert res["p_value"] == pytest.approx(2 * (math.comb(8, 0) + math.comb(8, 1)) / 2**8)
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(res["p_value"])
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # no discordant pairs
    assert mcnemar_exact([True, False], [False, True])["p_value"] == 1.0
    # many discordant pairs: exact arithmetic, no float overflow
    big = mcnemar_exact([True] * 1100 + [False] * 900, [False] * 1100 + [True] * 900)
    assert 0 < big["p_value"] < 1e-4


def _paired_sample(n, seed):
    rng = random.Random(seed)
    a = [rng.random() < 0.5 for _ in range(n)]
    b = [x or rng.random() < 0.3 for x in a]  # b fixes 30% of a's misses: true diff 0.5 * 0.3 = 0.15
    return a, b


def test_paired_bootstrap_interval():
    a, b = _paired_sample(400, seed=1)
    res = paired_bootstrap(a, b, seed=0)
    observed = (sum(b) - sum(a)) / len(a)
    assert res["diff"] == pytest.approx(observed)
    assert res["ci_low"] < observed < res["ci_high"]
    # for n=400 the percentile interval is close to the normal one, diff +- 1.96 * sd(d) / sqrt(n)
    d = [int(y) - int(x) for x, y in zip(a, b)]
    se = math.sqrt((sum(v * v for v in d) / len(d) - observed**2) / len(d))
    assert res["ci_low"] == pytest.approx(observed - Z * se, abs=0.006)
    assert res["ci_high"] == pytest.approx(observed + Z * se, abs=0.006)


def test_paired_bootstrap_covers_true_diff():
    # the 95% interval should contain the true difference (0.15) in about 95% of repeated studies
    covered = 0
    for study in range(200):
        res = paired_bootstrap(*_paired_sample(200, seed=100 + study), n_boot=2000, seed=study)
        covered += res["ci_low"] <= 0.15 <= res["ci_high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_bootstrap_deterministic_given_seed():
    a, b = _paired_sample(100, seed=2)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3) != paired_bootstrap(a, b, seed=4)
    same = paired_bootstrap(a, a)
    assert same == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap(a, b[:-1])


def test_compare_records_aligns_by_id():
    a, b = _paired_sample(60, seed=5)
    recs_a = [{"id": f"p{i}", "correct": x} for i, x in enumerate(a)]
    recs_b = [{"id": f"p{i}", "correct": y, "text": "..."} for i, y in enumerate(b)]
    res = compare_records(recs_a, list(reversed(recs_b)), n_boot=2000)
    assert res["n"] == 60
    assert res["accuracy_a"] == pytest.approx(sum(a) / 60) and res["accuracy_b"] == pytest.approx(sum(b) / 60)
    assert res["p_value"] == pytest.approx(mcnemar_exact(a, b)["p_value"])
    assert {k: res[k] for k in ("diff", "ci_low", "ci_high")} == paired_bootstrap(a, b, n_boot=2000)


def test_compare_records_rejects_mismatched_ids():
    recs = [{"id": "x", "correct": True}, {"id": "y", "correct": False}]
    with pytest.raises(ValueError, match=r"1 ids only in a, e.g. \['y'\]; 1 only in b, e.g. \['z'\]"):
        compare_records(recs, [{"id": "x", "correct": True}, {"id": "z", "correct": True}])
    with pytest.raises(ValueError, match="repeat id"):
        compare_records(recs, recs + recs[:1])
    with pytest.raises(ValueError, match="bool `correct`"):
        compare_records(recs, [{"id": "x", "correct": 1}, {"id": "y", "correct": 0}])
