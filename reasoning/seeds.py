"""The one seed scheme: every random draw in generation is keyed by what it is, never by when it runs.

Design: a run has one integer `seed`. A problem's seed is `problem_seed(problem id, seed)` (sha256:
any string key, stable across Python versions and processes, unlike `hash`). Sample j of a prompt
whose seed is s is drawn from a torch generator seeded with `sample_seed(s, j)` (a splitmix-style
integer mix: cheap per row, and distinct for neighbouring (s, j)). GRPO keys its prompts by their
position in the shuffled prompt stream the same way: `sample_seed(seed, position)`. So a sample does
not change with batching, resumes, limits, the number of processes or which other rows share a
batch; `reasoning.generate` turns these seeds into per-row random streams.
"""

from __future__ import annotations

import hashlib


def problem_seed(key: str, seed: int) -> int:
    """Seed of one problem (or any item named by a string `key`) under run seed `seed`; 63 bits."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") >> 1


def sample_seed(seed: int, index: int) -> int:
    """Seed of draw `index` (sample j of a prompt, or a prompt's stream position) under `seed`; 63 bits."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    return x % (1 << 63)
