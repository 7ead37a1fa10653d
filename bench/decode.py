"""Bench: decode and prefill speed of our engine against the book's code and transformers.

Qwen3-0.6B shape with random weights (no download), greedy decoding of prompts of 16 tokens:
- decode tok/s at batch 1 (peers: the book's `qwen3.py` with its KV cache, and transformers),
  aggregate decode tok/s at batch 8 and 32 (the book's `qwen3_batched.py`, transformers),
  prefill tok/s of one 512-token prompt, and each engine's peak memory while it generates
  (resident set, the model included, building excluded); every figure of ours also as a ratio
  to each peer's;
- this machine's floors: the time of one decode step's weight matmuls alone with torch's
  kernels, per dtype and batch size, and the memory-bandwidth bound: the bytes of weights one
  step reads against the read bandwidth measured here.

Every engine runs in its own subprocess; the book's models in fp32 and bf16 (they take their
dtype from the config), transformers in fp32 (add `transformers:bfloat16` to --peers for bf16;
it is slow on CPU). Each engine streams its tokens and the bench stamps each step's arrival: a
decode rate is N steps over the time from the first token to the last (prefill excluded), a
prefill rate is the prompt length over the time to the first token; each figure is the median
of --reps runs after a warm-up. Ours, compared with the peers, is `ours[auto]`: fp32 weights,
`matmul_dtype="auto"`. Unless --quick, two more variants show where the speed comes from:
`ours[float32]` (exact fp32 matmuls) and `ours[bfloat16]` (bf16 weights, half the memory).
With --compile, `ours[auto,compiled]` (the decode step under torch.compile, batch 1) is timed
too and its ratios to the peers printed after the targets.
The machine may be shared: the load average is printed before and after, and only ratios
from one run count.

Peers are bench-only dependencies, never the project's: transformers (already a test
dependency), and the book's package, installed without its dependencies:
    pip install --no-deps reasoning-from-scratch
    pip install --no-deps --target /tmp/rfs reasoning-from-scratch   # then --book-path /tmp/rfs
A peer that cannot be imported is skipped with a line saying so.

    python -m bench.decode [--quick] [--book-path /tmp/rfs] [--threads 2] [--compile] [--peers ...]

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN = 16
BATCHED = [8, 32]
DTYPES = ("float32", "bfloat16")
PEERS = ("book-qwen3:float32,book-qwen3:bfloat16,book-batched:float32,book-batched:bfloat16,"
         "transformers:float32")
TARGETS = {  # (metric, peer, minimum ratio ours/peer), from the issue
    "decode_b1 vs book-qwen3[float32]": ("decode_b1", "book-qwen3[float32]", 1.5),
    "decode_b1 vs book-qwen3[best dtype]": ("decode_b1", "book-qwen3[best]", 1.2),
    "decode_b32 vs book-batched[float32]": ("decode_b32", "book-batched[float32]", 1.4),
}


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill a model's parameters in place: normal(0, 0.02) matrices, unit norm weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model


def reset_peak_memory() -> bool:
    """Restart the kernel's peak-RSS count (Linux), so that model building does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_gb() -> float:
    """Peak resident memory since the last reset (else since the start), in GB."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def linear_shapes() -> list[tuple[int, int]]:
    """(out, in) of every weight matmul of one Qwen3-0.6B decode step, lm_head included."""
    from reasoning.model import PRESETS
    c = PRESETS["qwen3-0.6b"]
    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    block = [(q, h), (kv, h), (kv, h), (h, q), (c.intermediate_size, h), (c.intermediate_size, h),
             (h, c.intermediate_size)]
    return block * c.num_hidden_layers + [(c.vocab_size, h)]


# --- workers: one engine (or the floor measurement) per process --------------------------------

def build_ours(spec: dict) -> tuple[Callable, Callable]:
    from reasoning.model import PRESETS
    from reasoning.generate import Generator, SamplingConfig
    from reasoning.model import Qwen3

    class NoStopTokenizer:  # token ids in, nothing decoded: random weights emit random ids
        pad_id, stop_ids = 0, ()

        def decode(self, ids, skip_special_tokens=False):
            return ""

    with torch.device("meta"):
        model = Qwen3(PRESETS["qwen3-0.6b"])
    model = random_(model.to_empty(device="cpu")).to(getattr(torch, spec["dtype"]))
    gen = Generator(model, NoStopTokenizer(), compile=spec.get("compile", False), batch_size=64,
                    matmul_dtype=spec["matmul"])

    def stream(ids: torch.Tensor, new: int) -> list[float]:
        stamps: list[float] = []
        gen.generate(ids.tolist(), SamplingConfig(max_new_tokens=new),
                     stream=lambda p, s, t: stamps.append(time.perf_counter()) if p == s == 0 else None)
        return stamps

    def info(batches: list[int]) -> dict:
        from reasoning.generate import fastest_matmul_dtype
        if spec["matmul"] != "auto":
            return {}
        rows = batches + [spec["prefill"]]  # decode steps multiply B rows, a prefill its prompt's length
        return {"matmul_dtype": {str(r): str(fastest_matmul_dtype(model, r) or model.lm_head.weight.dtype)[6:]
                                 for r in rows if r}}
    return stream, info


def book_module(spec: dict, name: str):
    if spec.get("book_path"):
        sys.path.insert(0, spec["book_path"])
    return importlib.import_module(f"reasoning_from_scratch.{name}")


def build_book(spec: dict) -> tuple[Callable, Callable]:
    batched = spec["engine"] == "book-batched"
    mod = book_module(spec, "qwen3_batched" if batched else "qwen3")
    cfg = dict(mod.QWEN_CONFIG_06_B, dtype=getattr(torch, spec["dtype"]))
    with torch.device("meta"):
        model = mod.Qwen3Model(cfg)
    model = random_(model.to_empty(device="cpu")).eval()
    # buffers were built on the meta device: recompute them as the book's constructor does
    model.cos, model.sin = mod.compute_rope_params(cfg["head_dim"], cfg["rope_base"], cfg["context_length"])
    generate = mod.generate_text_basic_batched_stream_cache if batched \
        else book_module(spec, "ch02").generate_text_basic_stream_cache

    def stream(ids: torch.Tensor, new: int) -> list[float]:
        return [time.perf_counter() for _ in generate(model, ids, new)]
    return stream, lambda batches: {}


def build_transformers(spec: dict) -> tuple[Callable, Callable]:
    import transformers
    from reasoning.model import PRESETS
    hf = {k: v for k, v in PRESETS["qwen3-0.6b"].to_hf().items()
          if k not in ("architectures", "model_type", "torch_dtype")}
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**hf))
    model = random_(model).to(getattr(torch, spec["dtype"])).eval()

    class Stamps:  # a transformers streamer: put() gets the prompt first, then each step's tokens
        def __init__(self):
            self.stamps: list[float] = []

        def put(self, value):
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    @torch.inference_mode()
    def stream(ids: torch.Tensor, new: int) -> list[float]:
        st = Stamps()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0, eos_token_id=None, streamer=st)
        return st.stamps[1:]
    return stream, lambda batches: {}


def measure_engine(spec: dict) -> dict:
    build = {"ours": build_ours, "book-qwen3": build_book, "book-batched": build_book,
             "transformers": build_transformers}[spec["engine"]]
    t0 = time.perf_counter()
    stream, info = build(spec)
    out: dict = {"build_s": round(time.perf_counter() - t0, 1)}
    gc.collect()
    out["peak_is_generation_only"] = reset_peak_memory()
    g = torch.Generator().manual_seed(1)
    new, reps = spec["new_tokens"], spec["reps"]

    def timed(ids: torch.Tensor, n: int) -> tuple[float, float]:
        """(seconds to the first token, seconds from the first token to the n-th)."""
        t0 = time.perf_counter()
        stamps = stream(ids, n)
        assert len(stamps) == n, f"{len(stamps)} steps streamed, {n} expected"
        return stamps[0] - t0, stamps[-1] - stamps[0]

    for b in spec["batches"]:
        ids = torch.randint(1, 100_000, (b, PROMPT_LEN), generator=g)
        t0 = time.perf_counter()
        stream(ids, 4)  # warm-up: caches, kernels (and compilation, when asked)
        out[f"warmup_b{b}_s"] = round(time.perf_counter() - t0, 1)
        out[f"decode_b{b}"] = b * new / statistics.median(timed(ids, new + 1)[1] for _ in range(reps))
    if spec["prefill"]:
        ids = torch.randint(1, 100_000, (1, spec["prefill"]), generator=g)
        stream(ids, 1)
        first = statistics.median(timed(ids, 1)[0] for _ in range(reps))
        out[f"prefill_{spec['prefill']}"] = spec["prefill"] / first
    out.update(info(spec["batches"]))
    return out


def measure_floor(spec: dict) -> dict:
    """Weight matmuls of one decode step alone, per dtype and batch, and the read bandwidth."""
    out: dict = {}
    for name in DTYPES:
        dtype = getattr(torch, name)
        weights = [torch.randn(o, i, dtype=dtype) * 0.02 for o, i in linear_shapes()]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        if name == "float32":  # read bandwidth: sum every weight once (~2.4 GB, far beyond the caches)
            s = median_seconds(lambda: [w.sum() for w in weights], 3)
            out["read_GBps"] = nbytes / s / 1e9
        out[name] = {"weight_bytes": nbytes}
        for b in spec["batches"]:
            xs = {i: torch.randn(b, i, dtype=dtype) for i in {w.shape[1] for w in weights}}
            step = lambda: [F.linear(xs[w.shape[1]], w) for w in weights]  # noqa: E731
            step()
            s = median_seconds(step, spec["reps"])
            out[name][f"b{b}"] = {"ms": s * 1e3, "tok_s": b / s}
        del weights
    return out


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    if spec["engine"] == "floor":
        with torch.inference_mode():
            out = measure_floor(spec)
    else:
        out = measure_engine(spec)
    out["peak_rss_GB"] = peak_memory_gb()
    print("RESULT " + json.dumps(out), flush=True)


# --- driver --------------------------------------------------------------------------------------

def run_worker(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "bench.decode", "--worker", json.dumps(spec)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    out = json.loads(lines[-1][len("RESULT "):])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def book_path(arg: str | None) -> str | None:
    """Where the book's package imports from: --book-path, $RFS_PATH, installed ("") or /tmp/rfs."""
    for cand in (arg, os.environ.get("RFS_PATH")):
        if cand:
            return cand
    if importlib.util.find_spec("reasoning_from_scratch") is not None:
        return ""
    return "/tmp/rfs" if Path("/tmp/rfs/reasoning_from_scratch").is_dir() else None


