#!/usr/bin/env bash
# GPU bench (issue 17 item 6); never part of the tests. On one GPU, all bf16, Qwen3-0.6B's shape with
# random weights (no downloads):
#   - bench/throughput.py's MATH-500-shaped workload: 500 prompts of MATH-500's lengths, batch 128,
#     answers forced from the base-model tail up to 512 new tokens (2,048 would take the three
#     engines ~4x longer than the budget allows: at 512, 6% of rows still run to the limit);
#     ours continuous, the book's qwen3_batched, ours static;
#   - bench/decode.py's gpu suite: decode tok/s at batch 1, 32 and 128 for ours, the book's qwen3.py
#     and qwen3_batched.py, and transformers, eager and then compiled (each its own recipe; ours has
#     no CUDA-graph mode yet), prefill of 512 tokens, the weight-matmul floor; peak GPU memory.
# Budget: BENCH_BUDGET seconds in all (default 450, under 8 minutes): the throughput workload first,
# at most BENCH_THROUGHPUT_S (default 200), then the decode suite with what is left, eager engines
# before compiled ones; an engine the budget cannot fit is reported "not run" (run it in a second call
# with BENCH_PARTS=decode BENCH_ENGINES='NAME,...').
#
# The device machine runs this in a copy of the repository, offline: its image has python3 with torch,
# transformers, tokenizers, safetensors, numpy, yaml; the book's package travels as a wheel. Prepare
# here once (.whl/ is git-ignored):
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl reasoning-from-scratch==0.2.0
# then run, with `.whl` in the device tool's carry:
#     bash bench/gpu.sh
# Each bench's output goes to bench-gpu.log, and one JSON object combining the benches' JSON lines to
# bench-gpu.json (also printed last), under $OUT if set, else in the current directory.
#
# Plumbing check on a CPU (same steps, tiny model, small workload; a few minutes on 2 cores):
#     BENCH_DEVICE=cpu BENCH_QUICK=1 bash bench/gpu.sh
# Settings: BENCH_DEVICE (cuda), BENCH_QUICK (0), BENCH_PYTHON (python3), BENCH_WHEELS (.whl),
# BENCH_BUDGET, BENCH_THROUGHPUT_S, BENCH_PARTS ("throughput decode"), BENCH_ENGINES (decode engines).
set -euo pipefail
cd "$(dirname "$0")/.."

device=${BENCH_DEVICE:-cuda}
quick=${BENCH_QUICK:-0}
py=${BENCH_PYTHON:-python3}
wheels=${BENCH_WHEELS:-.whl}
budget=${BENCH_BUDGET:-450}
throughput_s=${BENCH_THROUGHPUT_S:-200}
parts=${BENCH_PARTS:-throughput decode}
out_dir=${OUT:-.}
log=$out_dir/bench-gpu.log
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1
mkdir -p "$out_dir"
: >"$log"

# The environment: the wheels into a private folder (nothing installed system-wide), then what is there.
if compgen -G "$wheels/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" "$wheels"/*.whl
  export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no wheels in $wheels/: the book's package must be importable already, else its engines are skipped" \
    | tee -a "$log"
fi
"$py" - "$device" <<'PY' 2>&1 | tee -a "$log"
import importlib.metadata as md, platform, sys
import torch
device = sys.argv[1]
versions = {}
for name in ("torch", "transformers", "reasoning-from-scratch"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = "missing"
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in versions.items())
      + f"; GPU: {gpu}; running on {device}")
if device.startswith("cuda") and gpu == "none":
    sys.exit("BENCH_DEVICE=cuda but torch sees no CUDA GPU; BENCH_DEVICE=cpu runs the plumbing check")
PY

if [ "$quick" = 1 ]; then
  throughput_size=(--models tiny --prompts 24 --batch-size 8 --max-new-tokens 32)
  decode_size=(--model tiny --quick)
else
  throughput_size=(--models qwen3-0.6b --prompts 500 --batch-size 128 --max-new-tokens 512)
  decode_size=(--model qwen3-0.6b)
fi
engines=()
if [ -n "${BENCH_ENGINES:-}" ]; then
  engines=(--engines "$BENCH_ENGINES")
fi

left() { echo $((budget - SECONDS)); }
run() {  # run NAME ARGS...: one bench, its output to the log and to $work/NAME.out; a failure does not stop the rest
  local name=$1
  shift
  echo "== $name ($(left) s of the budget left): $*" | tee -a "$log"
  set +e
  "$py" -m "$@" 2>&1 | tee -a "$log" "$work/$name.out"
  echo "== $name exited with ${PIPESTATUS[0]} after ${SECONDS} s in all" | tee -a "$log"
  set -e
}

if [[ " $parts " == *" throughput "* ]]; then
  tp=$(left)
  if [ "$tp" -gt "$throughput_s" ]; then
    tp=$throughput_s
  fi
  run throughput bench.throughput --device "$device" --dtype bfloat16 "${throughput_size[@]}" \
    --engines 'ours[continuous],book[batched],ours[static]' --budget "$tp"
fi
if [[ " $parts " == *" decode "* ]]; then
  run decode bench.decode --device "$device" --suite gpu --compile "${decode_size[@]}" "${engines[@]}" \
    --timeout 300 --budget "$(( $(left) - 5 ))"
fi

# One JSON object: each bench's last line (its JSON report), written atomically, and printed last.
"$py" - "$work" "$out_dir/bench-gpu.json" "$device" "$quick" "$budget" "$SECONDS" <<'PY'
import json, os, sys
work, result, device, quick, budget, elapsed = sys.argv[1:]

def report(name):
    try:
        lines = open(os.path.join(work, name + ".out")).read().strip().splitlines()
    except OSError:
        return {"error": "not run (BENCH_PARTS)"}
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": "no JSON report; its last line: " + (lines[-1] if lines else "(no output)")}

combined = {"bench": "bench/gpu.sh", "device": device, "quick": quick == "1", "budget_s": int(budget),
            "elapsed_s": int(elapsed), "throughput": report("throughput"), "decode": report("decode")}
with open(result + ".tmp", "w") as f:
    json.dump(combined, f)
os.replace(result + ".tmp", result)
print(json.dumps(combined))
PY
