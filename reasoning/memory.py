"""Will it fit? Per-GPU memory of SFT, GRPO and evaluation, estimated from the model's shape alone.

    python -m reasoning.memory --model qwen3-8b --strategy fsdp --gpus 8 --max-len 2048
    python -m reasoning.memory --table --gpu-memory 80GiB          # the README's table

Design: pure arithmetic on a `ModelConfig` (no model is built), counting what *our* loops keep
rather than a generic transformer's: train.py and grpo.py train fp32 weights under bf16 autocast,
generate.py sizes one static KV cache per model, stages/grpo.py loads the reference model in fp32.
Weights, gradients, optimizer state and KV cache are exact byte counts (tests/test_memory.py
checks them against real tensors); activations are estimates, counted tensor by tensor from what
autograd saves in model.py's forward, and checked against a measured CPU step (within 10%). The
peak is the largest of the phases a step goes through, not the sum of every line.

Notation: P parameters (a tied embedding counted once), N GPUs, c bytes of the compute dtype (2 for
bf16 autocast, 4 for fp32), L layers, h hidden size, I MLP size, V vocabulary, H / K query / key-value
heads of size D, B sequences per micro-batch, T tokens per sequence (--max-len).

Training state (per GPU):
- weights 4P (fp32: they are their own master copy), gradients 4P (fp32: autocast leaves parameter
  gradients in the parameters' dtype), AdamW 8P (exp_avg and exp_avg_sq in fp32) + 4 bytes per tensor
  (its `step`). 16 bytes per parameter: the total of ZeRO's mixed-precision Adam (Rajbhandari et al.
  2020, "ZeRO", arXiv:1910.02054, sec. 3.1: 2 + 2 + 12), arranged without bf16 copies of weights and
  gradients between steps.
- ddp: all of it on every GPU. SFT and GRPO under DDP (N > 1) add the reducer's gradient buckets, 4P (PyTorch
  DDP docs, `gradient_as_bucket_view`: "the saved memory size will be equal to the total gradients
  size"); GRPO trains through DDP too (reasoning/parallel.py). bf16 autocast caches a
  bf16 copy of every Linear weight (lm_head included) until its region ends, and the backward keeps
  the copies its saved matmuls hold: 2 bytes per Linear parameter, or with gradient checkpointing
  only lm_head's and the recomputed block's once the forward is over (torch.amp's weight-cast cache).
- fsdp: FSDP2 `fully_shard` on each Block and then on the model (the root unit: embedding, final norm,
  lm_head), MixedPrecisionPolicy(param_dtype=compute dtype, reduce_dtype=fp32). Weights, gradients and
  AdamW state are dim-0 shards: ceil(rows / N) rows of each tensor, FSDP2's padding included. On top:
  the all-gathered units in c bytes, the root (which FSDP2 keeps unsharded from forward to backward:
  its `reshard_after_forward` defaults to False) and two blocks (the one computing and the one
  prefetched), and the unsharded gradients of the same before their reduce-scatter: 2c (root + 2 blocks)
  (PyTorch docs, torch.distributed.fsdp.fully_shard). This is the plan of `train.strategy: fsdp`
  (issue 18); a different wrapping changes this line. Activations are counted as under autocast for
  both strategies; with FSDP's bf16 parameters the residual stream may be bf16, which is not credited.
- --cpu-offload (fsdp only; FSDP2's CPUOffloadPolicy): the sharded weights, gradients and AdamW state
  live in host memory and the optimizer steps on the CPU; the GPU keeps the gathered units.

Activations per token, per block, as autograd saves them (the method of Korthikanti et al. 2022,
"Reducing Activation Recomputation in Large Transformer Models", arXiv:2205.05198, applied to
model.py): the fp32 residual stream and both RMSNorms' saved input and output 16h; the Linear inputs
(bf16: one cast per projection, 5ch; fp32: two tensors, 8h); queries and keys (fp32 input of q_norm /
k_norm, their c-byte output, SDPA's c-byte copy) (4 + 2c)(H + K)D; values cKD; attention output and
log-sum-exp cHD + 4H (a flash-style kernel, as SDPA picks on CUDA: no T x T scores); SwiGLU 4cI.
Without gradient checkpointing all L blocks are kept; with it (model.py checkpoints each block) only
each block's fp32 input, 4hL. The head adds its RMSNorm 8h, lm_head's input and rotary tables, and the
fp32 logits, which dominate at Qwen's 151,936 tokens. The activation peak is the largest of these
moments, each times B T (plus the weight copies held then):
- the end of the forward, autocast's cache still full: logits 6V (SFT: bf16 and fp32 copies) or 12V
  (GRPO's sequence_logps runs under autocast: logits and two temporaries of logsumexp or the entropy);
- the start of the backward: 12V for SFT (log-softmax output, loss gradient, logits gradient), 20V for
  GRPO (the logits logsumexp saved, the gather's gradient, logsumexp's x - lse, its exp and product);
- with checkpointing, a block recomputed in the backward, with its MLP's two gradients: block + 2cI;
- GRPO with a reference model, its forward beside the policy's saved logits: 16V + 3cI + 12h.
tests/test_memory.py measures these peaks on the CPU (the loops' own calls, tensors tracked as they
are created and freed) for three shapes, both dtypes, both stages and checkpointing: within 10%.

Generation: the KV cache is 2 L x slots x K x positions x D x bytes, positions = the context rounded up
to 64 (generate.py), bytes the dtype of the weights the engine decodes with (model.setup_caches). GRPO
under ddp decodes with the training model itself, fp32, so its cache is fp32 (and bf16 autocast caches
bf16 copies of the Linear weights while decoding, 2 bytes per Linear parameter); under fsdp with the
plain model that reasoning/parallel.py gathers the trained shards into after each update, held in the
compute dtype (cP beside the shards, and a cache of c bytes per value); evaluation loads the weights in
the compute dtype. The
cache is a buffer of the model: it stays allocated through the update. Prefill transient: the prompts
admitted together ((slots / n) prompts of up to T - max_new_tokens tokens) through one block's MLP,
(3c I + 12h) per token; decode transient: 12V per slot.

GRPO with --beta > 0 adds the frozen reference model, fp32 as stages/grpo.py loads it: 4P (ddp) or
its shards plus its own gathered units (fsdp).

Phases, whose largest is the peak: the forward/backward (state + buffers + activations + KV cache +
reference), the optimizer step (state + AdamW's foreach temporary, 4 bytes per parameter of the
matrices) and, for GRPO, the rollouts (weights + AdamW state + KV cache + reference + the weights the
engine multiplies by + the generation transient; no gradients then).

Not counted: the CUDA context and NCCL buffers (about 0.5-1 GiB), the caching allocator's
fragmentation (hence the verdict's 10% margin), matmul_dtype copies for rollouts (2 bytes per Linear
parameter for bfloat16, 1 for int8), and a GRPO run's held-out evaluation batch when it is larger
than the rollout batch (it shares the cache). Activations are estimates: measured on the CPU, where
SDPA's kernel saves what CUDA's flash kernel does; another attention kernel (math attention for a
masked or unusual shape materialises H T^2 scores), a different FSDP wrapping or the allocator can
move them. Check against `peak_memory_bytes` in a stage's metrics once a run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .hub import HubError
from .model import PRESETS, ModelConfig

GiB = 1 << 30
MARGIN = 0.10  # of the GPU: CUDA context, NCCL and allocator fragmentation, which are not counted
STAGES = ("sft", "grpo", "eval")
STRATEGIES = ("ddp", "fsdp")
COMPUTE_BYTES = {"bf16": 2, "bfloat16": 2, "fp32": 4, "float32": 4}
KV_ROUND = 64  # generate.py rounds the cache's positions up to a multiple of this


@dataclasses.dataclass(frozen=True)
class Setup:
    """What runs, and how: the settings the estimate depends on."""

    stage: str = "sft"  # sft | grpo | eval
    strategy: str = "ddp"  # ddp | fsdp (training stages)
    gpus: int = 1
    max_len: int = 2048  # tokens per sequence: training rows, and the generation context
    micro_batch: int = 1  # sequences per forward/backward on one GPU
    dtype: str = "bf16"  # compute dtype: bf16 (autocast / FSDP param_dtype) or fp32
    grad_checkpointing: bool = False
    cpu_offload: bool = False  # fsdp: sharded weights, gradients and AdamW state in host memory
    rollout_batch: int = 64  # generation slots: grpo.train.generation_batch_size, or evaluate's batch_size
    num_generations: int = 8  # samples per prompt (GRPO's G; evaluation: 1)
    max_new_tokens: int = 256  # completion budget, inside max_len
    beta: float = 0.0  # GRPO's KL weight; > 0 keeps a frozen reference model

    def __post_init__(self) -> None:
        problems = [msg for bad, msg in [
            (self.stage not in STAGES, f"stage {self.stage!r} is unknown; use one of {', '.join(STAGES)}"),
            (self.strategy not in STRATEGIES,
             f"strategy {self.strategy!r} is unknown; use one of {', '.join(STRATEGIES)}"),
            (self.dtype not in COMPUTE_BYTES, f"dtype {self.dtype!r} is unknown; use bf16 or fp32"),
            (self.gpus < 1 or self.micro_batch < 1 or self.rollout_batch < 1 or self.num_generations < 1,
             "gpus, micro_batch, rollout_batch and num_generations must be >= 1"),
            (self.max_len < 2, "max_len must be >= 2"),
            (not 1 <= self.max_new_tokens < self.max_len and self.stage != "sft",
             f"max_new_tokens ({self.max_new_tokens}) must lie in [1, max_len = {self.max_len}): the context "
             "holds the prompt and the completion"),
            (self.cpu_offload and self.strategy != "fsdp",
             "cpu_offload needs strategy fsdp (FSDP2's CPUOffloadPolicy); DDP keeps everything on the GPU"),
            (self.stage == "eval" and self.strategy != "ddp",
             "evaluation replicates the model on every GPU (data-parallel generation); strategy applies to "
             "the training stages sft and grpo"),
            (self.beta < 0, "beta must be >= 0"),
        ] if bad]
        if problems:
            raise ValueError(f"invalid memory setup: {'; '.join(problems)}")

    @property
    def c(self) -> int:
        return COMPUTE_BYTES[self.dtype]


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes per GPU: `parts` name -> bytes (the lines printed), `phases` name -> bytes (each phase's
    total), `peak` the largest phase; `host` bytes of host memory per process (CPU offload)."""

    parts: dict[str, int]
    phases: dict[str, int]
    host: int = 0

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------

