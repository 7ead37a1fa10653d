"""Batched, KV-cached generation with continuous batching on one static cache, with per-row sampling.

Design choices:
- One KV cache per model, allocated for the generator's batch size (its slots) and the longest
  context asked for, and grown only when a call needs more; prefill, fan-out to n samples and
  compaction write into it in place (model.py), so peak memory is one cache.
- Continuous batching: every (prompt, sample) waits in a queue, shortest prompts first, and is
  admitted into a free slot as soon as one is free: a row that finishes hands its slot to the next
  waiting row in the following step, so the decode batch stays full while work remains (a batch
  that only shrinks as its rows finish spends most steps nearly empty, answer lengths being heavy-
  tailed). Prompts admitted together are prefilled together (right-padded); n samples of one prompt
  admitted together share its prefill (its cache prefix is copied to their slots).
- Each (prompt, sample) row draws its randomness from its own counter-based stream (`seeds.uniforms`:
  draw t of the row seeded sample_seed(prompt seed, j) is a hash of both), by inverse-CDF sampling,
  so the same seed gives the same sample whatever else is in the batch and whenever the row was
  admitted; and sampling is a tensor expression over the batch, run (and compiled) in the decode
  step itself: no per-row generator calls between steps.
- When nothing waits and the live rows fall to half the batch, they move to the first slots and
  the batch narrows, so finished rows stop costing compute while the batch width (and so the
  compiled graph) changes only log2(B) times.
- Only the decode step is compiled (`compile=True`); prefill runs eagerly with large matmuls.
  Each step attends to the filled part of the static cache only (`kv_len`); under compile that
  length becomes a dynamic dimension after the first steps, so the graph is not rebuilt per token.
  On CUDA the compiled step is captured as a CUDA graph (mode "reduce-overhead": one launch per
  step instead of one per kernel, which bounds a small model's decode), and since a graph has fixed
  shapes it attends to the whole cache, masked; one graph per batch width. The temperature and top_p
  enter the compiled step as 0-d tensors and the cache keeps one shape across calls, so a whole grid
  of sampling settings shares a few graphs (one per sampling mode: greedy, plain, top-k, top-p).
- `matmul_dtype` picks the precision of the weight matmuls per phase. Which dtype is faster
  depends on the CPU and on the number of rows multiplied (a decode step multiplies B rows, a
  prefill B x L): bf16 halves the bytes read per token, which wins where matmuls are bound by
  memory bandwidth, but CPUs without native bf16 dot products compute bf16 matrix-matrix products
  several times slower than fp32. So "auto" measures both on the model's own weights, once per
  row-count bucket and process, and uses the faster; the weights themselves stay untouched.
- Log-probs are the model's own (temperature 1) log-probabilities of the emitted tokens: what
  scorers and RL need, independent of the sampling temperature.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from .devices import DTYPES, checkpoint_dtype, default_device, peak_memory_bytes, rank_device, resolve_device
from .model import Qwen3, linear_as
from .seeds import sample_seed, uniforms
from .tokenizer import Tokenizer
from .weights import load_model, model_id, resolve


GREEDY_BELOW = 1e-5
"""Temperatures in (0, GREEDY_BELOW) decode greedily, as their limit T -> 0 does. Dividing the logits
by such a T would overflow fp32 (T <= ~1e-38: inf - inf = NaN, and every row took the last id) or,
above that, differ from argmax only between logits within ~T of each other: rounding noise."""


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 (or below GREEDY_BELOW): greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def is_int(x: object) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def is_real(x: object) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        problems = [msg for bad, msg in [
            (not is_int(self.max_new_tokens) or self.max_new_tokens < 1,
             f"max_new_tokens must be an integer >= 1, not {self.max_new_tokens!r}"),
            (not is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0,
             f"temperature must be a finite number >= 0 (0: greedy), not {self.temperature!r}"),
            (not is_int(self.top_k) or self.top_k < 0, f"top_k must be an integer >= 0 (0: off), not {self.top_k!r}"),
            (not is_real(self.top_p) or not 0 < self.top_p <= 1,
             f"top_p must lie in (0, 1] (1: off), not {self.top_p!r}"),
            (isinstance(self.stop_strings, str) or not all(isinstance(x, str) and x for x in self.stop_strings),
             f"stop_strings must be a sequence of non-empty strings, not {self.stop_strings!r}"),
        ] if bad]
        if problems:
            raise ValueError(f"invalid sampling settings: {'; '.join(problems)}")

    @property
    def greedy(self) -> bool:
        """Argmax decoding: temperature 0, or below GREEDY_BELOW (its limit)."""
        return self.temperature < GREEDY_BELOW


@dataclass
class Completion:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    # "stop" (stop token or string), "length" (truncated at max_new_tokens) or "context" (the prompt
    # and max_new_tokens do not fit the model's context: nothing was generated)
    finish_reason: str = "length"

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


StreamFn = Callable[[int, int, int], None]  # (prompt index, sample index, token id)


RECOMPILE_LIMIT = 64  # graphs of the compiled decode step a process may build (see Generator)


NUCLEUS_PREFIX = 1024  # top_p alone looks for the nucleus among this many best tokens first


def sample_tokens(logits: Tensor, cfg: SamplingConfig, seeds: Tensor,
                  counters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One token per row of (B, V) fp32 logits, and its log-probability. Row b's randomness is draw
    counters[b] of the stream seeded seeds[b] (seeds.uniforms; both (B,) int64 on the logits' device),
    so a row's token depends on nothing else in the batch; the whole batch is one tensor expression
    (no host sync), which the decode step compiles together with the model.

    Returns tokens (B,) int64; logprobs (B,) fp32, the model's own (temperature 1) log-probabilities
    of the tokens; and short (B,) bool, rows that `sample_full` must draw again. Filters work on the
    best candidates only (`topk`), not on a sort of the whole vocabulary: top_k keeps k of them;
    top_p alone takes the NUCLEUS_PREFIX best, which hold the nucleus whenever their mass reaches
    top_p; a row whose prefix holds less (a very flat distribution) is marked short.
    """
    return _sample(logits, seeds, counters, cfg.greedy, cfg.top_k, cfg.top_p < 1, cfg.temperature, cfg.top_p)


