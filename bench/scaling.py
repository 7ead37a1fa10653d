"""Bench: self-consistency sampling (n samples per problem) on the batched engine, three ways.

- batched: one `generate(prompts, n=N)` call: each prompt is prefilled once and its KV cache
  rows are repeated for the N samples (prefix sharing), and a batch holds several problems
  (cross-problem batching) -- what `reasoning.scaling.run_method` does;
- per_problem: one call per problem with n=N (prefix sharing, no cross-problem batching);
- one_by_one: one call per (problem, sample), n=1, as the book's chapter 4 loop samples.

Every way draws the same samples: the engine seeds sample j of a prompt with
`sample_seed(prompt_seed, j)`, and the one-by-one run seeds its lone row with exactly that value
(the bench swaps the engine's `sample_seed` for the identity while it passes precomputed seeds).
The bench checks that the tokens agree and reports seconds, tokens/s and the speed-up ratios at
equal tokens. The last line is one JSON object.

    python -m bench.scaling --model data/models/base --data data/datasets/test.jsonl --problems 16 --n 8
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import torch

import reasoning.generate as engine
from reasoning.devices import resolve_device
from reasoning.data import read_dataset
from reasoning.generate import Generator, SamplingConfig
from reasoning.prompts import COT_SUFFIX, PromptConfig, render
from reasoning.seeds import problem_seed, sample_seed
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model, resolve


def run(gen: Generator, prompts: list[str], seeds: list[int], sampling: SamplingConfig, n: int, way: str
        ) -> tuple[float, list[list[list[int]]]]:
    """(seconds, tokens[problem][sample]) of sampling n completions per prompt the given way."""
    t0 = time.perf_counter()
    if way == "batched":
        outs = gen.generate(prompts, sampling, n=n, seeds=seeds)
    elif way == "per_problem":
        outs = [gen.generate([p], sampling, n=n, seeds=[s])[0] for p, s in zip(prompts, seeds)]
    else:
        with mock.patch.object(engine, "sample_seed", lambda seed, sample: seed):
            outs = [[gen.generate([p], sampling, seeds=[sample_seed(s, j)])[0][0] for j in range(n)]
                    for p, s in zip(prompts, seeds)]
    return time.perf_counter() - t0, [[c.tokens for c in comps] for comps in outs]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="data/models/base",
                    help="checkpoint directory or hub id (default: %(default)s)")
    ap.add_argument("--data", default="data/datasets/test.jsonl", help="dataset JSONL (default: %(default)s)")
    ap.add_argument("--problems", type=int, default=16, help="number of problems (default: %(default)s)")
    ap.add_argument("--n", type=int, default=8, help="samples per problem (default: %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--cot", action="store_true", help="append the chain-of-thought suffix to the prompt")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="rows per batch in the batched way (default: %(default)s)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device, args.dtype)
    ckpt = resolve(args.model)
    gen = Generator(load_model(ckpt, dtype, device), Tokenizer(ckpt), batch_size=args.batch_size)
    rows = read_dataset(args.data)[:args.problems]
    prompt_cfg = PromptConfig(cot_suffix=COT_SUFFIX if args.cot else "")
    prompts = [render(r["problem"], prompt_cfg) for r in rows]
    seeds = [problem_seed(str(r["id"]), args.seed) for r in rows]
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, top_p=args.top_p)
    gen.generate(prompts[:2], sampling, n=2)  # warm-up (allocations, kernels)

    result: dict = {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                    "threads": torch.get_num_threads(), "problems": len(rows), "n": args.n,
                    "batch_size": args.batch_size}
    tokens = {}
    for way in ("batched", "per_problem", "one_by_one"):
        seconds, tokens[way] = run(gen, prompts, seeds, sampling, args.n, way)
        count = sum(len(t) for per in tokens[way] for t in per)
        result[way] = {"seconds": round(seconds, 3), "tokens": count,
                       "tokens_per_s": round(count / seconds, 1)}
        print(f"{way:12s} {seconds:8.2f} s  {count:7d} tokens  {count / seconds:8.1f} tok/s", flush=True)
    same = [a == b == c for pa, pb, pc in zip(*tokens.values()) for a, b, c in zip(pa, pb, pc)]
    result["identical_samples"] = f"{sum(same)}/{len(same)}"
    for way in ("per_problem", "one_by_one"):
        result[f"speedup_vs_{way}"] = round(result[way]["seconds"] / result["batched"]["seconds"], 2)
    print(f"identical samples: {result['identical_samples']}; batched is {result['speedup_vs_one_by_one']}x "
          f"one-by-one and {result['speedup_vs_per_problem']}x per-problem")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