def block_shapes(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """Parameter shapes of one Block (model.py): q, k, v, o, q_norm, k_norm, two RMSNorms, the MLP's."""
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    return [(q, h), (kv, h), (kv, h), (h, q), (d,), (d,), (h,), (h,), (i, h), (i, h), (h, i)]


def root_shapes(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """Parameter shapes outside the blocks: the embedding, the final norm and (untied) lm_head."""
    emb = (cfg.vocab_size, cfg.hidden_size)
    return [emb, (cfg.hidden_size,)] + ([] if cfg.tie_word_embeddings else [emb])


def numel(shapes: Sequence[tuple[int, ...]], shards: int = 1) -> int:
    """Elements of `shapes` per rank when each tensor is split on dim 0 into `shards` (FSDP2 pads dim 0
    up to a multiple of `shards`)."""
    return sum(-(-s[0] // shards) * math.prod(s[1:]) for s in shapes)


def n_tensors(cfg: ModelConfig) -> int:
    return cfg.num_hidden_layers * len(block_shapes(cfg)) + len(root_shapes(cfg))


def linear_params(cfg: ModelConfig) -> int:
    """Parameters autocast casts to the compute dtype: every Linear weight, lm_head (even tied) included."""
    per_block = sum(math.prod(s) for s in block_shapes(cfg) if len(s) == 2)
    return cfg.num_hidden_layers * per_block + cfg.vocab_size * cfg.hidden_size


def kv_cache_bytes(cfg: ModelConfig, slots: int, context: int, dtype_bytes: int) -> int:
    """The engine's static KV cache (model.setup_caches as generate.py sizes it): K and V per layer,
    (slots, K heads, positions, D), positions = `context` rounded up to 64, at most the model's context."""
    positions = min(-(-context // KV_ROUND) * KV_ROUND, cfg.max_position_embeddings)
    per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes  # K and V
    return slots * positions * per_position


# ---------------------------------------------------------------------------------------------
# Activations (per token of a micro-batch)
# ---------------------------------------------------------------------------------------------

def block_activation_bytes(cfg: ModelConfig, c: int) -> int:
    """Bytes autograd saves per token in one Block's forward (see the module docstring)."""
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    norms = 16 * h + 4 * (2 + nh + nkv)  # fp32 residual + normed outputs of both RMSNorms; rsqrt per row
    linear_inputs = 5 * c * h if c < 4 else 8 * h  # autocast casts the input once per projection
    qk = (4 + 2 * c) * (nh + nkv) * d
    attention = c * nkv * d + c * nh * d + 4 * nh  # values; output and log-sum-exp
    return norms + linear_inputs + qk + attention + 4 * c * i


# Bytes per vocabulary entry per token (fp32 logits and what is computed from them): at the end of the
# forward, while autocast's weight cache is alive (SFT: the bf16 logits and their fp32 copy; GRPO's
# sequence_logps runs inside autocast: logits, and logsumexp's or the entropy's two temporaries), and
# at the start of the backward (SFT: log-softmax output, the loss gradient, the logits' gradient;
# GRPO: the logits saved by logsumexp, the gather's gradient, logsumexp's x - lse, its exp and product).
LOGITS_FORWARD = {"sft": 6, "grpo": 12}
LOGITS_BACKWARD = {"sft": 12, "grpo": 20}


def activation_bytes(cfg: ModelConfig, setup: Setup, checkpointing: bool) -> tuple[int, int]:
    """(activations, autocast weight copies) in bytes at the peak of one micro-batch's forward/backward
    (B = micro_batch sequences of T = max_len tokens): the largest of the moments below."""
    h, c, V, I = cfg.hidden_size, setup.c, cfg.vocab_size, cfg.intermediate_size
    tokens = setup.micro_batch * setup.max_len
    block = block_activation_bytes(cfg, c)
    stored = cfg.num_hidden_layers * (4 * h if checkpointing else block)
    head = 8 * h + (c if c < 4 else 4) * h + 8 * cfg.head_dim
    # bf16 autocast over fp32 weights (ddp) caches a bf16 copy of every Linear weight through the
    # forward; the backward keeps those its saved matmuls hold: all of them, or with checkpointing
    # lm_head's (the head is not checkpointed) and the recomputed block's.
    copies = 2 * linear_params(cfg) if c < 4 and setup.strategy == "ddp" else 0
    saved = copies if not checkpointing else 2 * V * h * (copies > 0)
    moments = [(copies, stored + head + LOGITS_FORWARD[setup.stage] * V),
               (saved, stored + head + LOGITS_BACKWARD[setup.stage] * V)]
    if checkpointing:  # a block recomputed in the backward, with its MLP's two gradients
        block_copies = 2 * (linear_params(cfg) - V * h) // cfg.num_hidden_layers * (copies > 0)
        moments.append((saved + block_copies, stored + block + 2 * c * I))
    if setup.stage == "grpo" and setup.beta > 0:
        # the reference's forward (no graph) beside the policy's saved logits: its logits, their
        # softmax for the entropy, and one block's MLP
        moments.append((saved, stored + 16 * V + 3 * c * I + 12 * h))
    weight_copies, per_token = max(moments, key=lambda m: m[0] + tokens * m[1])
    return tokens * per_token, weight_copies


def generation_transient_bytes(cfg: ModelConfig, setup: Setup, c: int) -> int:
    """Short-lived bytes of generating: the larger of a prefill (the prompts admitted together, through
    one block's MLP) and a decode step's logits."""
    prompts = -(-setup.rollout_batch // setup.num_generations)
    prefill = prompts * (setup.max_len - setup.max_new_tokens) * (3 * c * cfg.intermediate_size
                                                                  + 12 * cfg.hidden_size)
    decode = setup.rollout_batch * 12 * cfg.vocab_size
    return max(prefill, decode)


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------

def estimate(cfg: ModelConfig, setup: Setup, checkpointing: bool | None = None) -> Estimate:
    """Bytes per GPU of `setup` for the model `cfg`, its parts and its phases (see the module docstring).

    checkpointing: gradient checkpointing on or off; None takes setup.grad_checkpointing."""
    ckpt = setup.grad_checkpointing if checkpointing is None else checkpointing
    c, N, P = setup.c, setup.gpus, cfg.n_params
    if setup.stage == "eval":
        parts = {"weights": c * P, "kv_cache": kv_cache_bytes(cfg, setup.rollout_batch, setup.max_len, c),
                 "generation": generation_transient_bytes(cfg, setup, c)}
        return Estimate(parts, {"generation": sum(parts.values())})
    fsdp = setup.strategy == "fsdp"
    L, root, block = cfg.num_hidden_layers, numel(root_shapes(cfg)), numel(block_shapes(cfg))
    shard = numel(root_shapes(cfg), N) + L * numel(block_shapes(cfg), N) if fsdp else P
    state = {"weights": 4 * shard, "gradients": 4 * shard, "optimizer": 8 * shard + 4 * n_tensors(cfg)}
    host = 0
    if setup.cpu_offload:  # FSDP2's CPUOffloadPolicy: the shards and the optimizer step on the host
        host, state = sum(state.values()), dict.fromkeys(state, 0)
    parts = dict(state)
    if fsdp:
        parts["gathered"] = 2 * c * (root + 2 * block)
    if setup.stage in ("sft", "grpo") and not fsdp and N > 1:  # both train through DDP (reasoning/parallel.py)
        parts["ddp_buckets"] = 4 * P
    activations, copies = activation_bytes(cfg, setup, ckpt)
    if copies:
        parts["autocast_copies"] = copies
    parts["activations"] = activations
    if setup.stage == "grpo":
        # the engine decodes with ddp's fp32 training model, or fsdp's gathered plain copy in the compute dtype
        parts["kv_cache"] = kv_cache_bytes(cfg, setup.rollout_batch, setup.max_len, c if fsdp else 4)
        if fsdp:
            parts["rollout_weights"] = c * P
        if setup.beta > 0:
            if not fsdp:
                parts["reference"] = 4 * P
            elif setup.cpu_offload:
                parts["reference"], host = c * (root + 2 * block), host + 4 * shard
            else:
                parts["reference"] = 4 * shard + c * (root + 2 * block)
    held = sum(state.values()) + sum(parts.get(k, 0) for k in ("ddp_buckets", "kv_cache", "reference",
                                                                 "rollout_weights"))
    matrices = L * sum(math.prod(s) for s in block_shapes(cfg) if len(s) == 2) \
        + sum(math.prod(s) for s in root_shapes(cfg) if len(s) == 2)
    # foreach AdamW's one temporary (sqrt of exp_avg_sq) over its largest group, the matrices
    foreach = 0 if setup.cpu_offload else 4 * (-(-matrices // N) if fsdp else matrices)
    phases = {"forward/backward": held + parts.get("gathered", 0) + parts.get("autocast_copies", 0)
              + parts["activations"],
              "optimizer step": held + foreach}
    if setup.stage == "grpo":  # no gradients while sampling (zero_grad(set_to_none=True))
        engine = 2 * linear_params(cfg) * (c < 4 and not fsdp)  # autocast's cache while decoding fp32 weights
        phases["rollouts"] = held - state["gradients"] + engine + generation_transient_bytes(cfg, setup, c)
    return Estimate(parts, phases, host)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def load_config(model: str) -> tuple[str, ModelConfig]:
    """(name, config) of `model`: a preset of model.PRESETS, a checkpoint directory or its config.json,
    or a hub id (hf:Qwen/Qwen3-8B or Qwen/Qwen3-8B; a released Qwen3 size is read from the presets,
    another one's config.json is downloaded). ValueError naming the accepted forms otherwise."""
    if model in PRESETS:
        return model, PRESETS[model]
    path = Path(model).expanduser()
    if path.is_dir():
        from .weights import read_config

        return str(path), read_config(path)
    if path.is_file():
        try:
            return str(path), ModelConfig.from_hf(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a Qwen3 config.json: {e}") from None
    if model.startswith("hf:") or model.count("/") == 1:
        from .weights import parse_source

        repo, revision = parse_source(model)
        preset = repo.split("/")[-1].lower().removesuffix("-base")
        if preset in PRESETS:
            return repo, PRESETS[preset]
        return repo, ModelConfig.from_hf(json.loads(_hub_config(repo, revision).read_text()))
    raise ValueError(f"--model {model!r} is neither a preset ({', '.join(PRESETS)}), a checkpoint directory "
                     "or config.json, nor a hub id like Qwen/Qwen3-8B")


def _hub_config(repo: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, "config.json", revision=revision))
    except Exception as e:  # network, missing repo, offline: one message with the local alternative
        local = f"{repo.split('/')[-1]}/config.json"
        raise HubError(f"{repo}'s config.json", "--model", local,
                       f"hf download {repo} config.json --local-dir {repo.split('/')[-1]}", e) from e


def parse_size(text: str) -> int:
    """Bytes of '80GiB', '80 GiB', '141GB' (10^9), '80G' or '80' (GiB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GiB|GB|G|TiB|TB|MiB|MB)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"--gpu-memory {text!r} is not a size; write e.g. 80GiB, 141GB or 80 (GiB)")
    units = {"gib": GiB, "g": GiB, "gb": 10**9, "tib": 1 << 40, "tb": 10**12, "mib": 1 << 20, "mb": 10**6}
    return int(float(m[1]) * units[(m[2] or "gib").lower()])


def verdict(peak: int, gpu_bytes: int) -> str:
    """'fits' with MARGIN of the GPU to spare (uncounted context, NCCL, fragmentation), 'tight' within
    the GPU but not the margin, else 'no'."""
    if peak <= (1 - MARGIN) * gpu_bytes:
        return "fits"
    return "tight" if peak <= gpu_bytes else "no"


def gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def size_text(n: int) -> str:
    """'80 GiB', '130.39 GiB': a GPU's size as people write it."""
    return f"{gib(n).removesuffix('.00')} GiB"


PART_NAMES = {
    "weights": "weights", "gradients": "gradients", "optimizer": "optimizer state (AdamW)",
    "gathered": "all-gathered units (FSDP)", "rollout_weights": "full weights the engine decodes with (FSDP, compute dtype)", "autocast_copies": "autocast bf16 weight copies",
    "ddp_buckets": "DDP gradient buckets", "activations": "activations", "kv_cache": "KV cache",
    "reference": "reference model", "generation": "generation transient",
}


def describe(name: str, cfg: ModelConfig, setup: Setup) -> str:
    """Two header lines: the model and the setting."""
    tie = "tied" if cfg.tie_word_embeddings else "untied"
    model = (f"{name}: {cfg.n_params / 1e9:.3g} B parameters ({cfg.num_hidden_layers} layers, hidden "
             f"{cfg.hidden_size}, vocabulary {cfg.vocab_size:,}, {tie} embeddings)")
    if setup.stage == "eval":
        run = (f"eval (generation, a full copy per GPU), {setup.dtype} weights, {setup.rollout_batch} "
               f"sequences x {setup.max_len} tokens of context")
    else:
        run = (f"{setup.stage}, {setup.strategy} over {setup.gpus} GPU{'s' * (setup.gpus > 1)}"
               f"{' with CPU offload' if setup.cpu_offload else ''}, {setup.dtype}, micro-batch "
               f"{setup.micro_batch} x {setup.max_len} tokens")
        if setup.stage == "grpo":
            run += (f", rollouts of {setup.rollout_batch} sequences ({setup.num_generations} per prompt), "
                    f"beta {setup.beta:g}")
    return f"{model}\n{run}"


def report(name: str, cfg: ModelConfig, setup: Setup, gpu_bytes: int | None = None) -> str:
    """The per-GPU breakdown printed by `python -m reasoning.memory`."""
    chosen = estimate(cfg, setup)
    lines = [describe(name, cfg, setup), "", f"{'per GPU':<34}{'GiB':>9}"]
    training = setup.stage != "eval"
    other = estimate(cfg, setup, checkpointing=not setup.grad_checkpointing) if training else None
    aside = f"   {'without' if setup.grad_checkpointing else 'with'} gradient checkpointing: "
    for key, value in chosen.parts.items():
        extra = aside + gib(other.parts[key]) if key == "activations" and other else ""
        lines.append(f"{PART_NAMES[key]:<34}{gib(value):>9}{extra}")
    extra = aside + gib(other.peak) if other else ""
    lines.append(f"{'peak (' + chosen.peak_phase + ')':<34}{gib(chosen.peak):>9}{extra}")
    if len(chosen.phases) > 1:
        lines.append("phases: " + ", ".join(f"{k} {gib(v)}" for k, v in chosen.phases.items()))
    if chosen.host:
        lines.append(f"host memory per process: {gib(chosen.host)} GiB (offloaded shards; AdamW steps there)")
    if gpu_bytes:
        spare = gpu_bytes - chosen.peak
        word = {"fits": "fits", "tight": "tight", "no": "does not fit"}[verdict(chosen.peak, gpu_bytes)]
        lines.append(f"{size_text(gpu_bytes)} GPU: {word} ({'spare' if spare >= 0 else 'short by'} "
                     f"{gib(abs(spare))} GiB; {MARGIN:.0%} of the GPU is kept for what is not counted)")
    lines.append("Weights, gradients, optimizer state and KV cache are exact; activations are estimates "
                 "(reasoning/memory.py says how they are counted).")
    return "\n".join(lines)


TABLE_GPUS = (1, 8)


def table(setup: Setup, gpu_bytes: int) -> str:
    """Markdown: every released preset x strategy x TABLE_GPUS under `setup`, GiB per GPU, with and
    without gradient checkpointing, and the verdict on a GPU of `gpu_bytes`."""
    rows = [f"| model | strategy | GPUs | weights + grads + AdamW | activations at the peak (off / on) "
            f"| peak (off / on) | {size_text(gpu_bytes)} (off / on) |", "|---|---|---:|---:|---:|---:|---|"]
    for name, cfg in PRESETS.items():
        if not name.startswith("qwen3-"):
            continue  # the tiny test shapes
        for strategy in STRATEGIES:
            for gpus in TABLE_GPUS:
                s = dataclasses.replace(setup, strategy=strategy, gpus=gpus, cpu_offload=False)
                off, on = estimate(cfg, s, False), estimate(cfg, s, True)
                states = sum(off.parts[k] for k in ("weights", "gradients", "optimizer"))
                act = f"{gib(off.parts['activations'])} / {gib(on.parts['activations'])}"
                rows.append(f"| {name} | {strategy} | {gpus} | {gib(states)} | {act} | "
                            f"{gib(off.peak)} / {gib(on.peak)} | "
                            f"{verdict(off.peak, gpu_bytes)} / {verdict(on.peak, gpu_bytes)} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m reasoning.memory",
        description="Per-GPU memory of training (SFT, GRPO) and evaluation, estimated from the model's "
                    "shape: weights, gradients, AdamW state, activations with and without gradient "
                    "checkpointing, KV cache, reference model, and the peak. Exact for the states and the "
                    "cache; activations are estimates.")
    ap.add_argument("--model", help=f"a preset ({', '.join(PRESETS)}), a checkpoint directory or "
                                    "config.json, or a hub id such as Qwen/Qwen3-8B")
    ap.add_argument("--table", action="store_true",
                    help="a markdown table over the Qwen3 presets x ddp/fsdp x 1 and 8 GPUs (for the README)")
    ap.add_argument("--stage", choices=STAGES, default="sft")
    ap.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                    help="ddp: everything replicated; fsdp: FSDP2 full sharding (training stages)")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=2048, help="tokens per sequence (training) and of context")
    ap.add_argument("--micro-batch", type=int, default=1, help="sequences per forward/backward on one GPU")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                    help="compute dtype (bf16: autocast over fp32 weights, or FSDP's param_dtype)")
    ap.add_argument("--grad-checkpointing", action="store_true", help="recompute each block in the backward")
    ap.add_argument("--cpu-offload", action="store_true",
                    help="fsdp: sharded weights, gradients and AdamW state in host memory")
    ap.add_argument("--rollout-batch", type=int, default=64,
                    help="sequences decoded together (KV-cache slots): grpo's generation_batch_size, or "
                         "evaluate's batch_size with --stage eval")
    ap.add_argument("--num-generations", type=int, default=None,
                    help="samples per prompt (default: 8 for grpo, 1 for eval)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="completion budget inside --max-len")
    ap.add_argument("--beta", type=float, default=0.0,
                    help="grpo: KL weight; > 0 keeps a frozen reference model")
    ap.add_argument("--gpu-memory", default=None,
                    help="GPU size, e.g. 80GiB or 141GB: prints whether it fits (default for --table: 80GiB)")
    args = ap.parse_args(argv)
    if not args.table and not args.model:
        ap.error("give --model (or --table)")
    if args.table and args.stage == "eval":
        ap.error("--table covers the training stages sft and grpo; for evaluation give --model and --stage eval")
    try:
        n = args.num_generations or (8 if args.stage == "grpo" else 1)
        setup = Setup(stage=args.stage, strategy=args.strategy, gpus=args.gpus, max_len=args.max_len,
                      micro_batch=args.micro_batch, dtype=args.dtype,
                      grad_checkpointing=args.grad_checkpointing, cpu_offload=args.cpu_offload,
                      rollout_batch=args.rollout_batch, num_generations=n, max_new_tokens=args.max_new_tokens,
                      beta=args.beta)
        gpu_bytes = parse_size(args.gpu_memory) if args.gpu_memory else None
        if args.table:
            print(table(setup, gpu_bytes or parse_size("80GiB")))
        else:
            name, cfg = load_config(args.model)
            print(report(name, cfg, setup, gpu_bytes))
    except (ValueError, HubError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
