"""The counter-based random streams (seeds.uniforms) that sampling draws from."""

from __future__ import annotations

import pytest
import torch

from reasoning.seeds import sample_seed, uniforms


def fmix32(x: int) -> int:
    """murmur3's 32-bit finaliser in plain integer arithmetic: the reference for the tensor version."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def reference_uniform(seed: int, counter: int) -> float:
    h = fmix32((counter & 0xFFFFFFFF) ^ 0x9E3779B9)
    h = fmix32(h ^ (seed & 0xFFFFFFFF))
    h = fmix32(h ^ (seed >> 32))
    return ((h >> 8) + 1) / 2 ** 24


def test_uniforms_equal_the_plain_integer_reference_over_the_whole_seed_range():
    seeds = [0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1] + [sample_seed(s, j) for s in range(20) for j in range(5)]
    counters = [0, 1, 7, 255, 2 ** 31 + 5, 2 ** 32 - 1]
    pairs = [(s, c) for s in seeds for c in counters]
    got = uniforms(torch.tensor([s for s, _ in pairs]), torch.tensor([c for _, c in pairs]))
    assert got.dtype == torch.float32
    assert got.tolist() == [reference_uniform(s, c) for s, c in pairs]


def test_uniforms_lie_in_the_half_open_unit_interval_and_are_uniform():
    n = 200_000
    u = uniforms(torch.full((n,), sample_seed(3, 0)), torch.arange(n)).double()
    assert 0 < u.min() and u.max() <= 1
    # Kolmogorov-Smirnov distance of the empirical CDF to the uniform one: 1.63 / sqrt(n) is the 1% level
    sorted_u = u.sort().values
    ks = (torch.arange(1, n + 1, dtype=torch.float64) / n - sorted_u).abs().max()
    assert ks < 1.63 / n ** 0.5
    # neighbouring draws of one stream, and first draws of neighbouring streams, are uncorrelated
    across = uniforms(torch.arange(n), torch.zeros(n, dtype=torch.long)).double()
    for x in (u, across):
        r = torch.corrcoef(torch.stack([x[:-1], x[1:]]))[0, 1]
        assert abs(r) < 4 / n ** 0.5


def test_a_draw_depends_only_on_its_seed_and_counter():
    seeds, counters = torch.tensor([5, 9, 5, 11]), torch.tensor([0, 3, 3, 0])
    u = uniforms(seeds, counters)
    assert u[2] != u[0] and u[2] != u[1]  # same seed, other counter; same counter, other seed
    assert uniforms(seeds[2:3], counters[2:3]).item() == u[2].item()  # whatever the batch


@pytest.mark.slow
def test_compiled_uniforms_equal_eager():
    seeds = torch.tensor([sample_seed(s, 0) for s in range(64)])
    counters = torch.arange(64) * 1_000_003
    assert torch.equal(torch.compile(uniforms, fullgraph=True)(seeds, counters), uniforms(seeds, counters))
