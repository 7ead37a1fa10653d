"""Bench: generation throughput on a MATH-500-shaped workload, continuous batching against batches
that only shrink (ours before continuous batching, and the book's `qwen3_batched`).

The workload, identical in every engine:
- prompts: the real MATH-500 prompt lengths (the book's base prompt, `reasoning.prompts.render`,
  around each problem, in Qwen3 tokens), read from --math500 FILE with --tokenizer, else from the
  table MATH500_PROMPT_TOKENS below; a seeded sample of --prompts of them. The token ids are random
  (random weights make any ids equally good), never the pad or the stop id.
- answers: each row's length is drawn once, seeded, from a heavy tail like a base model's: a share
  LIMIT_SHARE runs to max_new_tokens (a base model that loops), the others are lognormal with median
  ANSWER_MEDIAN and log-sd ANSWER_SIGMA, clipped to [1, max_new_tokens]: median 52 whatever the
  limit; at 256 tokens a mean of 79 (the book's base model averages ~80 on MATH-500), p90 227, 9%
  at the limit; at 128 tokens a mean of 63, 19% at the limit.
  Decoding is greedy and every engine is made to emit its stop token exactly at the drawn length,
  by bench-only hooks (below); the bench checks every row's token count and where it stopped, and
  prints no figure for an engine that missed one.
- models: Qwen3-0.6B's shape and the toy world's (`reasoning.toy.pretrain.ToyBaseConfig`, its
  context widened to fit the prompts), random weights, every engine in one dtype (--dtype), on one
  device (--device: cpu, or cuda where the timings wait for the GPU and the peak memory is
  `torch.cuda.max_memory_allocated`). With --compile every engine runs compiled (ours with
  `compile=True`, the book's model under `torch.compile` as its own recipe does) and the whole
  workload runs twice, the second time timed: compilations of shapes first met mid-run stay out.
  Defaults: Qwen3-0.6B 32 prompts in 8 slots up to 128 tokens (a subset sized for a CPU: about 10
  minutes for everything on 2 cores), the toy 500 prompts in 64 slots up to 256 tokens (~8 prompts
  per slot, as MATH-500 at the real configuration's evaluation batch of 64). Continuous batching gains
  more the more prompts wait per slot: the last rows admitted run on with the batch emptying.

Engines, one subprocess each:
- ours[continuous]: one `Generator.generate` over all prompts with batch_size B: a finished row's
  slot takes the next waiting prompt.
- ours[static]: the same `Generator` called once per chunk of B prompts (all prompts sorted shortest
  first, then cut into chunks, as the engine batched before continuous batching): finished rows
  leave and nothing takes their place.
- book[batched]: the book's `generate_text_basic_batched_cache_stop` (what its batched MATH-500
  evaluation runs by default: finished rows leave the batch), on the same chunks, left-padded with
  an attention mask; its model as its constructor builds it (a separate output head).

How the lengths are forced: ours keeps each row's sample seed (`sample_seed(seed of the prompt, 0)`)
and draw counter (tokens sampled so far) beside the tokens each step samples, and stores them
(outside the compiled step) through `Generator._take`; a wrapper around that method names each row
by its seed and emits the stop token at the row's drawn length (and never elsewhere). The book's loop takes
argmax of the model's last logits and drops a row from its batch after its EOS: a wrapper around the
model mirrors that list of surviving rows (and fails if the batch it receives does not match it),
puts +inf on EOS for a row at its drawn length and -inf for the others.

Figures per engine: generated tokens / wall time of the whole generation (prefill included; model
building and a small warm-up excluded), the wall time, the peak resident memory of its process
(building excluded where Linux allows), and rows per step (tokens / rounds, a round being a forward
pass that produced tokens: a decode step or a prefill; how full the batch stayed); then
continuous/static and continuous/book. The machine may be shared: the load
average is printed before and after, and only ratios from one run count.

The book's package is a bench-only dependency, installed without its dependencies:
    pip install --no-deps --target /tmp/rfs reasoning-from-scratch   # then --book-path /tmp/rfs

    python -m bench.throughput [--quick] [--book-path /tmp/rfs] [--threads 2] [--models qwen3-0.6b,toy]
    python -m bench.throughput --device cuda --dtype bfloat16 --models qwen3-0.6b --prompts 500 --batch-size 128

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from bench.decode import (Budget, add_process_flags, book_config, book_module, book_path, compile_book, now, peak_key,
                          peak_memory_gb, random_book, random_qwen3, reset_peak_memory, run_worker)
from reasoning.model import PRESETS, ModelConfig


# MATH-500's 500 test problems (HuggingFaceH4/MATH-500, file order) rendered with the book's base
# prompt (reasoning.prompts.render, PromptConfig()) and tokenized once by Qwen3-0.6B's own
# tokenizer.json (checked: "Hello, world" -> 9707, 11, 1879): min 40, median 82, mean 102.2, max 822.
MATH500_PROMPT_TOKENS = tuple(int(x) for x in """
79 142 78 45 370 72 50 97 65 180 56 90 102 206 144 210 55 242 181 79 44 60 159 60 134
110 83 112 66 109 55 41 82 79 65 72 61 65 73 58 142 81 71 116 95 68 75 83 50 57
131 53 61 58 44 84 57 85 47 80 81 100 137 120 97 51 69 81 98 87 53 58 65 102 58
69 71 50 100 53 77 80 118 55 87 92 69 55 118 57 74 74 71 74 379 111 139 76 49 128
232 222 47 138 111 346 81 63 117 172 149 83 107 61 107 49 56 51 57 184 84 52 102 280 63
61 105 46 55 87 71 67 78 71 148 101 133 52 112 82 63 91 91 111 81 89 50 79 62 89
255 206 113 118 175 85 225 77 54 82 54 40 82 102 54 106 235 108 698 57 75 80 61 86 63
73 53 282 55 133 51 64 64 124 85 49 65 63 255 491 61 73 70 85 68 80 55 96 60 61
64 105 109 89 118 180 121 62 54 69 234 59 96 100 122 63 84 50 65 731 112 60 168 64 94
67 58 92 147 111 114 95 101 137 94 65 83 77 77 138 257 74 106 69 63 119 93 72 101 72
100 138 57 50 95 87 59 55 103 50 74 72 56 63 276 63 63 210 64 72 98 63 82 106 94
67 55 44 52 206 76 373 159 70 91 188 99 95 150 104 69 81 156 79 89 131 173 125 205 72
56 822 121 109 66 66 81 67 85 55 103 106 57 74 93 71 77 124 61 60 154 85 70 74 305
70 77 118 104 55 68 84 78 97 63 95 51 68 47 98 130 45 58 66 97 65 65 90 44 68
43 108 230 81 51 87 65 96 86 128 258 83 89 52 103 87 67 95 68 188 79 96 277 100 53
64 105 94 48 268 61 78 206 67 57 111 53 57 70 155 113 117 309 113 145 66 253 61 149 52
102 74 72 84 71 62 47 69 96 93 66 112 105 54 70 59 53 89 66 117 89 137 141 88 71
111 173 79 104 69 45 71 109 47 67 66 73 128 61 53 53 85 56 57 211 265 94 74 85 60
68 100 79 94 153 50 75 44 140 110 193 130 136 58 70 54 115 217 64 48 82 86 65 263 88
191 94 70 106 77 92 134 85 82 67 232 71 85 70 96 124 165 116 98 104 83 64 82 90 89
""".split())
ANSWER_MEDIAN, ANSWER_SIGMA, LIMIT_SHARE = 48, 0.9, 0.06  # the answer-length model (module docstring)
WORKLOADS = {  # model -> defaults; --quick's are smaller
    "qwen3-0.6b": {"prompts": 32, "batch_size": 8, "max_new_tokens": 128},
    "toy": {"prompts": 500, "batch_size": 64, "max_new_tokens": 256},
}
QUICK = {
    "qwen3-0.6b": {"prompts": 12, "batch_size": 4, "max_new_tokens": 32},
    "toy": {"prompts": 64, "batch_size": 8, "max_new_tokens": 64},
}
ENGINES = ("ours[continuous]", "ours[static]", "book[batched]")
TARGETS = {"continuous/static": ("ours[static]", 1.5), "continuous/book": ("book[batched]", 2.0)}  # the issue's
PAD = 0  # pad id of every engine; prompts never hold it, and EOS is the vocabulary's last id


# --- the workload ---------------------------------------------------------------------------------

def prompt_lengths(math500: Path | None, tokenizer: Path | None) -> list[int]:
    """Token counts of MATH-500's prompts: tokenized from `math500` (a JSONL file of {"problem": ...}
    records) by `tokenizer` (a tokenizer.json or a checkpoint directory), else the embedded table."""
    if math500 is None:
        return list(MATH500_PROMPT_TOKENS)
    from reasoning.files import read_jsonl
    from reasoning.prompts import render
    from reasoning.tokenizer import Tokenizer

    rows = read_jsonl(math500)
    if not rows:
        raise ValueError(f"--math500 {math500}: missing or empty; pass a JSONL file of MATH-500 records")
    bad = [n for n, r in enumerate(rows, 1) if not isinstance(r, dict) or not isinstance(r.get("problem"), str)]
    if bad:
        raise ValueError(f"--math500 {math500}: record(s) {bad[:5]} lack a 'problem' string; is it MATH-500?")
    if tokenizer is None:
        raise ValueError("--math500 needs --tokenizer (Qwen3's tokenizer.json or a checkpoint directory)")
    return [len(ids) for ids in Tokenizer(tokenizer).encode_batch([render(r["problem"]) for r in rows])]


def answer_lengths(n: int, max_new: int, seed: int) -> list[int]:
    """n answer lengths in [1, max_new] from the base-model tail (module docstring), seeded."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        runaway, x = rng.random() < LIMIT_SHARE, rng.lognormvariate(math.log(ANSWER_MEDIAN), ANSWER_SIGMA)
        out.append(max_new if runaway else min(max_new, max(1, round(x))))
    return out


