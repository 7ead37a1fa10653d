"""Bench: does the toy world tell the book's story on every seed? The whole pipeline once per
training seed, then each of the book's findings as a paired comparison on the same test problems.

Float arithmetic differs between CPUs, so the toy base model (and everything trained from it) comes
out different on another machine; a fresh training seed is the closest stand-in for that we can run
here. For each seed this runs every dvc.yaml stage (in dvc.yaml's order, its `cmd` with
`python -m stages.<name>` in place of the Prefect wrapper) in WORK/seed<S>, with the repository's
params.yaml and every training and sampling seed set to S; the problems stay the same (prepare_data's
seed is kept). A stage whose metrics file exists is skipped, so a killed bench resumes.

The findings, each a paired accuracy difference with its 95% bootstrap interval (reasoning.metrics),
"holds" when the interval's lower end is above 0:

  cot      greedy step-by-step answer vs. greedy direct answer (inference_scaling rows cot, direct)
  sc       self-consistency + CoT at the best n <= 16 vs. greedy CoT (rows sc_cot@n, cot@1)
  bon      best-of-N by average log-prob at the best N vs. one sampled CoT answer (bon_logprob@N, sc_cot@1)
  distill  the SFT student (final_eval's greedy records) vs. the CoT-prompted base (row cot@1)
  grpo     the GRPO model vs. its starting model (the grpo stage's own paired comparison)

Run it on a quiet machine (each seed is a whole `make run`, minutes on 2 cores):

    python -m bench.seeds --seeds 0,1,2 --work runs/bench_seeds

The last line printed is one JSON object: per seed, each finding and each model's accuracy; across
seeds, each one's mean, min and max.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flows.dag import read_stages, stage_order
from reasoning.config import load_params, load_section
from reasoning.files import read_json, read_jsonl
from reasoning.metrics import compare_records, seed_spread
from reasoning.report import by_role
from reasoning.scaling import MethodConfig, ScalingConfig, budget_records

ROOT = Path(__file__).resolve().parent.parent
# Every seed the toy pipeline's training and sampling draw from (prepare_data's, which draws the
# problems, is left alone so every seed is measured on the same test split).
SEED_KEYS = ("load_base.toy.seed", "load_base.toy.train.seed", "evaluate.seed", "inference_scaling.seed", "teacher_traces.seed",
             "distill_sft.train.seed", "grpo.eval.seed", "grpo.train.seed")
FINDINGS = ("cot", "sc", "bon", "distill", "grpo")


def seeded_params(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """`params` with every key of SEED_KEYS set to `seed` (missing sections are created)."""
    out = json.loads(json.dumps(params))
    for key in SEED_KEYS:
        *path, last = key.split(".")
        node = out
        for part in path:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[last] = seed
    return out


def run_pipeline(work: Path, log: Path) -> dict[str, float]:
    """Run every dvc.yaml stage in `work` (skipping those whose metrics exist); seconds per stage run."""
    specs = read_stages(ROOT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    seconds = {}
    for name in stage_order(specs):
        spec = specs[name]
        if spec.metrics and all((work / m).exists() for m in spec.metrics):
            continue
        t0 = time.perf_counter()
        with log.open("a") as f:
            f.write(f"\n=== {name}\n")
            f.flush()
            done = subprocess.run([sys.executable, "-m", f"stages.{name}", *spec.args], cwd=work, env=env,
                                  stdout=f, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"stage {name} failed in {work} (exit {done.returncode}); see {log}")
        seconds[name] = time.perf_counter() - t0
        print(f"  {name}: {seconds[name]:.0f} s", flush=True)
    return seconds


def _paired(a: list, b: list) -> dict[str, float]:
    c = compare_records(a, b)
    return {"diff": c["diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"], "p_value": c["p_value"]}


def _best(candidates: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The candidate with the highest interval lower end (the setting that most clearly wins)."""
    name = max(candidates, key=lambda k: candidates[k]["ci_low"])
    return {"setting": name, **candidates[name]}


