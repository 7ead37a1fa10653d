"""Bench: decode and prefill speed of our engine against the book's code and transformers.

Greedy decoding of 16-token prompts, Qwen3-0.6B's shape (--model: another preset) with random
weights (no download), every engine in its own subprocess. Two suites:

- cpu (the default on a CPU): decode tok/s at batch 1 (peers: the book's `qwen3.py` with its KV
  cache, and transformers), aggregate decode tok/s at batch 8 and 32 (the book's
  `qwen3_batched.py`, transformers), prefill tok/s of one 512-token prompt, and each engine's peak
  resident memory while it generates (the model included, building excluded); every figure of ours
  as a ratio to each peer's. The book's models run in fp32 and bf16 (they take their dtype from the
  config), transformers in fp32 (add `transformers:bfloat16` to --peers; it is slow on CPU). Ours,
  compared with the peers, is `ours[auto]`: fp32 weights, `matmul_dtype="auto"`. Unless --quick,
  `ours[float32]` (exact fp32 matmuls) and `ours[bfloat16]` (bf16 weights, half the memory) show
  where the speed comes from; --compile adds `ours[auto,compiled]` (its decode step under
  torch.compile, batch 1). This machine's floors too: one decode step's weight matmuls alone with
  torch's kernels, per dtype and batch size, and the memory-bandwidth bound (the bytes of weights
  one step reads against the read bandwidth measured here).
- gpu (the default with --device cuda): every engine in bf16 at batch 1, 32 and 128 (the book's
  `qwen3.py` too: the prompts share one length, so it needs no padding), prefill of 512 tokens
  eager, peak memory as `torch.cuda.max_memory_allocated` (reset after building), and with
  --compile each engine's own compiled recipe as well: ours with `compile=True` (on CUDA its decode
  step, sampling included, is captured as a CUDA graph: mode "reduce-overhead", fixed shapes), the
  book's `torch.compile(model)` as its `load_model_and_tokenizer(use_compile=True)` does, and transformers' static cache, whose
  `generate` compiles the forward pass itself (mode "reduce-overhead": CUDA graphs). Ours is
  `ours[bfloat16]` (and `ours[bfloat16,compiled]`); its best is compared with the book's best
  (either script, eager or compiled) at every batch size. The floor: the weight matmuls of one step
  replayed as a CUDA graph (no launch cost), and the bandwidth bound. `--suite gpu --device cpu`
  runs the same engines on the CPU (bench/gpu.sh checks its plumbing so, on the tiny preset).

Each engine streams its tokens and the bench stamps each step's arrival (after a device
synchronize): a decode rate is N steps over the time from the first token to the last (prefill
excluded), a prefill rate is the prompt length over the time to the first token; each figure is
the median of --reps runs after a warm-up (the full run when compiled or on a GPU, where it is
cheap; 4 tokens otherwise). A worker stopped at its time limit keeps the figures it had printed.
The machine may be shared: the load average is printed before and after, and only ratios from one
run count.

Peers are bench-only dependencies, never the project's: transformers (already a test
dependency), and the book's package, installed without its dependencies:
    pip install --no-deps reasoning-from-scratch
    pip install --no-deps --target /tmp/rfs reasoning-from-scratch   # then --book-path /tmp/rfs
A peer that cannot be imported is skipped with a line saying so.

    python -m bench.decode [--quick] [--book-path /tmp/rfs] [--threads 2] [--compile] [--peers ...]
    python -m bench.decode --device cuda --compile --budget 240   # the gpu suite (bench/gpu.sh)

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from reasoning.model import PRESETS, ModelConfig, Qwen3

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LEN = 16
BATCHED = [8, 32]  # the cpu suite's batched figures (and batch 1)
GPU_BATCHES = [1, 32, 128]  # the gpu suite's, every engine
DTYPES = ("float32", "bfloat16")
PEERS = ("book-qwen3:float32,book-qwen3:bfloat16,book-batched:float32,book-batched:bfloat16,"
         "transformers:float32")
GPU_PEERS = "book-qwen3:bfloat16,transformers:bfloat16,book-batched:bfloat16"  # also the order they run in
PEER_ENGINES = ("book-qwen3", "book-batched", "transformers")
REFERENCE = {"cpu": ("ours[auto]", "ours[auto,compiled]"), "gpu": ("ours[bfloat16]", "ours[bfloat16,compiled]")}
TARGETS = {  # cpu suite: (metric, peer, minimum ratio ours/peer), from the issue
    "decode_b1 vs book-qwen3[float32]": ("decode_b1", "book-qwen3[float32]", 1.5),
    "decode_b1 vs book-qwen3[best dtype]": ("decode_b1", "book-qwen3[best]", 1.2),
    "decode_b32 vs book-batched[float32]": ("decode_b32", "book-batched[float32]", 1.4),
}
GPU_NOTES = [
    ("ours compiled on CUDA runs its decode step (sampling included) as CUDA graphs (torch.compile "
     "mode='reduce-overhead'), one per batch width, attending to the whole cache (fixed shapes)"),
    ("the book's H100 figures: batch-1 decode with KV cache + compile 141-177 tok/s; MATH-500 base "
     "evaluation batched at 128: 3.3 minutes"),
]
MIN_ENGINE_S = 20  # with --budget: an engine is not started with less time than this left


def sync(device: str) -> None:
    """Wait for the work queued on `device`, so that a host clock read next counts it (CUDA runs
    asynchronously; on the CPU there is nothing to wait for)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def now(device: str) -> float:
    """perf_counter once `device` has finished its queued work."""
    sync(device)
    return time.perf_counter()


