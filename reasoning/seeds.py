"""The one seed scheme: every random draw in generation is keyed by what it is, never by when it runs.

Design: a run has one integer `seed`. A problem's seed is `problem_seed(problem id, seed)` (sha256:
any string key, stable across Python versions and processes, unlike `hash`). Sample j of a prompt
whose seed is s has the seed `sample_seed(s, j)` (a splitmix-style integer mix: cheap per row, and
distinct for neighbouring (s, j)). GRPO keys its prompts by their position in the shuffled prompt
stream the same way: `sample_seed(seed, position)`. So a sample does not change with batching,
resumes, limits, the number of processes or which other rows share a batch.

A row's random stream is counter-based (`uniforms`): its t-th draw is a hash of (its seed, t), not
the t-th output of a stateful generator. The draws of a whole batch are then one tensor expression,
computed on the device inside the compiled decode step, and a draw never depends on how many were
made before it in the process (the idea of Philox and of JAX's keys; Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011). The hash is murmur3's 32-bit finaliser chained over the
counter and the seed's two halves; its products are split in 16-bit halves so that every
intermediate fits int64 exactly (signed overflow is not defined behaviour in compiled kernels).
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def problem_seed(key: str, seed: int) -> int:
    """Seed of one problem (or any item named by a string `key`) under run seed `seed`; 63 bits."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") >> 1


def sample_seed(seed: int, index: int) -> int:
    """Seed of draw `index` (sample j of a prompt, or a prompt's stream position) under `seed`; 63 bits."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    return x % (1 << 63)


_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """x * c mod 2^32 for int64 x in [0, 2^32): split so that no product exceeds 2^48."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(x: Tensor) -> Tensor:
    """murmur3's 32-bit finaliser: a bijection of [0, 2^32) whose every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniforms(seeds: Tensor, counters: Tensor) -> Tensor:
    """Draw `counters[b]` of the random stream seeded `seeds[b]`, for each row b: float32 in (0, 1].

    seeds: (B,) int64 in [0, 2^63) (sample_seed's range); counters: (B,) int64 in [0, 2^32), e.g. the
    number of tokens a row has sampled so far. 24 random bits per draw, the precision of the fp32
    CDFs they are compared with; never 0, so inverse-CDF sampling never picks a zero-probability token.
    """
    h = _fmix32((counters & _M32) ^ 0x9E3779B9)
    h = _fmix32(h ^ (seeds & _M32))
    h = _fmix32(h ^ ((seeds >> 32) & _M32))
    return ((h >> 8) + 1).to(torch.float32) * 2.0 ** -24
