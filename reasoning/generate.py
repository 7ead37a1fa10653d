"""Batched, KV-cached generation: prefill + decode on the static cache, with per-row sampling.

Design choices:
- Prompts of different lengths are sorted by length, left-padded and prefilled together;
  n samples of one prompt share its prefill (the cache rows are repeated after prefill).
- Each (prompt, sample) row draws its randomness from its own seeded `torch.Generator` by
  inverse-CDF sampling, so the same seed gives the same sample whatever else is in the batch.
- Finished rows (stop token or stop string) leave the batch: when the live rows fall to half
  the batch, the caches are compacted, so finished rows stop costing compute while the batch
  size (and so the compiled graph) changes only log2(B) times.
- Only the decode step is compiled (`compile=True`); prefill runs eagerly with large matmuls.
  Each step attends to the filled part of the static cache only (`kv_len`); under compile that
  length becomes a dynamic dimension after the first steps, so the graph is not rebuilt per token.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .devices import DTYPES, checkpoint_dtype, peak_memory_bytes, resolve_device
from .model import Qwen3
from .seeds import sample_seed
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


NUCLEUS_PREFIX = 1024  # top_p alone looks for the nucleus among this many best tokens first


def sample_rows(logits: Tensor, cfg: SamplingConfig, generators: Sequence[torch.Generator]) -> Tensor:
    """One token per row from (B, V) fp32 logits; row b's randomness comes from generators[b].

    Filters work on the best candidates only (`topk`), not on a sort of the whole vocabulary:
    top_k keeps k of them; top_p alone takes the NUCLEUS_PREFIX best, which hold the nucleus
    whenever their mass reaches top_p (exact), and sorts the full vocabulary only otherwise.
    """
    if cfg.greedy:
        return logits.argmax(-1)
    # one uniform in (0, 1] per row: inverse-CDF sampling then never picks a zero-probability token
    u = 1 - torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    logits = logits / cfg.temperature
    V = logits.shape[-1]
    ids = None  # candidate token ids, best first (None: the whole vocabulary, in id order)
    if cfg.top_k or cfg.top_p < 1:
        vals, ids = logits.topk(min(cfg.top_k or NUCLEUS_PREFIX, V), dim=-1)
        # top_k renormalises over its k tokens; top_p alone needs the full distribution's mass
        probs = vals.softmax(-1) if cfg.top_k else (vals - logits.logsumexp(-1, keepdim=True)).exp()
        if cfg.top_p < 1:
            mass = probs.cumsum(-1)
            if not cfg.top_k and bool((mass[:, -1] < cfg.top_p).any()):
                vals, ids = logits.sort(-1, descending=True)
                probs = vals.softmax(-1)
                mass = probs.cumsum(-1)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            probs = probs.masked_fill(mass - probs >= cfg.top_p, 0.0)
    else:
        probs = logits.softmax(-1)
    cdf = probs.cumsum(-1)  # CPU accumulates fp32 cumsums in double
    target = u.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    pick = torch.searchsorted(cdf, target).clamp(max=cdf.shape[-1] - 1)  # first index with cdf >= target
    return (pick if ids is None else ids.gather(-1, pick))[:, 0]


MATMUL_DTYPES = ("model", "auto", *DTYPES)

_FASTEST: dict[tuple, torch.dtype | None] = {}  # auto's measurements, shared by the process's generators


def _fastest(candidates: dict, device: torch.device, reps: int = 5):
    """The key of the fastest of `candidates` (callables). They run interleaved and each scores
    its best time, so a burst of load from other processes cannot favour one of them."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in candidates.values():
        fn()  # warm-up: the first call of a shape builds its kernel
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(reps):
        for key, fn in candidates.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[key] = min(best[key], time.perf_counter() - t0)
    return min(best, key=best.__getitem__)  # ties go to the first