def describe(xs: Sequence[int], limit: int | None = None) -> dict:
    """mean, median, p90 and max of token counts (and the share at `limit`)."""
    s = sorted(xs)
    out = {"n": len(s), "total": sum(s), "mean": round(statistics.mean(s), 1), "median": statistics.median(s),
           "p90": s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)], "max": s[-1]}
    if limit is not None:
        out["share_at_limit"] = round(sum(x == limit for x in s) / len(s), 3)
    return out


def static_chunks(lengths: Sequence[int], batch: int) -> list[list[int]]:
    """Rows in chunks of `batch`, shortest prompts first (stable): the order the engine used to batch in."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def model_config(name: str, context: int) -> ModelConfig:
    """A preset's shape, or the toy world's ("toy"), with room for `context` positions."""
    if name == "toy":
        from reasoning.toy.pretrain import ToyBaseConfig
        cfg = ToyBaseConfig().model_config()
    else:
        cfg = PRESETS[name]
    return dataclasses.replace(cfg, max_position_embeddings=max(cfg.max_position_embeddings, context))


def prompt_ids(lengths: Sequence[int], vocab: int, seed: int) -> list[list[int]]:
    """Random prompts of the given lengths: ids in [1, vocab - 2] (never PAD, never EOS = vocab - 1)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab - 1, (n,), generator=g).tolist() for n in lengths]