def _sample(logits: Tensor, seeds: Tensor, counters: Tensor, greedy: bool, top_k: int, nucleus: bool,
            temperature: float | Tensor, top_p: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sample_tokens with the sampling settings split in two: what picks the computation (greedy,
    top_k, nucleus: whether top_p < 1) and the values it computes with (temperature, top_p). The
    compiled decode step passes the values as 0-d tensors, so one graph serves every temperature and
    top_p (as Python floats, or fields of a config, each value would compile a graph of its own)."""
    logp = torch.log_softmax(logits, -1)
    short = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    if greedy:
        tokens = logits.argmax(-1)
    else:
        scaled = logits / temperature
        ids = None  # candidate token ids, best first (None: the whole vocabulary, in id order)
        if top_k or nucleus:
            vals, ids = scaled.topk(min(top_k or NUCLEUS_PREFIX, scaled.shape[-1]), dim=-1)
            # top_k renormalises over its k tokens; top_p alone needs the full distribution's mass
            probs = vals.softmax(-1) if top_k else (vals - scaled.logsumexp(-1, keepdim=True)).exp()
            if not top_k:
                short = probs.sum(-1) < top_p
            if nucleus:
                probs = _cut_nucleus(probs, top_p)
        else:
            probs = scaled.softmax(-1)
        tokens = _draw(probs, ids, uniforms(seeds, counters))
    return tokens, logp.gather(-1, tokens[:, None])[:, 0], short


def sample_full(logits: Tensor, cfg: SamplingConfig, seeds: Tensor, counters: Tensor) -> Tensor:
    """sample_tokens' tokens for rows whose top_p nucleus is wider than NUCLEUS_PREFIX tokens: the
    same draw, over the whole vocabulary sorted. (B, V) logits -> (B,) tokens."""
    vals, ids = (logits / cfg.temperature).sort(-1, descending=True)
    return _draw(_nucleus(vals.softmax(-1), cfg.top_p), ids, uniforms(seeds, counters))


def _nucleus(probs: Tensor, top_p: float) -> Tensor:
    """probs (best first) outside the smallest prefix whose mass reaches top_p set to 0 (the first
    token always stays)."""
    return probs if top_p >= 1 else _cut_nucleus(probs, top_p)


def _cut_nucleus(probs: Tensor, top_p: float | Tensor) -> Tensor:
    mass = probs.cumsum(-1)
    return probs.masked_fill(mass - probs >= top_p, 0.0)


def _draw(probs: Tensor, ids: Tensor | None, u: Tensor) -> Tensor:
    """Inverse-CDF draw: the first candidate whose cumulative mass reaches u (in (0, 1]) of the total."""
    cdf = probs.cumsum(-1)
    pick = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:]).clamp(max=cdf.shape[-1] - 1)
    return (pick if ids is None else ids.gather(-1, pick))[:, 0]


MATMUL_WEIGHTS: dict[str, torch.dtype] = {**DTYPES, "int8": torch.int8}
"""What a Generator's weight matmuls can multiply by: a dtype copy of the weights, or their per-channel
int8 quantization (model.Int8Weight)."""
MATMUL_DTYPES = ("model", "auto", *MATMUL_WEIGHTS)
AUTO_CANDIDATES = (torch.bfloat16, torch.int8)  # what "auto" weighs against the weights' own dtype

_FASTEST: dict[tuple, torch.dtype | None] = {}  # auto's measurements, shared by the process's generators


def check_matmul_dtype(value: str, setting: str = "matmul_dtype") -> None:
    """ValueError naming `setting` and the choices unless `value` is one of MATMUL_DTYPES."""
    if value not in MATMUL_DTYPES:
        raise ValueError(f"{setting}: {value!r} is not one of {', '.join(MATMUL_DTYPES)} (model: the weights "
                         "as loaded; auto: the fastest, measured on this machine; int8: weight-only int8)")


def _fastest(candidates: dict, device: torch.device, reps: int = 5):
    """The key of the fastest of `candidates` (callables). They run interleaved and each scores
    its best time, so a burst of load from other processes cannot favour one of them. A candidate
    that fails on this device (a kernel it lacks) is left out."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runnable = {}
    for key, fn in candidates.items():
        try:
            fn()  # warm-up: the first call of a shape builds its kernel
        except (RuntimeError, NotImplementedError):
            continue
        runnable[key] = fn
    best = dict.fromkeys(runnable, float("inf"))
    for _ in range(reps):
        for key, fn in runnable.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[key] = min(best[key], time.perf_counter() - t0)
    return min(best, key=best.__getitem__)  # ties go to the first


def fastest_matmul_dtype(model: Qwen3, rows: int,
                         candidates: Sequence[torch.dtype] = AUTO_CANDIDATES) -> torch.dtype | None:
    """The fastest way to multiply `rows` rows by the model's weights: one of `candidates` (a dtype
    copy, or torch.int8 for the int8 quantization), or None (the weights' own dtype); measured once
    per (device, shapes, dtypes, row bucket).

    Timed on the MLP weights of the first blocks, at least 64 MB of them so that they do not sit
    in the CPU's cache: a decode step streams every weight from memory. Activations enter in the
    model's dtype, so the casts each candidate needs are part of its time.
    """
    weight = model.layers[0].mlp.gate_proj.weight
    others = tuple(c for c in candidates if c != weight.dtype)
    if not others:
        return None
    bucket = min(1 << (rows - 1).bit_length(), 256)  # from ~256 rows on, matmuls are compute-bound
    key = (weight.device, tuple(weight.shape), len(model.layers), weight.dtype, others, bucket)
    if key not in _FASTEST:
        mlps = [m for layer in model.layers for m in (layer.mlp.gate_proj, layer.mlp.up_proj,
                                                     layer.mlp.down_proj)]
        per = weight.numel() * weight.element_size()
        mlps = mlps[:max(1, -(-(64 << 20) // per))]
        xs = {m.in_features: torch.randn(bucket, m.in_features, dtype=weight.dtype, device=weight.device)
              for m in mlps}

        def step(dt: torch.dtype | None) -> Callable[[], object]:
            ws = [(m.in_features, m.weight if dt is None else m.weight_as(dt)) for m in mlps]
            return lambda: [linear_as(xs[k], w) for k, w in ws]
        _FASTEST[key] = _fastest({dt: step(dt) for dt in (None, *others)}, weight.device)
    return _FASTEST[key]


@dataclass
class _Row:
    """A (prompt, sample) being decoded in a cache slot."""

    prompt: int
    sample: int
    length: int  # tokens in its cache slot: the prompt plus the tokens fed back so far
    completion: Completion = field(default_factory=Completion)


class Generator:
    """Holds a model, its tokenizer and the (optionally compiled) decode step.

    matmul_dtype: precision of the weight matmuls while generating. "model": the weights as they
    are (exact); "auto": whichever of the weights, bfloat16 copies and int8 quantizations measures
    fastest for the rows at hand (per prefill and per decode batch size); or one of them, always
    (a dtype name, or "int8"). A bf16 copy costs 2 bytes per parameter of memory, an int8 one 1
    byte; copies stay cached on the model. Their results are within rounding (bf16: ~3 digits;
    int8: ~1% of a row's largest weight) of the weights', so greedy tokens can differ where two
    candidates are nearly tied. "auto" is measured per process: pin a choice where runs must be
    bit-identical across machines.

    model_id: the checkpoint's identity (weights.model_id; `load_generator` sets it); evaluation
    stores it in every record, so resumed files never mix two models. "" for a model in training.
    """

    def __init__(self, model: Qwen3, tokenizer: Tokenizer, compile: bool = False, batch_size: int = 32,
                 matmul_dtype: str = "model", model_id: str = ""):
        check_matmul_dtype(matmul_dtype)
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.model_id = model_id  # weights.model_id of the checkpoint, stored in every record
        self.matmul_dtype = matmul_dtype
        # On CUDA a compiled step is captured as a CUDA graph ("reduce-overhead"): a small model's
        # decode step is otherwise bound by kernel launches. A graph needs fixed shapes, so there every
        # step attends to the whole cache (masked) instead of its filled prefix.
        cuda = model.device.type == "cuda"
        self._fixed_shape = compile and cuda
        self._compiled = compile
        self._context = 0  # compiled: the cache's positions, the longest context a call has needed (see _run)
        if compile:
            # Graphs: one per batch width on CUDA (fixed shapes: log2(batch_size) + 1 of them); on CPU a
            # few (a static first, then sizes and kv_len made dynamic, width 1 apart), each per sampling
            # mode (greedy, plain, top-k, top-p). Dynamo's default limit of 8 would end a run (fullgraph=True
            # makes the limit an error) where every graph is legitimate. dynamic=True from the start
            # measured slower on CPU than letting dynamo mark what changes (92 s against 70 s, toy SC@16).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._decode = (torch.compile(self._decode_step, fullgraph=True, dynamic=None,
                                      mode="reduce-overhead" if cuda else None)
                        if compile else self._decode_step)
        self._active: torch.dtype | None = None  # the matmul dtype the model is set to (None: its own)
        self._rows: int | None = None  # the row count that dtype was chosen for

    def _decode_step(self, tok: Tensor, pos: Tensor, kv_len: int | None, seeds: Tensor, counters: Tensor,
                     mode: tuple[bool, int, bool], values: tuple[Tensor, Tensor]
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One decode step of cache rows 0..B-1 with its sampling: tok and pos (B, 1), seeds and counters
        (B,); mode (greedy, top_k, nucleus) and values (temperature, top_p), 0-d tensors, as _sample
        takes them. Returns sample_tokens' (tokens, logprobs, short) and the (B, V) logits (for short rows)."""
        logits = self.model(tok, pos, kv_len=kv_len)[:, -1]
        return (*_sample(logits, seeds, counters, *mode, *values), logits)

    def _use_matmul_dtype(self, rows: int) -> None:
        """Set the model's matmul dtype for a forward pass over `rows` rows (decided again only when
        the row count changes: decode steps of one batch width share one decision)."""
        if rows == self._rows:
            return
        self._rows = rows
        if self.matmul_dtype == "model":
            dtype = None
        elif self.matmul_dtype == "auto":
            dtype = fastest_matmul_dtype(self.model, rows)
        else:
            dtype = MATMUL_WEIGHTS[self.matmul_dtype]
        if dtype != self._active:
            self.model.set_matmul_dtype(dtype)
            self._active = dtype

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int] | str], sampling: SamplingConfig = SamplingConfig(),
                 n: int = 1, seeds: Sequence[int] | None = None,
                 stream: StreamFn | None = None) -> list[list[Completion]]:
        """n completions for each prompt (token ids or text), in prompt order. A prompt whose tokens and
        `max_new_tokens` exceed the model's context gets n empty completions with finish_reason "context".

        seeds[i] seeds prompt i's samples (default: i); greedy decoding ignores seeds.
        """
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        if any(len(p) == 0 for p in ids):
            raise ValueError("empty prompt: every prompt needs at least one token")
        seeds = list(range(len(ids))) if seeds is None else list(seeds)
        if len(seeds) != len(ids):
            raise ValueError(f"{len(seeds)} seeds for {len(ids)} prompts")
        out: list[list[Completion]] = [[] for _ in ids]
        # A prompt that cannot fit the context is answered "context" (empty), not a stopped run: one
        # over-long problem must not end an evaluation of hundreds.
        room = self.model.config.max_position_embeddings - sampling.max_new_tokens
        if room < 1:  # no prompt fits: a setting to fix, not a problem to record
            raise ValueError(f"max_new_tokens ({sampling.max_new_tokens}) exceeds the model's context of "
                             f"{self.model.config.max_position_embeddings}; lower it")
        for i in (i for i, p in enumerate(ids) if len(p) > room):
            out[i] = [Completion(finish_reason="context") for _ in range(n)]
        # Shortest prompts first: prompts admitted together are prefilled together, and similar
        # lengths waste little on padding.
        order = sorted((i for i, p in enumerate(ids) if len(p) <= room), key=lambda i: len(ids[i]))
        if not order:
            return out
        try:
            done = self._run(ids, deque((i, j) for i in order for j in range(n)), sampling, seeds, stream)
        finally:  # training between generations must see the weights themselves
            self.model.set_matmul_dtype(None)
            self._active = self._rows = None
        for (i, j), c in sorted(done.items()):
            out[i].append(c)
        return out

    def _run(self, ids: list[list[int]], queue: deque[tuple[int, int]], cfg: SamplingConfig,
             seeds: list[int], stream: StreamFn | None) -> dict[tuple[int, int], Completion]:
        """Continuous batching: every (prompt, sample) of `queue` decoded in the cache's slots, a
        finished row's slot taking the next waiting one. Returns the completion of each."""
        model, device = self.model, self.model.device
        capacity = min(self.batch_size, len(queue))
        longest = max(len(ids[i]) for i, _ in queue) + cfg.max_new_tokens
        context = min(-(-longest // 64) * 64, model.config.max_position_embeddings)  # nearby lengths: one shape
        if self._compiled:
            # One cache shape across calls: all the generator's slots and the longest context any call has
            # needed, so the compiled step sees the same cache tensors whatever the call (a call with fewer
            # rows uses the first slots). Eager steps let a call reshape the storage, e.g. to one long row.
            self._context = context = max(self._context, context)
        model.setup_caches(self.batch_size if self._compiled else capacity, context)
        stop_ids = set(self.tokenizer.stop_ids)
        max_stop = max((len(s) for s in cfg.stop_strings), default=0)
        done: dict[tuple[int, int], Completion] = {}
        rows: dict[int, _Row] = {}  # slot -> the sequence it holds
        free = list(range(capacity))  # free slots; the lowest is taken first, keeping the batch a prefix
        # What moves with a row when the batch is compacted, per slot: the token it feeds next, the
        # position that goes to, its row's sample seed and the number of tokens its row has sampled
        # (the draw counter).
        # Sized for all the generator's slots, like the cache, whatever this call uses: the decode step's
        # inputs are views of it, and a compiled step is guarded on their storage offsets too.
        slot_state = torch.zeros(4, self.batch_size, dtype=torch.long, device=device)
        tok, pos, seed, count = slot_state[0, :, None], slot_state[1, :, None], slot_state[2], slot_state[3]
        new = torch.zeros(self.batch_size, dtype=torch.long, device=device)  # each slot's token of this step
        new_lp = torch.zeros(self.batch_size, device=device)  # ... and its log-probability
        mode = (cfg.greedy, cfg.top_k, cfg.top_p < 1)  # what the step computes, and with which values:
        values = (torch.tensor(cfg.temperature, device=device), torch.tensor(cfg.top_p, device=device))
        width = 0  # slots 0..width-1 form the decode batch
        while rows or queue:
            if rows:  # one decode step (with its sampling) for the rows holding a sampled token
                self._use_matmul_dtype(width)
                kv_len = None if self._fixed_shape else max(r.length for r in rows.values())
                step = self._decode(tok[:width], pos[:width], kv_len, seed[:width], count[:width], mode, values)
                new[:width], new_lp[:width] = self._take(step, cfg, seed[:width], count[:width])
            if queue and free:
                self._admit(ids, queue, free, rows, slot_state, new, new_lp, seeds, cfg)
                width = max(rows) + 1
            live = sorted(rows)
            live_t = torch.tensor(live, device=device)
            tok[live_t, 0] = new[live_t]
            pos[live_t, 0] += 1  # each sampled token goes one position after the last: its row's length
            count[live_t] += 1
            for s, t, logp in zip(live, new[live_t].tolist(), new_lp[live_t].tolist()):
                r = rows[s]
                c = r.completion
                c.tokens.append(t)
                c.logprobs.append(logp)
                r.length += 1
                if stream is not None:
                    stream(r.prompt, r.sample, t)
                if t in stop_ids or (max_stop and self._hit_stop_string(c, cfg, max_stop)):
                    c.finish_reason = "stop"
                elif len(c.tokens) < cfg.max_new_tokens:
                    continue
                c.text = self._text(c, cfg)
                done[r.prompt, r.sample] = c
                del rows[s]
                free.append(s)
                pos[s, 0] = 0  # a free slot rides along at position 0: finite, and overwritten on reuse
            free.sort()
            if rows and not queue and len(rows) <= width // 2:
                width = self._compact(rows, free, slot_state)  # nothing waits: let the batch shrink
        return done

    @staticmethod
    def _take(step: tuple[Tensor, Tensor, Tensor, Tensor], cfg: SamplingConfig, seeds: Tensor,
              counters: Tensor) -> tuple[Tensor, Tensor]:
        """A sampling step's (tokens, log-probs), its short rows drawn again over the whole vocabulary
        (sample_full; only top_p alone can leave any). Runs outside the compiled step."""
        tokens, logp, short, logits = step
        if cfg.top_p < 1 and not cfg.top_k and bool(short.any()):
            idx = short.nonzero()[:, 0]
            tokens, logp = tokens.clone(), logp.clone()  # a CUDA graph's outputs are its own buffers
            tokens[idx] = sample_full(logits[idx], cfg, seeds[idx], counters[idx])
            logp[idx] = torch.log_softmax(logits[idx], -1).gather(-1, tokens[idx, None])[:, 0]
        return tokens, logp

    def _admit(self, ids: list[list[int]], queue: deque[tuple[int, int]], free: list[int],
               rows: dict[int, _Row], slot_state: Tensor, new: Tensor, new_lp: Tensor, seeds: list[int],
               cfg: SamplingConfig) -> None:
        """Take waiting (prompt, sample)s into the free slots: each prompt is prefilled once, into its
        first slot (prompts right-padded together), and its other samples' slots get a copy of that
        prefix. Each new slot's first token is sampled from its prompt's last logits into `new`/`new_lp`;
        its `slot_state` (see _run) gets its prompt's last position (the first sampled token goes after
        it), its row's sample seed and a draw counter of 0."""
        model, device = self.model, self.model.device
        groups: dict[int, list[int]] = {}  # prompt -> its newly taken slots
        while queue and free:
            i, j = queue.popleft()
            s = free.pop(0)
            groups.setdefault(i, []).append(s)
            rows[s] = _Row(i, j, len(ids[i]))
        prompts = list(groups)
        L = max(len(ids[i]) for i in prompts)
        idx = torch.full((len(prompts), L), self.tokenizer.pad_id, dtype=torch.long)
        for r, i in enumerate(prompts):
            idx[r, :len(ids[i])] = torch.tensor(ids[i])
        first = torch.tensor([groups[i][0] for i in prompts], device=device)
        last = torch.tensor([len(ids[i]) - 1 for i in prompts], device=device)
        self._use_matmul_dtype(len(prompts) * L)
        fresh = model(idx.to(device), torch.arange(L, device=device), slots=first, kv_len=L, logits_at=last)[:, 0]
        src = [groups[i][0] for i in prompts for _ in groups[i][1:]]
        dst = [s for i in prompts for s in groups[i][1:]]
        if dst:
            for cache in model.kv_caches():
                cache.copy_rows(torch.tensor(src, device=device), torch.tensor(dst, device=device), L)
        taken = [s for i in prompts for s in groups[i]]
        slots = torch.tensor(taken, device=device)
        _, pos, seed, count = slot_state
        pos[slots] = torch.tensor([len(ids[rows[s].prompt]) - 1 for s in taken], device=device)
        seed[slots] = torch.tensor([sample_seed(seeds[rows[s].prompt], rows[s].sample) for s in taken],
                                   device=device)
        count[slots] = 0
        # each new slot samples from its prompt's fresh logits
        logits = fresh[torch.tensor([r for r, i in enumerate(prompts) for _ in groups[i]], device=device)]
        step = (*sample_tokens(logits, cfg, seed[slots], count[slots]), logits)
        new[slots], new_lp[slots] = self._take(step, cfg, seed[slots], count[slots])

    def _compact(self, rows: dict[int, _Row], free: list[int], slot_state: Tensor) -> int:
        """Move the live rows into slots 0..k-1 (their cache prefixes and per-slot state copied in
        place) so the decode batch shrinks to k rows. Returns k."""
        device = self.model.device
        live = sorted(rows)
        k = len(live)
        moving = [(s, d) for d, s in enumerate(live) if s != d]
        if moving:
            src = torch.tensor([s for s, _ in moving], device=device)
            dst = torch.tensor([d for _, d in moving], device=device)
            length = max(rows[s].length for s, _ in moving)
            for cache in self.model.kv_caches():
                cache.copy_rows(src, dst, length)
            slot_state[:, dst] = slot_state[:, src]
            for s, d in moving:
                rows[d] = rows.pop(s)
        free[:] = [s for s in range(slot_state.shape[1]) if s not in rows]
        slot_state[1, k:] = 0  # free slots ride along at position 0
        return k

    def _hit_stop_string(self, c: Completion, cfg: SamplingConfig, max_stop: int) -> bool:
        tail = self.tokenizer.decode(c.tokens[-(max_stop + 8):])
        return any(s in tail for s in cfg.stop_strings)

    def _text(self, c: Completion, cfg: SamplingConfig) -> str:
        toks = c.tokens[:-1] if c.tokens and c.tokens[-1] in self.tokenizer.stop_ids else c.tokens
        text = self.tokenizer.decode(toks)
        for s in cfg.stop_strings:
            if s in text:
                text = text[:text.index(s)]
        return text


class TextStream:
    """Incremental decoding for printing tokens as they come: `push` each token id, write what it
    returns; `flush` at the end. The printed pieces join to `tokenizer.decode` of the ids pushed
    (those in `skip` left out).

    A token can end inside a multi-byte character (byte-level BPE splits UTF-8 anywhere); such text
    decodes with a trailing U+FFFD and is held back until the rest arrives, or until `flush` (a
    generation cut off mid-character). Each push decodes only the ids since the last piece written,
    with the piece before it as context, so streaming stays linear in the output's length.
    """

    def __init__(self, tokenizer: Tokenizer, skip: Sequence[int] = ()):
        self.tokenizer, self.skip = tokenizer, frozenset(skip)
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to the last piece written: context for the next
        self._read = 0  # ids before this index have been written

    def push(self, token: int) -> str:
        if token not in self.skip:
            self.ids.append(token)
        seen = self.tokenizer.decode(self.ids[self._prefix:self._read])
        text = self.tokenizer.decode(self.ids[self._prefix:])
        if len(text) <= len(seen) or text.endswith("\ufffd"):  # nothing new, or a character still cut
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(seen):]

    def flush(self) -> str:
        """What is held back (a cut multi-byte character, as U+FFFD); the stream then starts afresh."""
        seen = self.tokenizer.decode(self.ids[self._prefix:self._read])
        text = self.tokenizer.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(seen):]


