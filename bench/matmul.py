"""Bench: what each weight-matmul precision costs in accuracy and buys in speed, on a real checkpoint.

Evaluates one checkpoint greedily on a dataset split once per `matmul_dtype` (`model`: the weights as
loaded; `bfloat16` and `int8`: the copies generate.Generator multiplies by; `auto`: the fastest
measured here), all in one process on the same problems, and prints for each: accuracy (95% Wilson
interval), the paired difference to `model` (bootstrap interval, McNemar's exact p), how many answers
changed, generated tokens per second (decode and prefill together, the evaluation's own clock) and
the ratio to `model`, and the matmul choice `auto` made per row count. Speed figures are ratios
within one run; run on a quiet machine (one CPU-heavy job at a time).

    python -m bench.matmul --model data/models/sft --data data/datasets/test.jsonl [--limit 200]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from reasoning.data import read_dataset
from reasoning.evaluate import EvalConfig, evaluate
from reasoning.generate import MATMUL_DTYPES, Generator, SamplingConfig, fastest_matmul_dtype
from reasoning.metrics import compare_records
from reasoning.prompts import PromptConfig
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.matmul", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (e.g. data/models/sft)")
    ap.add_argument("--data", required=True, help="dataset JSONL (e.g. data/datasets/test.jsonl)")
    ap.add_argument("--limit", type=int, help="only the first N problems")
    ap.add_argument("--choices", default="model,bfloat16,int8,auto", help="matmul_dtype values, comma-separated")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = ap.parse_args(argv)
    choices = args.choices.split(",")
    for c in choices:
        if c not in MATMUL_DTYPES:
            ap.error(f"--choices: {c!r} is not one of {', '.join(MATMUL_DTYPES)}")
    torch.set_num_threads(args.threads)
    meta_path = os.path.join(args.model, "metadata.json")
    prompt = json.load(open(meta_path)).get("prompt") if os.path.exists(meta_path) else None
    cfg = EvalConfig(prompt=PromptConfig(**prompt) if prompt else PromptConfig(), batch_size=args.batch_size,
                     sampling=SamplingConfig(max_new_tokens=args.max_new_tokens), device="cpu", dtype="float32")
    problems = read_dataset(args.data)[:args.limit]
    model, tok = load_model(args.model), Tokenizer(args.model)
    flags = " ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx2")
                     if f in open("/proc/cpuinfo").read()) if os.path.exists("/proc/cpuinfo") else "?"
    print(f"{args.model} on {len(problems)} problems, {args.threads} threads, CPU flags: {flags}, "
          f"load average {os.getloadavg()[0]:.2f}")
    out: dict = {"model": args.model, "problems": len(problems), "cpu_flags": flags}
    records = {}
    for c in choices:
        gen = Generator(model, tok, batch_size=args.batch_size, matmul_dtype=c)
        gen.generate(["warm-up"], SamplingConfig(max_new_tokens=2))  # kernels, copies and auto's measurements
        t0 = time.perf_counter()
        records[c], m = evaluate(gen, problems, cfg, progress=False)
        wall = time.perf_counter() - t0
        tokens = sum(r["generated_tokens"] for r in records[c])
        out[c] = {"accuracy": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                  "tokens_per_s": tokens / wall, "wall_s": wall}
    ref = choices[0]
    print(f"| matmul_dtype | accuracy [95% CI] | Δ vs {ref} [95% CI] | McNemar p | answers changed | tok/s | speed |")
    print("|---|---|---|---:|---:|---:|---:|")
    for c in choices:
        o = out[c]
        if c != ref:
            cmp = compare_records(records[ref], records[c])
            changed = sum(a["completion"] != b["completion"] for a, b in zip(records[ref], records[c]))
            o.update(diff=cmp["diff"], diff_ci_low=cmp["ci_low"], diff_ci_high=cmp["ci_high"],
                     p_value=cmp["p_value"], answers_changed=changed)
            diff = f"{cmp['diff']:+.3f} [{cmp['ci_low']:+.3f}, {cmp['ci_high']:+.3f}]"
            p, ch = f"{cmp['p_value']:.3g}", str(changed)
        else:
            diff, p, ch = "—", "—", "—"
        print(f"| {c} | {o['accuracy']:.3f} [{o['ci_low']:.3f}, {o['ci_high']:.3f}] | {diff} | {p} | {ch} | "
              f"{o['tokens_per_s']:.0f} | {o['tokens_per_s'] / out[ref]['tokens_per_s']:.2f}x |")
    if "auto" in choices:
        picks = {rows: str(fastest_matmul_dtype(model, rows)).removeprefix("torch.") for rows in (1, 8, 32, 128)}
        out["auto_picks"] = picks
        print(f"auto chose, by rows multiplied: {picks} (None: the weights' own dtype)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