def median_seconds(fn: Callable[[], object], reps: int, device: str = "cpu") -> float:
    times = []
    for _ in range(reps):
        t0 = now(device)
        fn()
        times.append(now(device) - t0)
    return statistics.median(times)


def random_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill a model's parameters in place, on their device: normal(0, 0.02) matrices, unit norm weights."""
    params = list(model.named_parameters())  # a tied parameter once
    g = torch.Generator(device=params[0][1].device).manual_seed(seed)
    with torch.no_grad():
        for name, p in params:
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model


def random_qwen3(cfg: ModelConfig, dtype: torch.dtype, device: str = "cpu") -> Qwen3:
    """Our Qwen3 of shape `cfg` with random weights (`random_`), in `dtype` on `device`.

    Built on the meta device and given storage by `to_empty`, so that nothing is initialised twice.
    `to_empty` gives every module its own tensor, which unties a tied output head (a second
    vocab x hidden matrix: 0.6 GB in fp32 for Qwen3-0.6B, counted in the peak memory): the tie is
    made again, as the constructor and checkpoint loading make it."""
    with torch.device("meta"):
        model = Qwen3(cfg)
    model = model.to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return random_(model).to(dtype)  # .to keeps a shared parameter shared


def book_config(mc: ModelConfig, dtype: torch.dtype) -> dict:
    """The book's config dict for our ModelConfig's shape (Qwen3-0.6B's: its QWEN_CONFIG_06_B)."""
    return {"vocab_size": mc.vocab_size, "context_length": mc.max_position_embeddings, "emb_dim": mc.hidden_size,
            "n_heads": mc.num_attention_heads, "n_layers": mc.num_hidden_layers, "hidden_dim": mc.intermediate_size,
            "head_dim": mc.head_dim, "qk_norm": True, "n_kv_groups": mc.num_key_value_heads,
            "rope_base": mc.rope_theta, "dtype": dtype}


def random_book(mod, cfg: dict, device: str = "cpu") -> torch.nn.Module:
    """The book's `mod.Qwen3Model(cfg)` (its own output head, as its constructor builds it) with random
    weights on `device`, in eval mode."""
    with torch.device("meta"):
        model = mod.Qwen3Model(cfg)
    model = random_(model.to_empty(device=device)).eval()
    # buffers were built on the meta device: recompute them as the book's constructor does
    cos, sin = mod.compute_rope_params(cfg["head_dim"], cfg["rope_base"], cfg["context_length"])
    model.cos, model.sin = cos.to(device), sin.to(device)
    return model