class GenerationSettings(Protocol):
    """The fields every generating config (evaluation, scaling, engine teacher) shares."""

    device: str
    dtype: str
    compile: bool
    batch_size: int
    matmul_dtype: str


def hf_generation_config(tokenizer: Tokenizer, sampling: SamplingConfig | None = None) -> dict[str, Any]:
    """generation_config.json for a model run with `tokenizer`: stop where our engine stops
    (`Tokenizer.generation_token_ids`) and sample with `sampling`'s settings as transformers names them
    (greedy: do_sample false; top_k and top_p only when on)."""
    cfg = tokenizer.generation_token_ids()
    if sampling is not None:
        cfg["do_sample"] = not sampling.greedy
        if not sampling.greedy:
            cfg["temperature"] = sampling.temperature
            if sampling.top_k:
                cfg["top_k"] = sampling.top_k
            if sampling.top_p < 1:
                cfg["top_p"] = sampling.top_p
    return cfg


def load_generator(source: str | Path, settings: GenerationSettings, setting: str = "--model") -> Generator:
    """A `Generator` for the checkpoint `source` (a directory or hf:<repo>[@<revision>]) on the
    settings' device and dtype, with its tokenizer and its `model_id` (the weights' content hash).

    The one way every stage and engine teacher loads a model to generate with; `setting` names where
    `source` came from, for the message of a failed download."""
    ckpt = resolve(str(source), setting=setting)
    device, dtype = resolve_device(settings.device, settings.dtype)
    device = rank_device(device)  # torchrun: one GPU per process
    return Generator(load_model(ckpt, dtype, device), Tokenizer(ckpt), compile=settings.compile,
                     batch_size=settings.batch_size, matmul_dtype=settings.matmul_dtype, model_id=model_id(ckpt))