# --- the hooks that force each row's length -------------------------------------------------------

@contextlib.contextmanager
def forced_ours(targets: Sequence[int], max_new: int, eos: int) -> Iterator[dict]:
    """While open, our engine's row seeded with seeds[i] (sample_seed(i, 0)) emits `eos` as its
    targets[i]-th token unless that is max_new (then it runs to the limit), and never elsewhere.
    Yields {"rounds": forward passes that produced tokens (decode steps and prefills)}."""
    from reasoning.generate import Generator
    from reasoning.seeds import sample_seed

    row_of = {sample_seed(i, 0): i for i in range(len(targets))}
    if len(row_of) != len(targets):
        raise RuntimeError("two rows share a sample seed: rows cannot be told apart")
    stats, plain = {"rounds": 0}, Generator._take

    def take(step, cfg, seeds, counters):
        tokens, logp = plain(step, cfg, seeds, counters)
        stats["rounds"] += 1
        forced = tokens.tolist()
        for b, (seed, made) in enumerate(zip(seeds.tolist(), counters.tolist())):
            i = row_of.get(seed)
            if i is None:  # a slot that never held a row, riding along in the decode batch
                continue
            if made + 1 == targets[i] < max_new:  # `made` tokens sampled before this one
                forced[b] = eos
            elif forced[b] == eos:
                forced[b] = eos - 1
        return torch.tensor(forced, dtype=tokens.dtype, device=tokens.device), logp

    Generator._take = staticmethod(take)
    try:
        yield stats
    finally:
        Generator._take = staticmethod(plain)