def reset_peak_memory(device: str = "cpu") -> bool:
    """Restart the peak-memory count, so that model building does not count: CUDA's allocator
    statistics, or the kernel's peak RSS (Linux). False where it cannot be restarted."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_key(device: str) -> str:
    """The name of the peak-memory figure on `device`."""
    return "peak_cuda_GB" if device.startswith("cuda") else "peak_rss_GB"


def peak_memory_gb(device: str = "cpu") -> float:
    """Peak memory since the last reset (else since the start), in GB: on CUDA the most the process's
    tensors held (`torch.cuda.max_memory_allocated`), else its resident set."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def linear_shapes(model: str = "qwen3-0.6b") -> list[tuple[int, int]]:
    """(out, in) of every weight matmul of one decode step of a preset, lm_head included."""
    c = PRESETS[model]
    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    block = [(q, h), (kv, h), (kv, h), (h, q), (c.intermediate_size, h), (c.intermediate_size, h),
             (h, c.intermediate_size)]
    return block * c.num_hidden_layers + [(c.vocab_size, h)]


# --- workers: one engine (or the floor measurement) per process --------------------------------

def build_ours(spec: dict) -> tuple[Callable, Callable]:
    from reasoning.generate import Generator, SamplingConfig

    class NoStopTokenizer:  # token ids in, nothing decoded: random weights emit random ids
        pad_id, stop_ids = 0, ()

        def decode(self, ids, skip_special_tokens=False):
            return ""

    device = spec["device"]
    model = random_qwen3(PRESETS[spec["model"]], getattr(torch, spec["dtype"]), device)
    # every row of the largest batch in one slot: they decode together, as the peers' batches do
    gen = Generator(model, NoStopTokenizer(), compile=spec.get("compile", False),
                    batch_size=max(64, *spec["batches"]), matmul_dtype=spec["matmul"])

    def stream(ids: torch.Tensor, new: int) -> list[float]:
        stamps: list[float] = []
        gen.generate(ids.tolist(), SamplingConfig(max_new_tokens=new),
                     stream=lambda p, s, t: stamps.append(now(device)) if p == s == 0 else None)
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


def compile_book(model: torch.nn.Module) -> torch.nn.Module:
    """The book's compile recipe (its `load_model_and_tokenizer(..., use_compile=True)`)."""
    torch._dynamo.config.allow_unspec_int_on_nn_module = True  # its cache position is a module attribute
    return torch.compile(model)


def build_book(spec: dict) -> tuple[Callable, Callable]:
    batched = spec["engine"] == "book-batched"
    mod = book_module(spec, "qwen3_batched" if batched else "qwen3")
    device = spec["device"]
    model = random_book(mod, book_config(PRESETS[spec["model"]], getattr(torch, spec["dtype"])), device)
    if spec.get("compile"):
        model = compile_book(model)
    generate = mod.generate_text_basic_batched_stream_cache if batched \
        else book_module(spec, "ch02").generate_text_basic_stream_cache

    def stream(ids: torch.Tensor, new: int) -> list[float]:
        return [now(device) for _ in generate(model, ids.to(device), new)]
    return stream, lambda batches: {}


def build_transformers(spec: dict) -> tuple[Callable, Callable]:
    import transformers
    device = spec["device"]
    hf = {k: v for k, v in PRESETS[spec["model"]].to_hf().items()
          if k not in ("architectures", "model_type", "torch_dtype")}
    with torch.device(device):
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**hf))
    model = random_(model).to(getattr(torch, spec["dtype"])).eval()
    options: dict = {}
    if spec.get("compile"):
        # transformers' own recipe: with a static cache, `generate` compiles the forward pass itself
        # (CompileConfig: mode "reduce-overhead", CUDA graphs). It does so on GPUs only, unless its
        # CompileConfig says otherwise, which it offers for testing (the CPU check of bench/gpu.sh).
        options["cache_implementation"] = "static"
        if not device.startswith("cuda"):
            options["compile_config"] = transformers.CompileConfig()
            options["compile_config"]._compile_all_devices = True

    class Stamps:  # a transformers streamer: put() gets the prompt first, then each step's tokens
        def __init__(self):
            self.stamps: list[float] = []

        def put(self, value):
            self.stamps.append(now(device))

        def end(self):
            pass

    @torch.inference_mode()
    def stream(ids: torch.Tensor, new: int) -> list[float]:
        st = Stamps()
        ids = ids.to(device)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0, eos_token_id=None, streamer=st, **options)
        return st.stamps[1:]
    return stream, lambda batches: {}