def add_engine_flags(ap: argparse.ArgumentParser) -> None:
    """The flags of a command-line tool that loads one model to generate with (the generate and chat
    CLIs): --dtype, --device, --compile, --matmul-dtype; `load_for_cli` reads them."""
    ap.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                    help="weights' dtype (auto: bfloat16 on CUDA, else the checkpoint's own)")
    ap.add_argument("--device", default=default_device(),
                    help="cpu, cuda[:N] or mps (default: CUDA, then Apple-silicon MPS, then the CPU)")
    ap.add_argument("--compile", action="store_true", help="compile the decode step with torch.compile")
    ap.add_argument("--matmul-dtype", choices=MATMUL_DTYPES, default="auto",
                    help="precision of the weight matmuls (auto: the fastest of the weights' dtype, bfloat16 and "
                         "int8 copies, measured on this machine; model: the weights as loaded)")


def load_for_cli(args: argparse.Namespace) -> tuple[Tokenizer, Qwen3]:
    """(tokenizer, model) of `args.model` (a directory or hub id) as `add_engine_flags`' flags say."""
    ckpt = resolve(args.model)
    dtype = checkpoint_dtype(ckpt, args.device) if args.dtype == "auto" else DTYPES[args.dtype]
    return Tokenizer(ckpt), load_model(ckpt, dtype, args.device)