class ForcedBook(torch.nn.Module):
    """The book's model, its last logits steered so that row r of the batch emits EOS (by argmax)
    exactly at its targets[r]-th token (unless that is max_new) and never elsewhere. It mirrors the
    book's list of surviving rows: a row leaves after its EOS, order kept."""

    def __init__(self, model: torch.nn.Module, max_new: int, eos: int):
        super().__init__()
        self.model, self.cfg, self.max_new, self.eos = model, model.cfg, max_new, eos
        self.rounds = 0

    def start(self, targets: Sequence[int]) -> None:
        self.targets, self.active, self.calls = list(targets), list(range(len(targets))), 0

    def forward(self, in_idx: torch.Tensor, cache=None, attn_mask=None) -> torch.Tensor:
        if in_idx.shape[0] != len(self.active):
            raise RuntimeError(f"the book's loop passed {in_idx.shape[0]} rows where {len(self.active)} survive: "
                               "its row tracking has changed; update ForcedBook")
        logits = self.model(in_idx, cache=cache, attn_mask=attn_mask)
        self.calls += 1  # the argmax of this call's last logits is each surviving row's calls-th token
        if self.calls <= self.max_new:
            self.rounds += 1
        stop = [k for k, r in enumerate(self.active) if self.targets[r] == self.calls < self.max_new]
        last = logits[:, -1]
        last[:, self.eos] = -math.inf
        last[stop, self.eos] = math.inf
        self.active = [r for k, r in enumerate(self.active) if k not in set(stop)]
        return logits


# --- workers: one engine per process --------------------------------------------------------------

class StopTokenizer:
    """What our Generator needs of a tokenizer when prompts are token ids: pad, stop ids, decode."""

    def __init__(self, eos: int):
        self.pad_id, self.stop_ids = PAD, (eos,)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return ""