def findings(work: Path) -> dict[str, Any]:
    """Each finding of FINDINGS and each model's accuracy, from the outputs of one pipeline run."""
    methods = {m.name: m for m in load_section(ScalingConfig, "inference_scaling", work / "params.yaml").methods}
    records = {name: read_jsonl(work / "data/scaling/records" / f"{name}.jsonl") for name in methods}

    def view(name: str, k: int) -> list:
        m: MethodConfig = methods[name]
        return budget_records(records[name], m, k)

    cot = view("cot", 1)
    final = read_json(work / "data/final/metrics.json")
    grpo = read_json(work / "data/metrics/grpo.json")
    out: dict[str, Any] = {
        "cot": _paired(view("direct", 1), cot),
        "sc": _best({f"sc_cot@{k}": _paired(cot, view("sc_cot", k)) for k in methods["sc_cot"].budgets}),
        "bon": _best({f"bon_logprob@{k}": _paired(view("sc_cot", 1), view("bon_logprob", k))
                      for k in methods["bon_logprob"].budgets}),
        "distill": _paired(cot, read_jsonl(work / "data/final/records/sft.jsonl")),
        "grpo": {"diff": grpo["paired_diff"], "ci_low": grpo["paired_ci_low"], "ci_high": grpo["paired_ci_high"],
                 "p_value": grpo["paired_p_value"]},
    }
    for f in FINDINGS:
        out[f]["holds"] = out[f]["ci_low"] > 0
    out["accuracy"] = {"base direct": final["models"]["base"]["accuracy"],
                       "base CoT": sum(r["correct"] for r in cot) / len(cot),
                       **{m: v["accuracy"] for m, v in by_role(final["models"], "base").items() if m != "base"}}
    out["best_scaling_row"] = next((m.removeprefix("base + ") for m in final["models"] if m.startswith("base + ")), None)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_seeds"),
                    help="one workspace per seed under it; kept, so a rerun resumes (default: %(default)s)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the world (default: %(default)s)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    params = load_params(args.params)
    report: dict[str, Any] = {"seeds": {}}
    for seed in seeds:
        work = (args.work / f"seed{seed}").resolve()
        work.mkdir(parents=True, exist_ok=True)
        wanted = yaml.safe_dump(seeded_params(params, seed), sort_keys=False)
        if (work / "params.yaml").exists() and (work / "params.yaml").read_text() != wanted:
            raise SystemExit(f"{work} was run with other params: remove it or pick another --work")
        (work / "params.yaml").write_text(wanted)
        print(f"seed {seed}: {work}", flush=True)
        seconds = run_pipeline(work, work / "bench.log")
        report["seeds"][seed] = {**findings(work), "stage_seconds": seconds}
    print(f"\n{'finding':10s} " + " ".join(f"{'seed ' + str(s):>26s}" for s in seeds) + "   mean [min, max]")
    for f in FINDINGS:
        cells = [report["seeds"][s][f] for s in seeds]
        report[f] = {**seed_spread([c["diff"] for c in cells]), "holds_on_every_seed": all(c["holds"] for c in cells)}
        print(f"{f:10s} " + " ".join(f"{100 * c['diff']:+5.1f} [{100 * c['ci_low']:+5.1f}, {100 * c['ci_high']:+5.1f}]"
                                     f"{'  ' if c['holds'] else ' x'}" for c in cells)
              + f"   {100 * report[f]['mean']:+.1f} [{100 * report[f]['min']:+.1f}, {100 * report[f]['max']:+.1f}]"
              + ("" if report[f]["holds_on_every_seed"] else "  (not on every seed)"))
    models = list(report["seeds"][seeds[0]]["accuracy"])
    report["accuracy"] = {m: seed_spread([report["seeds"][s]["accuracy"][m] for s in seeds]) for m in models}
    print("\naccuracy: " + "; ".join(f"{m} {100 * v['mean']:.1f}% [{100 * v['min']:.1f}, {100 * v['max']:.1f}]"
                                     for m, v in report["accuracy"].items()))
    print(json.dumps(report, default=str))
    return report


if __name__ == "__main__":
    main()