def measure_engine(spec: dict) -> dict:
    build = {"ours": build_ours, "book-qwen3": build_book, "book-batched": build_book,
             "transformers": build_transformers}[spec["engine"]]
    device = spec["device"]
    t0 = time.perf_counter()
    stream, info = build(spec)
    out: dict = {"build_s": round(time.perf_counter() - t0, 1)}
    gc.collect()
    out["peak_is_generation_only"] = reset_peak_memory(device)
    g = torch.Generator().manual_seed(1)
    new, reps = spec["new_tokens"], spec["reps"]
    top = min(100_000, PRESETS[spec["model"]].vocab_size)
    # compiled engines meet their shapes (and transformers its static cache's size) in a full-length
    # warm-up; on a GPU it costs little, on a CPU eager engines need only their kernels warm
    warm = new + 1 if spec.get("compile") or device.startswith("cuda") else 4

    def emit() -> None:  # the figures so far: a worker stopped at its time limit still reports them
        print("RESULT " + json.dumps({**out, peak_key(device): peak_memory_gb(device)}), flush=True)

    def timed(ids: torch.Tensor, n: int) -> tuple[float, float]:
        """(seconds to the first token, seconds from the first token to the n-th)."""
        t0 = now(device)
        stamps = stream(ids, n)
        assert len(stamps) == n, f"{len(stamps)} steps streamed, {n} expected"
        return stamps[0] - t0, stamps[-1] - stamps[0]

    for b in spec["batches"]:
        ids = torch.randint(1, top, (b, PROMPT_LEN), generator=g)
        t0 = now(device)
        stream(ids, warm)  # warm-up: caches, kernels (and compilation, when asked)
        out[f"warmup_b{b}_s"] = round(now(device) - t0, 1)
        out[f"decode_b{b}"] = b * new / statistics.median(timed(ids, new + 1)[1] for _ in range(reps))
        emit()
    if spec["prefill"]:
        ids = torch.randint(1, top, (1, spec["prefill"]), generator=g)
        stream(ids, 1)
        first = statistics.median(timed(ids, 1)[0] for _ in range(reps))
        out[f"prefill_{spec['prefill']}"] = spec["prefill"] / first
    out.update(info(spec["batches"]))
    if spec.get("compile"):  # graphs compiled and graph breaks: a compiled engine run mostly eager shows here
        from torch._dynamo.utils import counters
        out["dynamo"] = {"graphs": counters["stats"]["unique_graphs"],
                         "graph_breaks": sum(counters["graph_break"].values())}
    return out