def build_ours(spec: dict, mc: ModelConfig) -> Callable[[list[list[int]]], dict]:
    from reasoning.generate import Generator, SamplingConfig

    eos, max_new, targets, device = mc.vocab_size - 1, spec["max_new_tokens"], spec["targets"], spec["device"]
    model = random_qwen3(mc, getattr(torch, spec["dtype"]), device)
    gen = Generator(model, StopTokenizer(eos), compile=spec["compile"], batch_size=spec["batch_size"])

    def run(ids: list[list[int]]) -> dict:
        gen.generate(ids[:2], SamplingConfig(max_new_tokens=4))  # warm-up
        if spec["compile"]:  # a first pass meets every shape the timed one will (module docstring)
            once(ids)
        return once(ids)

    def once(ids: list[list[int]]) -> dict:
        cfg = SamplingConfig(max_new_tokens=max_new)
        rows: list = [None] * len(ids)
        with forced_ours(targets, max_new, eos) as stats:
            t0 = now(device)
            if spec["engine"] == "ours[static]":  # one call per chunk: its batch only shrinks
                for chunk in static_chunks(spec["prompt_lengths"], spec["batch_size"]):
                    for i, [c] in zip(chunk, gen.generate([ids[i] for i in chunk], cfg, seeds=chunk)):
                        rows[i] = c
            else:
                rows = [c for [c] in gen.generate(ids, cfg, seeds=range(len(ids)))]
            wall = now(device) - t0
        return {"wall_s": wall, "rounds": stats["rounds"], "produced": [len(c.tokens) for c in rows],
                "stopped": [bool(c.tokens) and c.tokens[-1] == eos for c in rows]}
    return run


def build_book(spec: dict, mc: ModelConfig) -> Callable[[list[list[int]]], dict]:
    mod = book_module(spec, "qwen3_batched")
    eos, max_new, targets, device = mc.vocab_size - 1, spec["max_new_tokens"], spec["targets"], spec["device"]
    model = random_book(mod, book_config(mc, getattr(torch, spec["dtype"])), device)
    forced = ForcedBook(compile_book(model) if spec["compile"] else model, max_new, eos)
    generate = mod.generate_text_basic_batched_cache_stop

    def batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and their attention mask, as the book's batched evaluation builds them."""
        width = max(map(len, rows))
        ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows], device=device)
        return ids, mask

    def run(ids: list[list[int]]) -> dict:
        tokens, mask = batch(ids[:2])
        generate(forced.model, tokens, 4, attn_mask=mask)  # warm-up, unsteered
        if spec["compile"]:  # a first pass meets every shape the timed one will (module docstring)
            once(ids)
        return once(ids)

    def once(ids: list[list[int]]) -> dict:
        produced, stopped = [0] * len(ids), [False] * len(ids)
        forced.rounds = 0
        t0 = now(device)
        for chunk in static_chunks(spec["prompt_lengths"], spec["batch_size"]):
            forced.start([targets[i] for i in chunk])
            tokens, mask = batch([ids[i] for i in chunk])
            out = generate(forced, tokens, max_new, eos_token_id=eos, attn_mask=mask)
            for i, row in zip(chunk, out.tolist()):  # finished rows are filled with EOS: the first one is theirs
                stopped[i] = eos in row
                produced[i] = row.index(eos) + 1 if stopped[i] else len(row)
        wall = now(device) - t0
        return {"wall_s": wall, "rounds": forced.rounds, "produced": produced, "stopped": stopped}
    return run


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    lengths = spec["prompt_lengths"]
    mc = model_config(spec["model"], max(lengths) + spec["max_new_tokens"])
    build = build_book if spec["engine"] == "book[batched]" else build_ours
    t0 = time.perf_counter()
    run = build(spec, mc)
    out: dict = {"build_s": round(time.perf_counter() - t0, 1)}
    ids = prompt_ids(lengths, mc.vocab_size, spec["seed"])
    gc.collect()
    out["peak_is_generation_only"] = reset_peak_memory(spec["device"])
    with torch.inference_mode():
        out.update(run(ids))
    out[peak_key(spec["device"])] = peak_memory_gb(spec["device"])
    print("RESULT " + json.dumps(out), flush=True)


# --- driver ---------------------------------------------------------------------------------------