def engine_specs(args: argparse.Namespace, ap: argparse.ArgumentParser, prefill: int,
                 skipped: dict[str, str]) -> dict[str, dict]:
    """name -> worker spec; ours[auto] is the engine compared with the peers."""
    ours = {"engine": "ours", "batches": [1, *BATCHED], "prefill": prefill, "dtype": "float32"}
    specs = {"ours[auto]": {**ours, "matmul": "auto"}}  # fp32 weights, the faster matmul dtype per phase
    if not args.quick:
        specs["ours[float32]"] = {**ours, "matmul": "model"}  # exact fp32 throughout
        specs["ours[bfloat16]"] = {**ours, "dtype": "bfloat16", "matmul": "model"}  # half the memory
    if args.compile:
        specs["ours[auto,compiled]"] = {**ours, "matmul": "auto", "compile": True, "batches": [1],
                                        "prefill": 0}
    book = book_path(args.book_path)
    for peer in args.peers.split(","):
        engine, _, dt = peer.partition(":")
        if engine not in ("book-qwen3", "book-batched", "transformers") or dt not in ("float32", "bfloat16"):
            ap.error(f"--peers: unknown {peer!r}; use book-qwen3, book-batched or transformers, "
                     "with :float32 or :bfloat16")
        if engine.startswith("book") and book is None:
            skipped[peer] = ("reasoning_from_scratch not importable: "
                             "pip install --no-deps reasoning-from-scratch (or pass --book-path)")
        elif engine == "transformers" and importlib.util.find_spec("transformers") is None:
            skipped[peer] = "transformers not importable: pip install transformers"
        else:
            batches = {"book-qwen3": [1], "book-batched": BATCHED, "transformers": [1, *BATCHED]}[engine]
            specs[f"{engine}[{dt}]"] = {"engine": engine, "dtype": dt, "book_path": book, "batches": batches,
                                        "prefill": 0 if engine == "book-batched" else prefill}
    return specs