def fastest_matmul_dtype(model: Qwen3, rows: int,
                         candidate: torch.dtype = torch.bfloat16) -> torch.dtype | None:
    """`candidate`, or None (the weights' own dtype), whichever multiplies `rows` rows by the
    model's weights faster; measured once per (device, shapes, dtypes, row bucket).

    Timed on the MLP weights of the first blocks, at least 64 MB of them so that they do not sit
    in the CPU's cache: a decode step streams every weight from memory.
    """
    weight = model.layers[0].mlp.gate_proj.weight
    if weight.dtype == candidate:
        return None
    bucket = min(1 << (rows - 1).bit_length(), 256)  # from ~256 rows on, matmuls are compute-bound
    key = (weight.device, tuple(weight.shape), len(model.layers), weight.dtype, candidate, bucket)
    if key not in _FASTEST:
        mlps = [m for layer in model.layers for m in (layer.mlp.gate_proj, layer.mlp.up_proj,
                                                     layer.mlp.down_proj)]
        per = weight.numel() * weight.element_size()
        mlps = mlps[:max(1, -(-(64 << 20) // per))]

        def step(dt: torch.dtype) -> Callable[[], object]:
            ws = [m.weight_as(dt) for m in mlps]
            xs = {w.shape[1]: torch.randn(bucket, w.shape[1], dtype=dt, device=weight.device) for w in ws}
            return lambda: [F.linear(xs[w.shape[1]], w) for w in ws]
        _FASTEST[key] = _fastest({None: step(weight.dtype), candidate: step(candidate)}, weight.device)
    return _FASTEST[key]


class Generator:
    """Holds a model, its tokenizer and the (optionally compiled) decode step.

    matmul_dtype: precision of the weight matmuls while generating. "model": the weights as they
    are (exact); "auto": bfloat16 copies wherever they measure faster for the rows at hand (per
    prefill and per decode batch size); or a dtype name, always. The copies cost 2 bytes per
    parameter of memory and stay cached on the model; their results are within bf16 rounding of
    fp32, so greedy tokens can differ where two candidates are nearly tied. "auto" is measured
    per process: pin a dtype where runs must be bit-identical across machines.

    model_id: the checkpoint's identity (weights.model_id; `load_generator` sets it); evaluation
    stores it in every record, so resumed files never mix two models. "" for a model in training.
    """

    def __init__(self, model: Qwen3, tokenizer: Tokenizer, compile: bool = False, batch_size: int = 32,
                 matmul_dtype: str = "model", model_id: str = ""):
        if matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"matmul_dtype {matmul_dtype!r} is not one of {MATMUL_DTYPES}")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.model_id = model_id  # weights.model_id of the checkpoint, stored in every record
        self.matmul_dtype = matmul_dtype
        self._decode = torch.compile(self._decode_step, fullgraph=True) if compile else self._decode_step
        self._active: torch.dtype | None = None  # the matmul dtype the model is set to (None: its own)

    def _decode_step(self, cur: Tensor, input_pos: Tensor, pad: Tensor, kv_len: int) -> Tensor:
        return self.model(cur, input_pos, pad, kv_len=kv_len)[:, -1]

    def _use_matmul_dtype(self, rows: int) -> None:
        """Set the model's matmul dtype for a forward pass over `rows` rows."""
        if self.matmul_dtype == "model":
            dtype = None
        elif self.matmul_dtype == "auto":
            dtype = fastest_matmul_dtype(self.model, rows)
        else:
            dtype = DTYPES[self.matmul_dtype]
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
        order = sorted((i for i, p in enumerate(ids) if len(p) <= room), key=lambda i: len(ids[i]))
        per_batch = max(1, self.batch_size // n)
        try:
            for start in range(0, len(order), per_batch):
                chunk = order[start:start + per_batch]
                results = self._generate_batch([ids[i] for i in chunk], sampling, n,
                                               [seeds[i] for i in chunk], stream, chunk)
                for i, comps in zip(chunk, results):
                    out[i] = comps
        finally:  # training between generations must see the weights themselves
            self.model.set_matmul_dtype(None)
            self._active = None
        return out

    def _generate_batch(self, prompts: list[list[int]], cfg: SamplingConfig, n: int, seeds: list[int],
                        stream: StreamFn | None, prompt_index: list[int]) -> list[list[Completion]]:
        model, device = self.model, self.model.device
        P, L = len(prompts), max(len(p) for p in prompts)
        B = P * n
        max_len = L + cfg.max_new_tokens
        if max_len > model.config.max_position_embeddings:
            raise ValueError(f"prompt ({L} tokens) + max_new_tokens ({cfg.max_new_tokens}) exceeds the model's "
                             f"context of {model.config.max_position_embeddings}")
        model.setup_caches(B, -(-max_len // 64) * 64)  # round up so nearby lengths reuse one cache shape
        idx = torch.full((P, L), self.tokenizer.pad_id, dtype=torch.long)
        pad = torch.tensor([L - len(p) for p in prompts], dtype=torch.long)
        for r, p in enumerate(prompts):
            idx[r, L - len(p):] = torch.tensor(p)
        idx, pad = idx.to(device), pad.to(device)

        # Prefill the P prompts once into the first P cache rows, then give each its n rows.
        for c in model.kv_caches():
            c.select_rows(torch.arange(P, device=device))
        self._use_matmul_dtype(P * L)
        logits = model(idx, torch.arange(L, device=device), pad, last_only=True, kv_len=L)[:, -1]
        if n > 1:
            for c in model.kv_caches():
                c.repeat_rows(n)
            logits, pad = logits.repeat_interleave(n, 0), pad.repeat_interleave(n)

        comps = [Completion() for _ in range(B)]
        gens = [torch.Generator().manual_seed(sample_seed(seeds[r // n], r % n)) for r in range(B)]
        stop_ids = set(self.tokenizer.stop_ids)
        max_stop = max((len(s) for s in cfg.stop_strings), default=0)
        rows = list(range(B))  # global row held by each cache row
        done = [False] * B  # per cache row
        self._use_matmul_dtype(B)
        for step in range(cfg.max_new_tokens):
            live = [j for j in range(len(rows)) if not done[j]]
            if len(live) < len(rows):  # finished rows ride along until the next compaction
                live_t = torch.tensor(live, device=device)
                new = sample_rows(logits[live_t], cfg, [gens[rows[j]] for j in live])
                lp = torch.log_softmax(logits[live_t], -1).gather(-1, new[:, None])[:, 0]
                tok = torch.full((len(rows),), self.tokenizer.pad_id, dtype=torch.long, device=device)
                tok[live_t] = new
            else:
                new = tok = sample_rows(logits, cfg, [gens[r] for r in rows])
                lp = torch.log_softmax(logits, -1).gather(-1, new[:, None])[:, 0]
            for j, t, logp in zip(live, new.tolist(), lp.tolist()):
                r = rows[j]
                c = comps[r]
                c.tokens.append(t)
                c.logprobs.append(logp)
                if stream is not None:
                    stream(prompt_index[r // n], r % n, t)
                if t in stop_ids or (max_stop and self._hit_stop_string(c, cfg, max_stop)):
                    c.finish_reason = "stop"
                    done[j] = True
            live = [j for j in live if not done[j]]
            if not live or step == cfg.max_new_tokens - 1:
                break
            if len(live) <= len(rows) // 2:  # compact: finished rows stop costing compute
                keep = torch.tensor(live, device=device)
                for c in model.kv_caches():
                    c.select_rows(keep)
                pad, tok = pad[keep], tok[keep]
                rows, done = [rows[j] for j in live], [False] * len(live)
                self._use_matmul_dtype(len(rows))
            logits = self._decode(tok[:, None], torch.tensor([L + step], device=device), pad, L + step + 1)
        for c in comps:
            c.text = self._text(c, cfg)
        return [comps[p * n:(p + 1) * n] for p in range(P)]

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


class GenerationSettings(Protocol):
    """The fields every generating config (evaluation, scaling, engine teacher) shares."""

    device: str
    dtype: str
    compile: bool
    batch_size: int


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
    return Generator(load_model(ckpt, dtype, device), Tokenizer(ckpt), compile=settings.compile,
                     batch_size=settings.batch_size, model_id=model_id(ckpt))


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
    ap.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                    help="weights' dtype (auto: bfloat16 on CUDA, else the checkpoint's own)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="compile the decode step with torch.compile")
    ap.add_argument("--matmul-dtype", choices=MATMUL_DTYPES, default="auto",
                    help="precision of the weight matmuls (auto: the faster of the weights' dtype and "
                         "bfloat16, measured)")
    args = ap.parse_args(argv)

    ckpt = resolve(args.model)
    tok = Tokenizer(ckpt)
    dtype = checkpoint_dtype(ckpt, args.device) if args.dtype == "auto" else DTYPES[args.dtype]
    model = load_model(ckpt, dtype, args.device)
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

    emitted: list[int] = []
    shown = ""

    def visible() -> str:
        return tok.decode([x for x in emitted if x not in tok.stop_ids])

    def stream(_p: int, _s: int, t: int) -> None:  # print text as it is produced
        nonlocal shown
        emitted.append(t)
        now = visible()
        if not now.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(now[len(shown):])
            sys.stdout.flush()
            shown = now

    t0 = time.perf_counter()
    [[c]] = gen.generate([text], sampling, seeds=[args.seed], stream=stream)
    dt = time.perf_counter() - t0
    sys.stdout.write(visible()[len(shown):])  # what a cut-off multi-byte character held back
    sys.stdout.flush()
    print(f"\n\n[{len(c.tokens)} tokens in {dt:.2f}s: {len(c.tokens) / dt:.1f} tok/s, "
          f"finish={c.finish_reason}, prompt {len(tok.encode(text))} tokens; set-up {setup:.2f}s apart; "
          f"peak memory {peak_memory_bytes(args.device) / 2**20:.0f} MiB]", file=sys.stderr)


if __name__ == "__main__":
    main()