def verify(res: dict, targets: Sequence[int], max_new: int) -> dict:
    """The engine's figures if every row produced exactly its drawn count of tokens, ending on the
    stop token exactly when that count is below max_new; else an error naming the first rows off."""
    if "error" in res:
        return res
    if len(res["produced"]) != len(targets):
        return {"error": f"{len(res['produced'])} rows returned for {len(targets)} prompts: no figures reported"}
    off = [i for i, (n, s, t) in enumerate(zip(res["produced"], res["stopped"], targets))
           if n != t or s != (t < max_new)]
    if off:
        shown = ", ".join(f"row {i}: {res['produced'][i]} tokens{' +stop' if res['stopped'][i] else ''}, "
                          f"drawn {targets[i]}" for i in off[:3])
        return {"error": f"forced lengths not honoured ({len(off)} rows off; {shown}): no figures reported"}
    tokens = sum(targets)
    out = {k: v for k, v in res.items() if k not in ("produced", "stopped")}
    out.update(tokens=tokens, tok_s=tokens / res["wall_s"], rows_per_step=tokens / res["rounds"], verified=True)
    return out


def run_workload(model: str, w: dict, all_lengths: list[int], args: argparse.Namespace, book: str | None,
                 skipped: dict[str, str], budget: Budget) -> dict:
    """Draw the workload, run each engine on it, verify, print; returns the workload's report."""
    if w["prompts"] > len(all_lengths):
        raise SystemExit(f"--prompts {w['prompts']}: only {len(all_lengths)} prompt lengths to draw from")
    rng = random.Random(args.seed)
    lengths = [all_lengths[i] for i in rng.sample(range(len(all_lengths)), w["prompts"])]
    targets = answer_lengths(w["prompts"], w["max_new_tokens"], args.seed)
    report = {**w, "prompt_tokens": describe(lengths), "answer_tokens": describe(targets, w["max_new_tokens"]),
              "engines": {}}
    print(f"\n{model}: {w['prompts']} prompts, batch {w['batch_size']}, max_new_tokens {w['max_new_tokens']}, "
          f"{args.dtype} on {args.device}{', compiled' if args.compile else ''}\n  prompt tokens {fmt(report['prompt_tokens'])}\n  answer tokens "
          f"{fmt(report['answer_tokens'])}", flush=True)
    spec = {"model": model, **w, "dtype": args.dtype, "device": args.device, "compile": args.compile,
            "threads": args.threads, "seed": args.seed, "prompt_lengths": lengths, "targets": targets,
            "book_path": book}
    results = report["engines"]
    for engine in args.engines.split(","):
        if engine == "book[batched]" and book is None:
            skipped[engine] = ("reasoning_from_scratch not importable: pip install --no-deps --target /tmp/rfs "
                               "reasoning-from-scratch, then --book-path /tmp/rfs")
            print(f"  SKIP {engine}: {skipped[engine]}")
            continue
        timeout = budget.timeout(args.timeout)
        if timeout is None:
            results[engine] = {"error": budget.spent()}
        else:
            results[engine] = verify(run_worker("bench.throughput", {**spec, "engine": engine}, timeout), targets,
                                     w["max_new_tokens"])
        res = results[engine]
        print(f"  {engine:17s} " + (res.get("error") or
              f"{res['tok_s']:8.1f} tok/s, wall {res['wall_s']:6.1f} s, peak {res[peak_key(args.device)]:.2f} GB, "
              f"{res['rows_per_step']:.1f} rows/step (built in {res['build_s']:.0f} s)"), flush=True)
    cont = results.get("ours[continuous]", {})
    report["ratios"], report["targets"] = {}, {}
    for label, (peer, need) in TARGETS.items():
        other = results.get(peer, {})
        got = cont["tok_s"] / other["tok_s"] if "tok_s" in cont and "tok_s" in other else None
        report["ratios"][label] = got
        report["targets"][label] = {"ratio": got, "need": need, "met": None if got is None else got >= need}
        print(f"  {label}: {'n/a' if got is None else f'{got:.2f}x'} (target >= {need}x)")
    return report