def summarise(results: dict[str, dict], floor: dict, report: dict) -> None:
    """Ratios ours/peer, the floors and the targets, printed and added to `report`."""
    metrics = sorted({k for r in results.values() for k in r if k.startswith(("decode_b", "prefill_"))})
    for peer in ("book-qwen3", "book-batched", "transformers"):  # each peer's best dtype, per metric
        best = {m: max(r[m] for n, r in results.items() if n.startswith(peer + "[") and m in r)
                for m in metrics if any(n.startswith(peer + "[") and m in r for n, r in results.items())}
        if best:
            results[f"{peer}[best]"] = best
    ours = results["ours[auto]"]
    peers = {n: r for n, r in results.items() if not n.startswith("ours")}
    report["ratios"] = {m: {n: ours[m] / r[m] for n, r in peers.items() if m in r and m in ours}
                        for m in metrics}
    report["peak_memory_ratio"] = {n: ours["peak_rss_GB"] / r["peak_rss_GB"] for n, r in peers.items()
                                   if r.get("peak_rss_GB") and ours.get("peak_rss_GB")}
    if "error" in floor:
        print(f"floor: {floor['error']}")
    else:
        report["floor"], bw, batches = floor, floor["read_GBps"], [1, *BATCHED]
        bound = {dt: {f"b{b}": b * bw * 1e9 / floor[dt]["weight_bytes"] for b in batches} for dt in DTYPES}
        report["bandwidth_bound_tok_s"] = bound
        print(f"read bandwidth {bw:.1f} GB/s; weights read per step: "
              + ", ".join(f"{floor[dt]['weight_bytes'] / 1e9:.2f} GB in {dt}" for dt in DTYPES))
        for dt in DTYPES:
            print(f"floor {dt:9s} " + ", ".join(
                f"b{b} {floor[dt][f'b{b}']['ms']:.0f} ms/step = {floor[dt][f'b{b}']['tok_s']:.1f} tok/s "
                f"(bandwidth bound {bound[dt][f'b{b}']:.1f})" for b in batches))
        chosen = ours.get("matmul_dtype", {})
        report["of_floor"] = {
            f"b{b}": ours[f"decode_b{b}"] / floor[chosen.get(str(b), "float32")][f"b{b}"]["tok_s"]
            for b in batches if f"decode_b{b}" in ours}
        print("ours[auto] against the floor of the dtype it chose: " + ", ".join(
            f"{k} {v:.0%} ({chosen.get(k[1:], '?')})" for k, v in report["of_floor"].items()))
    for m, rs in report["ratios"].items():
        print(f"ours/peer {m:12s} " + ", ".join(f"{n} {v:.2f}x" for n, v in rs.items()))
    print("peak memory ours/peer  " + ", ".join(f"{n} {v:.2f}x"
                                                for n, v in report["peak_memory_ratio"].items()))
    report["targets"] = {}
    for label, (m, peer, need) in TARGETS.items():
        got = report["ratios"].get(m, {}).get(peer)
        report["targets"][label] = {"ratio": got, "need": need, "met": None if got is None else got >= need}
        print(f"target {label}: {'n/a' if got is None else f'{got:.2f}x'} (need >= {need}x)")
    compiled = results.get("ours[auto,compiled]", {})
    if "decode_b1" in compiled:  # the same engine with its decode step compiled (--compile)
        report["compiled_ratios"] = {n: compiled["decode_b1"] / r["decode_b1"] for n, r in peers.items()
                                     if "decode_b1" in r}
        print("ours[auto,compiled]/peer decode_b1 " + ", ".join(
            f"{n} {v:.2f}x" for n, v in report["compiled_ratios"].items()))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, one repeat, ours[auto] only")
    ap.add_argument("--book-path", help="directory holding reasoning_from_scratch "
                                        "(default: $RFS_PATH, else import it, else /tmp/rfs)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--new-tokens", type=int, help="decode steps timed per run (default: 32, quick: 8)")
    ap.add_argument("--reps", type=int, help="repeats; the median counts (default: 3, quick: 1)")
    ap.add_argument("--prefill", type=int, help="prefill prompt length (default: 512, quick: 128)")
    ap.add_argument("--compile", action="store_true", help="also time ours with the decode step compiled")
    ap.add_argument("--peers", default=PEERS, help="engine:dtype list (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed per engine process")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return {}

    common = {"threads": args.threads, "new_tokens": args.new_tokens or (8 if args.quick else 32),
              "reps": args.reps or (1 if args.quick else 3)}
    skipped: dict[str, str] = {}
    specs = engine_specs(args, ap, args.prefill or (128 if args.quick else 512), skipped)
    for name, why in skipped.items():
        print(f"SKIP {name}: {why}")
    load = [os.getloadavg()[0]]
    if args.threads > 1 and load[0] > 0.5:
        print(f"WARNING: load average {load[0]:.1f}: other processes are running. With {args.threads} threads "
              "every parallel op waits for its slowest thread, so timings become erratic; --threads 1 is "
              "robust to a shared machine.")
    print(f"{args.threads} threads, {os.cpu_count()} cores, load average {load[0]:.1f}; "
          f"{common['new_tokens']} decode steps after a {PROMPT_LEN}-token prompt, median of {common['reps']}",
          flush=True)
    floor = run_worker({"engine": "floor", "batches": [1, *BATCHED], **common}, args.timeout)
    results: dict[str, dict] = {}
    for name, spec in specs.items():
        results[name] = res = run_worker({**spec, **common}, args.timeout)
        figures = ", ".join(f"{k} {v:.1f}" for k, v in res.items() if k.startswith(("decode", "prefill")))
        print(f"{name:24s} {res.get('error') or figures}  (peak {res.get('peak_rss_GB', 0):.2f} GB, "
              f"{res.get('wall_s', 0):.0f} s)", flush=True)
    load.append(os.getloadavg()[0])
    report: dict = {"threads": args.threads, "cores": os.cpu_count(), "load_average": load, **common,
                    "prompt_tokens": PROMPT_LEN, "engines": results, "skipped": skipped}
    if "error" in results["ours[auto]"]:
        print(f"ours[auto] failed: {results['ours[auto]']['error']}")
    else:
        summarise(results, floor, report)
    print(f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