def main(argv: Sequence[str] | None = None) -> None:
    from .prompts import PromptConfig, render

    ap = argparse.ArgumentParser(
        prog="python -m reasoning.generate",
        description="Generate a completion with the from-scratch Qwen3 engine and print its speed (decode "
                    "time only: one-off set-up such as the matmul-dtype measurement and compilation is "
                    "reported apart) and the process's peak memory.")
    ap.add_argument("--model", required=True, help="checkpoint directory, or a hub id such as hf:Qwen/Qwen3-0.6B")
    ap.add_argument("--prompt", required=True, help="the prompt text (or the user message with --chat)")
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--think", action="store_true", help="with --chat: let the model think in <think> first")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    add_engine_flags(ap)
    args = ap.parse_args(argv)

    tok, model = load_for_cli(args)
    text = args.prompt
    if args.chat:
        text = render(args.prompt, PromptConfig(template="chat", think=args.think), tok.chat_template)
    gen = Generator(model, tok, compile=args.compile, batch_size=1, matmul_dtype=args.matmul_dtype)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p)

    # One-off set-up, timed apart: the matmul-dtype measurement for this prompt's prefill and for
    # decoding, and (with --compile) the compilation, by a two-token warm-up.
    t0 = time.perf_counter()
    if args.matmul_dtype == "auto":
        fastest_matmul_dtype(model, len(tok.encode(text)))
        fastest_matmul_dtype(model, 1)
    if args.compile:
        gen.generate([text], SamplingConfig(max_new_tokens=2))
    setup = time.perf_counter() - t0

    text_stream = TextStream(tok, skip=tok.stop_ids)

    def stream(_p: int, _s: int, t: int) -> None:  # print text as it is produced
        sys.stdout.write(text_stream.push(t))
        sys.stdout.flush()

    t0 = time.perf_counter()
    [[c]] = gen.generate([text], sampling, seeds=[args.seed], stream=stream)
    dt = time.perf_counter() - t0
    sys.stdout.write(text_stream.flush())  # what a cut-off multi-byte character held back
    sys.stdout.flush()
    print(f"\n\n[{len(c.tokens)} tokens in {dt:.2f}s: {len(c.tokens) / dt:.1f} tok/s, "
          f"finish={c.finish_reason}, prompt {len(tok.encode(text))} tokens; set-up {setup:.2f}s apart; "
          f"peak memory {peak_memory_bytes(args.device) / 2**20:.0f} MiB]", file=sys.stderr)


if __name__ == "__main__":
    main()