def fmt(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small workload per model: a smoke run (most rows reach its short limit, so "
                                                    "its ratios say little)")
    ap.add_argument("--models", default=",".join(WORKLOADS), help="models to run: toy or a preset of "
                    "reasoning.model.PRESETS (default: %(default)s)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="engines to run (default: %(default)s)")
    ap.add_argument("--prompts", type=int, help="prompts per model (default: 32 for qwen3-0.6b, 500 for toy)")
    ap.add_argument("--batch-size", type=int, help="slots B of every engine (default: 8 for qwen3-0.6b, 64 for toy)")
    ap.add_argument("--max-new-tokens", type=int, help="answer limit (default: 128 for qwen3-0.6b, 256 for toy)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="weights (and matmuls) of every engine (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where every engine runs (default: cpu)")
    ap.add_argument("--compile", action="store_true", help="every engine compiled; the workload runs twice, "
                                                           "the second time timed")
    ap.add_argument("--math500", type=Path, help="MATH-500 JSONL file to take the prompt lengths from "
                                                 "(default: the embedded table); needs --tokenizer")
    ap.add_argument("--tokenizer", type=Path, help="Qwen3's tokenizer.json (or a checkpoint directory)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the prompt sample, answer lengths and prompt ids")
    ap.add_argument("--book-path", help="directory holding reasoning_from_scratch "
                                        "(default: $RFS_PATH, else import it, else /tmp/rfs)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    add_process_flags(ap, timeout=1800)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return {}
    models = args.models.split(",")
    for name in (m for m in models if m != "toy" and m not in PRESETS):
        ap.error(f"--models: unknown {name!r}; use toy or one of {sorted(PRESETS)}")
    for name in (e for e in args.engines.split(",") if e not in ENGINES):
        ap.error(f"--engines: unknown {name!r}; use some of {','.join(ENGINES)}")
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        ap.error(f"--device {args.device!r}: use cpu, cuda or cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); use --device cpu")
    try:
        all_lengths = prompt_lengths(args.math500, args.tokenizer)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    source = str(args.math500) if args.math500 else "embedded MATH-500 table (Qwen3 tokenizer)"

    load = [os.getloadavg()[0]]
    if args.threads > 1 and load[0] > 0.5 and args.device == "cpu":
        print(f"WARNING: load average {load[0]:.1f}: other processes are running, so timings are erratic; "
              "compare ratios from one run on a quiet machine.")
    print(f"{args.threads} threads, {os.cpu_count()} cores, load average {load[0]:.1f}; prompt lengths: {source}; "
          f"answer lengths: {LIMIT_SHARE:.0%} at the limit, else lognormal(median {ANSWER_MEDIAN}, "
          f"log-sd {ANSWER_SIGMA}), seed {args.seed}", flush=True)
    book, skipped, workloads, budget = book_path(args.book_path), {}, {}, Budget(args.budget)
    for model in models:
        table = QUICK if args.quick else WORKLOADS
        w = dict(table.get(model, table["toy"]))  # other (small) presets take the toy's defaults
        w.update({k: v for k, v in (("prompts", args.prompts), ("batch_size", args.batch_size),
                                    ("max_new_tokens", args.max_new_tokens)) if v is not None})
        workloads[model] = run_workload(model, w, all_lengths, args, book, skipped, budget)
    load.append(os.getloadavg()[0])
    print(f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    failed = sorted(f"{m}: {e}" for m, r in workloads.items() for e, x in r["engines"].items() if "error" in x)
    report = {"device": args.device, "compile": args.compile, "budget_s": args.budget, "threads": args.threads,
              "cores": os.cpu_count(), "load_average": load, "dtype": args.dtype,
              "seed": args.seed, "prompt_source": source,
              "answer_model": {"median": ANSWER_MEDIAN, "log_sd": ANSWER_SIGMA, "limit_share": LIMIT_SHARE},
              "workloads": workloads, "skipped": skipped, "failed": failed}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)