def graphed(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """On CUDA, `fn` captured once as a CUDA graph, returned as its replay: the kernels' time without
    the host's launch cost, the floor a decode step can reach; elsewhere `fn` itself."""
    if not device.startswith("cuda"):
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as capture requires
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def measure_floor(spec: dict) -> dict:
    """Weight matmuls of one decode step alone, per dtype and batch, and the read bandwidth."""
    device = spec["device"]
    out: dict = {"torch": torch.__version__,
                 "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"}
    for name in spec["floor_dtypes"]:
        dtype = getattr(torch, name)
        weights = [torch.randn(o, i, dtype=dtype, device=device) * 0.02 for o, i in linear_shapes(spec["model"])]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        if name == spec["floor_dtypes"][0]:  # read bandwidth: every weight read once, far beyond the caches
            if device.startswith("cuda"):  # in one kernel: ~200 small sums would time their launches
                flat = torch.cat([w.flatten() for w in weights])
                s = median_seconds(flat.sum, 10, device)
                del flat
            else:
                s = median_seconds(lambda: [w.sum() for w in weights], 3)
            out["read_GBps"] = nbytes / s / 1e9
        out[name] = {"weight_bytes": nbytes}
        for b in spec["batches"]:
            xs = {i: torch.randn(b, i, dtype=dtype, device=device) for i in {w.shape[1] for w in weights}}
            step = graphed(lambda: [F.linear(xs[w.shape[1]], w) for w in weights], device)
            step()
            s = median_seconds(step, spec["reps"], device)
            out[name][f"b{b}"] = {"ms": s * 1e3, "tok_s": b / s}
        weights.clear()  # free this dtype's weights before the next dtype's
    return out


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    if spec["engine"] == "floor":
        with torch.inference_mode():
            out = measure_floor(spec)
    else:
        out = measure_engine(spec)
    out[peak_key(spec["device"])] = peak_memory_gb(spec["device"])
    print("RESULT " + json.dumps(out), flush=True)


# --- driver --------------------------------------------------------------------------------------

def run_worker(module: str, spec: dict, timeout: float) -> dict:
    """`python -m module --worker SPEC` in a process group of its own: the last `RESULT {json}` line it
    printed, with "error" set if it failed or ran past `timeout` seconds (then its group, compile
    workers included, is killed); {"error": ...} alone if it printed none."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    p = subprocess.Popen([sys.executable, "-m", module, "--worker", json.dumps(spec)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=timeout)
        error = None if p.returncode == 0 else (stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        error = f"timed out after {timeout:.0f} s"
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        return {"error": error or (stderr.strip().splitlines() or ["no output"])[-1]}
    out = json.loads(lines[-1][len("RESULT "):])
    if error:
        out["error"] = f"{error} (figures before it kept)"
    return out


class Budget:
    """Seconds left of a run's --budget (None: no limit): what each engine process may take."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = math.inf if seconds is None else time.monotonic() + seconds

    def timeout(self, cap: float) -> float | None:
        """The time an engine may run (at most `cap`), or None: too little is left to start one."""
        left = self.end - time.monotonic()
        return None if left < MIN_ENGINE_S else min(cap, left)

    def spent(self) -> str:
        return f"not run: the --budget of {self.seconds:.0f} s was spent"


def book_path(arg: str | None) -> str | None:
    """Where the book's package imports from: --book-path, $RFS_PATH, installed ("") or /tmp/rfs."""
    for cand in (arg, os.environ.get("RFS_PATH")):
        if cand:
            return cand
    if importlib.util.find_spec("reasoning_from_scratch") is not None:
        return ""
    return "/tmp/rfs" if Path("/tmp/rfs/reasoning_from_scratch").is_dir() else None


def peer_specs(args: argparse.Namespace, ap: argparse.ArgumentParser, peers: str,
               skipped: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """(engine, dtype, book path) of each importable peer of `peers` ("engine:dtype,...")."""
    book, out = book_path(args.book_path), []
    for peer in peers.split(","):
        engine, _, dt = peer.partition(":")
        if engine not in PEER_ENGINES or dt not in DTYPES:
            ap.error(f"--peers: unknown {peer!r}; use book-qwen3, book-batched or transformers, "
                     "with :float32 or :bfloat16")
        if engine.startswith("book") and book is None:
            skipped[peer] = ("reasoning_from_scratch not importable: "
                             "pip install --no-deps reasoning-from-scratch (or pass --book-path)")
        elif engine == "transformers" and importlib.util.find_spec("transformers") is None:
            skipped[peer] = "transformers not importable: pip install transformers"
        else:
            out.append((engine, dt, book))
    return out


def engine_specs(args: argparse.Namespace, ap: argparse.ArgumentParser, prefill: int,
                 skipped: dict[str, str]) -> dict[str, dict]:
    """cpu suite: name -> worker spec; ours[auto] is the engine compared with the peers."""
    ours = {"engine": "ours", "batches": [1, *BATCHED], "prefill": prefill, "dtype": "float32"}
    specs = {"ours[auto]": {**ours, "matmul": "auto"}}  # fp32 weights, the faster matmul dtype per phase
    if not args.quick:
        specs["ours[float32]"] = {**ours, "matmul": "model"}  # exact fp32 throughout
        specs["ours[bfloat16]"] = {**ours, "dtype": "bfloat16", "matmul": "model"}  # half the memory
    if args.compile:
        specs["ours[auto,compiled]"] = {**ours, "matmul": "auto", "compile": True, "batches": [1],
                                        "prefill": 0}
    for engine, dt, book in peer_specs(args, ap, args.peers or PEERS, skipped):
        batches = {"book-qwen3": [1], "book-batched": BATCHED, "transformers": [1, *BATCHED]}[engine]
        specs[f"{engine}[{dt}]"] = {"engine": engine, "dtype": dt, "book_path": book, "batches": batches,
                                    "prefill": 0 if engine == "book-batched" else prefill}
    return specs


def gpu_engine_specs(args: argparse.Namespace, ap: argparse.ArgumentParser, prefill: int,
                     skipped: dict[str, str]) -> dict[str, dict]:
    """gpu suite: every engine at GPU_BATCHES, eager first (one full table even if --budget runs out),
    then (--compile) each engine's compiled recipe, without prefill (a further compilation)."""
    eager = {"ours[bfloat16]": {"engine": "ours", "dtype": "bfloat16", "matmul": "model"}}
    for engine, dt, book in peer_specs(args, ap, args.peers or GPU_PEERS, skipped):
        eager[f"{engine}[{dt}]"] = {"engine": engine, "dtype": dt, "book_path": book}
    specs = {n: {**s, "batches": GPU_BATCHES, "prefill": 0 if s["engine"] == "book-batched" else prefill}
             for n, s in eager.items()}
    if args.compile:
        specs.update({f"{n[:-1]},compiled]": {**s, "batches": GPU_BATCHES, "prefill": 0, "compile": True}
                      for n, s in eager.items()})
    return specs


def summarise(results: dict[str, dict], floor: dict, report: dict, suite: str, device: str) -> None:
    """Ratios ours/peer, the floors and the targets, printed and added to `report`."""
    ref, compiled_ref = REFERENCE[suite]
    peak = peak_key(device)
    metrics = sorted({k for r in results.values() for k in r if k.startswith(("decode_b", "prefill_"))},
                     key=lambda k: (k.startswith("prefill"), int(k.split("_")[-1].lstrip("b"))))

    def best(prefixes: tuple[str, ...]) -> dict:  # per metric, the best of the engines named so
        rows = [r for n, r in results.items() if n.startswith(prefixes)]
        return {m: max(r[m] for r in rows if m in r) for m in metrics if any(m in r for r in rows)}
    for peer in PEER_ENGINES:  # each peer's best dtype (and, in the gpu suite, mode), per metric
        if b := best((peer + "[",)):
            results[f"{peer}[best]"] = b
    if suite == "gpu" and (b := best(("book-qwen3[", "book-batched["))):
        results["book[best]"] = b  # the book's best recipe: either script, eager or compiled
    ours = results[ref]
    peers = {n: r for n, r in results.items() if not n.startswith("ours")}
    report["ratios"] = {m: {n: ours[m] / r[m] for n, r in peers.items() if m in r and m in ours}
                        for m in metrics}
    report["peak_memory_ratio"] = {n: ours[peak] / r[peak] for n, r in peers.items()
                                   if r.get(peak) and ours.get(peak)}
    if "error" in floor:
        print(f"floor: {floor['error']}")
    if any(dt in floor for dt in DTYPES):
        dtypes = [dt for dt in DTYPES if dt in floor]
        report["floor"], bw, batches = floor, floor["read_GBps"], sorted({b for dt in dtypes for b in
                                                                          (int(k[1:]) for k in floor[dt] if k[0] == "b")})
        bound = {dt: {f"b{b}": b * bw * 1e9 / floor[dt]["weight_bytes"] for b in batches} for dt in dtypes}
        report["bandwidth_bound_tok_s"] = bound
        print(f"read bandwidth {bw:.1f} GB/s; weights read per step: "
              + ", ".join(f"{floor[dt]['weight_bytes'] / 1e9:.2f} GB in {dt}" for dt in dtypes))
        for dt in dtypes:
            print(f"floor {dt:9s} " + ", ".join(
                f"b{b} {floor[dt][f'b{b}']['ms']:.{0 if suite == 'cpu' else 2}f} ms/step = "
                f"{floor[dt][f'b{b}']['tok_s']:.1f} tok/s (bandwidth bound {bound[dt][f'b{b}']:.1f})"
                for b in batches if f"b{b}" in floor[dt]))
        chosen = ours.get("matmul_dtype", {})
        own = "float32" if suite == "cpu" else "bfloat16"  # the weights' dtype of the reference
        report["of_floor"] = {
            f"b{b}": ours[f"decode_b{b}"] / floor[chosen.get(str(b), own)][f"b{b}"]["tok_s"]
            for b in batches if f"decode_b{b}" in ours and chosen.get(str(b), own) in floor}
        unmeasured = {f"b{b}": chosen.get(str(b), own) for b in batches if chosen.get(str(b), own) not in floor}
        print(f"{ref} against the floor of the dtype it chose: " + ", ".join(
            [f"{k} {v:.0%} ({chosen.get(k[1:], own)})" for k, v in report["of_floor"].items()]
            + [f"{k} n/a ({dt}: no floor measured)" for k, dt in unmeasured.items()]))
    for m, rs in report["ratios"].items():
        if rs:
            print(f"ours/peer {m:12s} " + ", ".join(f"{n} {v:.2f}x" for n, v in rs.items()))
    print("peak memory ours/peer  " + ", ".join(f"{n} {v:.2f}x"
                                                for n, v in report["peak_memory_ratio"].items()))
    compiled = results.get(compiled_ref, {})
    report["compiled_ratios"] = {m: {n: compiled[m] / r[m] for n, r in peers.items() if m in r}
                                 for m in metrics if m in compiled}
    for m, rs in report["compiled_ratios"].items():  # the same engine with its decode step compiled
        print(f"{compiled_ref}/peer {m} " + ", ".join(f"{n} {v:.2f}x" for n, v in rs.items()))
    if suite == "cpu":
        checks = {label: (report["ratios"].get(m, {}).get(peer), need) for label, (m, peer, need) in TARGETS.items()}
    else:  # the aim: ahead of the book on the same GPU at every batch size, each at its best
        mine = {m: max(r[m] for n, r in results.items() if n in (ref, compiled_ref) and m in r)
                for m in metrics if any(m in results.get(n, {}) for n in (ref, compiled_ref))}
        report["ours_best"], book = mine, results.get("book[best]", {})
        checks = {f"{m} ours[best] vs book[best]": (mine[m] / book[m] if m in book else None, 1.0)
                  for m in mine if m.startswith("decode")}
    report["targets"] = {}
    for label, (got, need) in checks.items():
        report["targets"][label] = {"ratio": got, "need": need, "met": None if got is None else got >= need}
        print(f"target {label}: {'n/a' if got is None else f'{got:.2f}x'} (need >= {need}x)")


def add_process_flags(ap: argparse.ArgumentParser, timeout: float) -> None:
    """--timeout and --budget (seconds per engine process, and for the whole run), and the hidden --worker
    that runs one engine in its own process: the flags every bench that spawns engines shares."""
    ap.add_argument("--timeout", type=float, default=timeout, help="seconds allowed per engine process")
    ap.add_argument("--budget", type=float, help="seconds for the whole run: an engine runs at most what is "
                                                 "left, and is skipped when too little is (default: no limit)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, one repeat (cpu suite: ours[auto] only)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where every engine runs (default: cpu)")
    ap.add_argument("--suite", choices=("cpu", "gpu"),
                    help="engine set (module docstring); default: gpu on CUDA, else cpu")
    ap.add_argument("--model", default="qwen3-0.6b", choices=sorted(PRESETS),
                    help="shape of every engine's model (default: %(default)s)")
    ap.add_argument("--book-path", help="directory holding reasoning_from_scratch "
                                        "(default: $RFS_PATH, else import it, else /tmp/rfs)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--new-tokens", type=int, help="decode steps timed per run (default: 32, quick: 8)")
    ap.add_argument("--reps", type=int, help="repeats; the median counts (default: 3, quick: 1)")
    ap.add_argument("--prefill", type=int, help="prefill prompt length (default: 512, quick: 128)")
    ap.add_argument("--compile", action="store_true",
                    help="also time compiled engines (cpu suite: ours at batch 1; gpu suite: every engine)")
    ap.add_argument("--peers", help=f"engine:dtype list (default: cpu suite {PEERS}; gpu suite {GPU_PEERS})")
    ap.add_argument("--engines", help="run only these engines, by the names the run prints (comma-separated)")
    add_process_flags(ap, timeout=900)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return {}
    kind = args.device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        ap.error(f"--device {args.device!r}: use cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); use --device cpu")
    suite = args.suite or ("gpu" if kind == "cuda" else "cpu")

    common = {"threads": args.threads, "new_tokens": args.new_tokens or (8 if args.quick else 32),
              "reps": args.reps or (1 if args.quick else 3), "device": args.device, "model": args.model}
    skipped: dict[str, str] = {}
    prefill = args.prefill or (128 if args.quick else 512)
    specs = (gpu_engine_specs if suite == "gpu" else engine_specs)(args, ap, prefill, skipped)
    if args.engines:
        wanted = re.split(r",(?![^\[]*\])", args.engines)  # names hold commas inside their brackets
        unknown = [n for n in wanted if n not in specs]
        if unknown:
            ap.error(f"--engines: {unknown} not in this run; choose among {','.join(specs)}")
        specs = {n: s for n, s in specs.items() if n in wanted}
    for name, why in skipped.items():
        print(f"SKIP {name}: {why}")
    load = [os.getloadavg()[0]]
    if args.threads > 1 and load[0] > 0.5 and kind == "cpu":
        print(f"WARNING: load average {load[0]:.1f}: other processes are running. With {args.threads} threads "
              "every parallel op waits for its slowest thread, so timings become erratic; --threads 1 is "
              "robust to a shared machine.")
    print(f"{suite} suite on {args.device}, {args.model}; {args.threads} threads, {os.cpu_count()} cores, load "
          f"average {load[0]:.1f}; {common['new_tokens']} decode steps after a {PROMPT_LEN}-token prompt, "
          f"median of {common['reps']}", flush=True)
    notes = GPU_NOTES if suite == "gpu" else []
    for note in notes:
        print(f"NOTE {note}")
    budget = Budget(args.budget)
    batches = GPU_BATCHES if suite == "gpu" else [1, *BATCHED]
    floor_dtypes = DTYPES if suite == "cpu" else ("bfloat16",)
    timeout = budget.timeout(args.timeout)
    floor = {"error": budget.spent()} if timeout is None else run_worker(
        "bench.decode", {"engine": "floor", "batches": batches, "floor_dtypes": floor_dtypes, **common}, timeout)
    results: dict[str, dict] = {}
    for name, spec in specs.items():
        timeout = budget.timeout(args.timeout)
        if timeout is None:
            results[name] = {"error": budget.spent()}
            print(f"{name:30s} {budget.spent()}", flush=True)
            continue
        t0 = time.perf_counter()
        results[name] = res = run_worker("bench.decode", {**spec, **common}, timeout)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        figures = ", ".join(f"{k} {v:.1f}" for k, v in res.items() if k.startswith(("decode", "prefill")))
        print(f"{name:30s} {'; '.join(x for x in (figures, res.get('error')) if x)}  "
              f"(peak {res.get(peak_key(args.device), 0):.2f} GB, {res['wall_s']:.0f} s)", flush=True)
    load.append(os.getloadavg()[0])
    report: dict = {"suite": suite, "device": args.device, "device_name": floor.get("device_name"),
                    "torch": floor.get("torch"), "model": args.model, "threads": args.threads,
                    "cores": os.cpu_count(), "load_average": load, **common, "prompt_tokens": PROMPT_LEN,
                    "budget_s": args.budget, "notes": notes, "engines": results, "skipped": skipped}
    ref = REFERENCE[suite][0]
    if not any(k.startswith("decode_b") for k in results.get(ref, {})):
        print(f"{ref} has no figures ({results.get(ref, {}).get('error', 'not run')}): no ratios")
    else:
        summarise(results, floor, report, suite, args.device)
    print(f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
