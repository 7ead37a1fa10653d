"""Bench: calibrate the toy world. Build a toy base with overridden settings, then score it greedily
on the toy test split, answering directly and step by step.

This is how the defaults in `reasoning.toy.pretrain.ToyBaseConfig` were chosen: each run prints the
build time, both accuracies with their 95% Wilson intervals, the paired step-by-step gain with
McNemar's p, and accuracy per level and per family. Settings are JSON overrides of the config's
fields, e.g. a batch-size sweep at about the same compute:

    python -m bench.toy --train '{"batch_size": 64, "micro_batch_size": 64, "max_steps": 1200}'
    python -m bench.toy --train '{"batch_size": 16, "micro_batch_size": 16, "max_steps": 3500}'
    python -m bench.toy --model '{"direct_frac": 0.4, "plain_frac": 0.2}' --levels 1,2,3
    python -m bench.toy --model '{"shuffled_frac": 0.0}'   # every worked solution left to right

The findings of the whole pipeline over several training seeds are `python -m bench.seeds`.

Results depend on the thread count (the numerics differ): compare runs made with the same
--threads, on a quiet machine. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from reasoning.evaluate import EvalConfig, evaluate
from reasoning.generate import Generator, SamplingConfig
from reasoning.metrics import compare_records
from reasoning.prompts import COT_SUFFIX, PromptConfig
from reasoning.tokenizer import Tokenizer
from reasoning.toy.pretrain import ToyBaseConfig, build_base
from reasoning.toy.task import LEVELS, make_splits
from reasoning.weights import load_model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.toy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="{}", help="JSON overrides of ToyBaseConfig fields (not train)")
    ap.add_argument("--train", default="{}", help="JSON overrides of ToyBaseConfig.train (a TrainConfig)")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="comma-separated levels (default: all)")
    ap.add_argument("--n-train", type=int, default=40_000, help="training problems (default: %(default)s)")
    ap.add_argument("--n-test", type=int, default=500, help="test problems (default: %(default)s)")
    ap.add_argument("--data-seed", type=int, default=0,
                    help="seed of the problems, as prepare_data.toy.seed (default: %(default)s); the model's "
                         "seeds are --model '{\"seed\": S}' and --train '{\"seed\": S}'")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    ap.add_argument("--out", type=Path, help="keep the model here (default: a temporary directory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = ToyBaseConfig()
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, **json.loads(args.train)),
                              **json.loads(args.model))
    levels = tuple(int(x) for x in args.levels.split(","))
    train, test = make_splits(args.n_train, args.n_test, seed=args.data_seed, levels=levels)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "base"
        t0 = time.perf_counter()
        built = build_base(train, out, cfg)
        report: dict = {"threads": args.threads, "build_s": time.perf_counter() - t0,
                        "params": built["params"], "steps": built["steps"], "val_loss": built["val_loss"]}
        print(f"built {built['params']:,} parameters, {built['steps']} steps in {report['build_s']:.0f} s "
              f"({args.threads} threads), val loss {built['val_loss']:.3f}")
        generator = Generator(load_model(out, torch.float32), Tokenizer(out), batch_size=64)
        records = {}
        for name, suffix in (("direct", ""), ("cot", COT_SUFFIX)):
            ec = EvalConfig(batch_size=64, prompt=PromptConfig(cot_suffix=suffix),
                            sampling=SamplingConfig(max_new_tokens=160))
            records[name], m = evaluate(generator, test, ec, progress=False)
            by: dict[str, list[bool]] = defaultdict(list)
            for r, p in zip(records[name], test):
                by[f"level {p['level']}"].append(r["correct"])
                by[p["subject"]].append(r["correct"])
            report[name] = {"accuracy": m["accuracy"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                            **{k: sum(v) / len(v) for k, v in sorted(by.items())}}
            print(f"{name:6s} {m['accuracy']:.1%} [{m['ci_low']:.1%}, {m['ci_high']:.1%}]  "
                  + ", ".join(f"{k} {sum(v) / len(v):.0%}" for k, v in sorted(by.items())))
    c = compare_records(records["direct"], records["cot"])
    report["cot_gain"] = {k: c[k] for k in ("diff", "ci_low", "ci_high", "p_value")}
    print(f"step by step vs direct: {c['diff']:+.1%} [{c['ci_low']:+.1%}, {c['ci_high']:+.1%}], "
          f"McNemar p = {c['p_value']:.2g}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
