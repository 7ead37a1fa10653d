"""GRPO: reinforcement learning from the grader's verdict (the book's chapters 6 and 7).

Design choices:
- Every variant is a named `GRPOConfig` option with TRL's field name and the paper it comes
  from, implemented as a small pure function picked from a dict (`SCALES`, `AGGREGATIONS`,
  `LOSSES`, `REWARDS`), so the step below has no if/elif over variants.
- One step: G completions for each of `prompts_per_step` prompts on the batched engine ->
  rewards -> group-relative advantages -> `num_iterations` optimizer steps on that batch.
  Each prompt's samples are seeded by its position in the prompt stream, so rollouts do not
  depend on batching, the number of processes or a resume.
- The old policy's log-probs are the policy's own at the first iteration (the ratio starts at
  exactly 1, no extra forward). The sampler's log-probs are not used: they come from another
  code path (the KV cache) at temperature 1, while the loss, as TRL's, scores the tempered
  policy `logits / temperature` that was sampled (top_p's truncation is ignored, as in TRL).
- A global batch's loss is a sum of per-sequence terms divided by its "units" (sequences, or
  tokens for DAPO), counted before the forward; each micro-batch and rank adds its share, so
  accumulation and distribution make the update one big batch would.
- Under torchrun, rank r samples slice r of each block of prompts; rewards and lengths are
  all-gathered, so every rank computes the same filtering, advantages and metrics. The policy
  (and the reference model) are placed per `strategy` (reasoning.parallel: DDP, or FSDP2 shards);
  filtering leaves the ranks uneven shares, so each pads its micro-batches with idle ones to the
  busiest rank's count, as both strategies' collectives require. The engine generates with the
  caller's plain model, which holds the full weights (under fsdp gathered after each update, in the
  compute dtype: with bf16 the rollout copy and its KV cache take 2 bytes per value, not 4, and the
  fp32 masters are gathered back into it once training ends).
- Dynamic sampling "resample" (DAPO) draws exactly the missing number of prompts each round,
  so a batch never overshoots and the data consumed does not depend on the world size.
- Learning-rate schedule and optimizer are train.py's; checkpoints and the process group
  reasoning.checkpoint's; placement (DDP or FSDP) reasoning.parallel's, as for SFT.

Simplifications against the papers: no value model or reward model (rewards are the grader's
verdict and optional format bonus); DAPO's soft overlong penalty is replaced by masking
truncated completions (`mask_truncated_completions`, DAPO's "overlong filtering"); "resample"
stops after `max_resample_rounds` extra rounds and trains on what it has.
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .checkpoint import Dist, StepLog, resume, run_settings, save_checkpoint, training_setup
from .config import stable_hash
from .generate import GREEDY_BELOW, Completion, Generator, SamplingConfig, check_matmul_dtype
from .grading import GRADER_NAME, GRADER_VERSION, grade
from .metrics import compare_records
from .model import Qwen3
from .parallel import Placed, place, strategy_problems
from .prompts import PromptConfig, chat_template_of, render
from .seeds import sample_seed
from .tokenizer import Tokenizer
from .train import Example, LogFn, NonFiniteError, TrainConfig, adamw, check_finite, collate, idle_batch, lr_at

RewardFn = Callable[[str, str], float]  # (completion text, gold answer) -> reward
EvalFn = Callable[[Qwen3], dict[str, float]]  # model -> metrics with "accuracy"


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings; names follow TRL's `GRPOConfig` where TRL has the option."""

    # --- rollouts
    num_generations: int = 8
    """G, completions per prompt (the group of GRPO: Shao et al. 2024, DeepSeekMath, arXiv:2402.03300)."""
    prompts_per_step: int = 8
    """Prompts (groups) per step, over all processes."""
    max_new_tokens: int = 256
    """Completion budget; a completion that reaches it is truncated."""
    temperature: float = 1.0
    """Sampling temperature (>= generate.GREEDY_BELOW, 1e-5); the loss scores the same tempered distribution."""
    top_p: float = 1.0
    """Nucleus sampling (Holtzman et al. 2020); 1: off."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end a completion besides the stop tokens."""
    prompt: PromptConfig = PromptConfig()
    """Template that turns a problem into the prompt (the same `render` as evaluation)."""
    generation_batch_size: int = 64
    """Sequences per generation batch on one process (memory knob)."""
    compile: bool = False
    """Compile the engine's decode step."""
    matmul_dtype: str = "model"
    """Precision of the rollouts' weight matmuls (generate.Generator): model (the policy's weights,
    exact), auto (the fastest measured), bfloat16 or int8 copies, re-made after each optimizer step."""

    # --- rewards
    reward_funcs: tuple[str, ...] = ("correct",)
    """Names in `REWARDS`: "correct" (the grader's verdict, 1 or 0: the RLVR reward of DeepSeek-R1,
    Guo et al. 2025, arXiv:2501.12948) and "format" (one non-empty <think>...</think> block before
    the answer: DeepSeek-R1's format reward)."""
    reward_weights: tuple[float, ...] = ()
    """One weight per reward function (TRL's `reward_weights`); empty: all 1."""
    multi_objective_aggregation: str = "sum_then_normalize"
    """How several rewards become one advantage (TRL's name). "sum_then_normalize": GRPO on the
    weighted sum. "normalize_then_sum": GDPO (Liu et al. 2026, "GDPO: Group reward-Decoupled
    Normalization Policy Optimization for Multi-reward RL Optimization", arXiv:2601.05242):
    normalise each reward within its group, take the weighted sum, then normalise over the batch."""

    # --- advantages
    scale_rewards: str = "group"
    """Divide centred rewards by the std of the "group" (GRPO, Shao et al. 2024), of the whole
    "batch" (as REINFORCE++ does, Hu 2025, arXiv:2501.03262), or "none" (Dr. GRPO: Liu et al. 2025,
    "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783, shows the group
    std biases training towards too easy and too hard questions)."""

    # --- loss
    loss_type: str = "grpo"
    """"grpo": token mean per sequence, then mean over sequences (Shao et al. 2024; favours long wrong
    answers, per Liu et al. 2025). "dr_grpo": token sum per sequence divided by the constant
    `max_new_tokens`, mean over sequences (Liu et al. 2025, Dr. GRPO). "dapo": token sum over the
    batch divided by its number of tokens (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement
    Learning System at Scale", arXiv:2503.14476, token-level policy gradient loss)."""
    beta: float = 0.0
    """Weight of the KL penalty to the frozen reference model, estimated per token with Schulman's
    k3 estimator (http://joschu.net/blog/kl-approx.html) as in DeepSeekMath; 0: no reference model
    (the setting of Dr. GRPO and DAPO, and TRL's default)."""
    epsilon: float = 0.2
    """Lower clip range of the importance ratio (PPO, Schulman et al. 2017, arXiv:1707.06347);
    acts only when a batch is reused (`num_iterations` > 1)."""
    epsilon_high: float | None = None
    """Upper clip range; None: `epsilon`. DAPO's "clip-higher" (Yu et al. 2025) uses 0.28 to keep
    exploration alive."""
    num_iterations: int = 1
    """Optimizer steps per batch of rollouts (mu in DeepSeekMath's Algorithm 1)."""
    mask_truncated_completions: bool = False
    """Leave completions cut off by `max_new_tokens` out of the loss (DAPO's overlong filtering)."""
    dynamic_sampling: str = "none"
    """Groups whose rewards are all equal carry no signal. "none": keep them; "skip": drop them;
    "resample": drop them and sample new prompts until `prompts_per_step` groups remain (DAPO's
    dynamic sampling, Yu et al. 2025)."""
    max_resample_rounds: int = 3
    """Extra sampling rounds allowed per step with `dynamic_sampling: resample`."""

    # --- optimisation (AdamW; weight decay on matrices only)
    learning_rate: float = 1e-5
    warmup_steps: int = 0
    """Linear warmup, in optimizer steps."""
    min_lr_ratio: float = 1.0
    """Cosine decay to `learning_rate * min_lr_ratio` over the run; 1: constant after warmup."""
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    """Clip the global gradient norm; 0: off."""
    max_steps: int = 50
    """Steps (batches of rollouts); the optimizer runs `max_steps * num_iterations` updates."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one process (gradient accumulation; memory knob)."""
    gradient_checkpointing: bool = False
    """Recompute block activations in the backward pass (memory knob)."""
    strategy: str = "ddp"
    """How the policy and the reference model are spread over processes (reasoning.parallel): "ddp"
    (a replica per process) or "fsdp" (FSDP2: parameters, gradients and AdamW state sharded)."""
    cpu_offload: bool = False
    """fsdp only: keep the shards, their gradients and the AdamW state in CPU memory (memory knob)."""

    # --- run
    eval_every: int = 0
    """Held-out evaluation every N steps (and always before the first step and after the last)."""
    checkpoint_every: int = 0
    """Full-state checkpoint every N steps (and always after the last)."""
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    """fp32 master weights; bf16 autocast when this resolves to bfloat16 (and, under fsdp, bf16
    all-gathers with fp32 gradient reduction)."""

    # Fields that may change between a run and its resumption: they do not change the trajectory.
    RUN_ONLY: ClassVar[tuple[str, ...]] = ("eval_every", "checkpoint_every", "device", "micro_batch_size",
                                           "generation_batch_size", "gradient_checkpointing", "compile",
                                           "strategy", "cpu_offload")

    def __post_init__(self) -> None:
        check_matmul_dtype(self.matmul_dtype, "grpo.train.matmul_dtype")
        choices = {"loss_type": LOSSES, "scale_rewards": SCALES, "dynamic_sampling": DYNAMIC_SAMPLING,
                   "multi_objective_aggregation": AGGREGATIONS}
        problems = [f"{name} {getattr(self, name)!r} is unknown; use one of {sorted(allowed)}"
                    for name, allowed in choices.items() if getattr(self, name) not in allowed]
        problems += [f"reward function {name!r} is unknown; use names from {sorted(REWARDS)}"
                     for name in self.reward_funcs if name not in REWARDS]
        problems += [msg for bad, msg in [
            (self.num_generations < 2, "num_generations must be >= 2: advantages compare samples of a group"),
            (self.prompts_per_step < 1, "prompts_per_step must be >= 1"),
            (not self.temperature >= GREEDY_BELOW,
             f"temperature must be >= {GREEDY_BELOW:g}: GRPO needs sampled, varied completions"),
            (self.reward_weights and len(self.reward_weights) != len(self.reward_funcs),
             f"reward_weights has {len(self.reward_weights)} entries for {len(self.reward_funcs)} "
             "reward_funcs"),
            (self.beta < 0 or self.epsilon < 0, "beta and epsilon must be >= 0"),
            (self.epsilon_high is not None and self.epsilon_high < self.epsilon,
             "epsilon_high must be >= epsilon"),
            (self.num_iterations < 1 or self.max_steps < 0, "num_iterations must be >= 1 and max_steps >= 0"),
            (self.micro_batch_size < 1 or self.generation_batch_size < 1, "batch sizes must be >= 1"),
            (self.max_resample_rounds < 0, "max_resample_rounds must be >= 0"),
            (self.eval_every < 0 or self.checkpoint_every < 0,
             "eval_every and checkpoint_every must be >= 0"),
        ] if bad] + strategy_problems(self.strategy, self.cpu_offload)
        if problems:
            raise ValueError(f"invalid GRPOConfig: {'; '.join(problems)}")
        SamplingConfig(self.max_new_tokens, self.temperature, 0, self.top_p)  # validates those fields
        _ = self.optim  # validates the optimisation fields

    @property
    def optim(self) -> TrainConfig:
        """The optimisation fields in train.py's terms (its optimizer and schedule are reused)."""
        return TrainConfig(lr=self.learning_rate, min_lr_ratio=self.min_lr_ratio,
                           warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                           betas=(self.adam_beta1, self.adam_beta2), grad_clip=self.max_grad_norm)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_new_tokens, self.temperature, 0, self.top_p, self.stop_strings)


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------

def reward_correct(completion: str, gold: str) -> float:
    """1.0 when the grader accepts the completion's final answer, else 0.0."""
    return float(bool(grade(completion, gold)))


_THINK = re.compile(r"\s*<think>(?P<thought>.*?)</think>(?P<answer>.*)", re.DOTALL)


def reward_format(completion: str, gold: str = "") -> float:
    """1.0 when the completion opens with one non-empty <think>...</think> block followed by an answer."""
    m = _THINK.fullmatch(completion)
    return float(bool(m) and bool(m["thought"].strip()) and bool(m["answer"].strip())
                 and "<think>" not in m["thought"] and "think>" not in m["answer"])


REWARDS: dict[str, RewardFn] = {"correct": reward_correct, "format": reward_format}


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------

STD_EPS = 1e-4  # as in TRL and the book: keeps all-equal groups at advantage 0 instead of 0/0

# Denominator of the centred rewards (P, G) for each `scale_rewards`.
SCALES: dict[str, Callable[[Tensor], Tensor]] = {
    "group": lambda r: r.std(dim=1, keepdim=True) + STD_EPS,
    "batch": lambda r: r.std() + STD_EPS,
    "none": lambda r: torch.ones(()),
}


def group_advantages(rewards: Tensor, scale: str = "group") -> Tensor:
    """(P, G) rewards -> (P, G) advantages: reward minus its group mean, divided per `scale`."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / SCALES[scale](rewards)


def _sum_then_normalize(rewards: Tensor, weights: Tensor, scale: str) -> Tensor:
    return group_advantages(rewards @ weights, scale)


def _normalize_then_sum(rewards: Tensor, weights: Tensor, scale: str) -> Tensor:
    per_reward = torch.stack([group_advantages(rewards[..., k], scale) for k in range(rewards.shape[-1])], -1)
    summed = per_reward @ weights
    return (summed - summed.mean()) / (summed.std() + STD_EPS)


# (P, G, K) rewards of K functions, (K,) weights, scale -> (P, G) advantages.
AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, str], Tensor]] = {
    "sum_then_normalize": _sum_then_normalize,
    "normalize_then_sum": _normalize_then_sum,
}


def compute_advantages(rewards: Tensor, weights: Tensor, cfg: GRPOConfig) -> Tensor:
    """(P, G, K) per-function rewards -> (P, G) advantages, per `multi_objective_aggregation`."""
    return AGGREGATIONS[cfg.multi_objective_aggregation](rewards, weights, cfg.scale_rewards)


def filter_groups(rewards: Tensor) -> Tensor:
    """(P, G) combined rewards -> (P,) bool: True for groups whose rewards differ (they carry signal)."""
    return rewards.amax(dim=1) > rewards.amin(dim=1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------

def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token estimate of KL(policy || reference), exp(r - l) - (r - l) - 1 with l, r the policy's and
    the reference's log-probs of the sampled token: unbiased and >= 0 (Schulman's k3)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


class LossType(NamedTuple):
    """A loss is sum(terms) / sum(units), both per sequence (B,), from (B, T) token losses and mask."""

    terms: Callable[[Tensor, Tensor, GRPOConfig], Tensor]
    units: Callable[[Tensor], Tensor]


LOSSES: dict[str, LossType] = {
    "grpo": LossType(lambda tok, m, cfg: (tok * m).sum(-1) / m.sum(-1).clamp(min=1),
                     lambda m: torch.ones(len(m))),
    "dr_grpo": LossType(lambda tok, m, cfg: (tok * m).sum(-1) / cfg.max_new_tokens,
                        lambda m: torch.ones(len(m))),
    "dapo": LossType(lambda tok, m, cfg: (tok * m).sum(-1), lambda m: m.sum(-1)),
}


def loss_units(mask: Tensor, cfg: GRPOConfig) -> float:
    """The batch's share of the loss denominator: sequences (grpo, dr_grpo) or completion tokens (dapo)."""
    return float(LOSSES[cfg.loss_type].units(mask).sum())


def policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: GRPOConfig,
                ref_logp: Tensor | None = None,
                denom: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate loss (+ beta * k3 KL) of a batch, reduced per `cfg.loss_type`.

    logp, old_logp, ref_logp, mask: (B, T) over completion tokens (mask 0 elsewhere); adv: (B,).
    `denom` is the global batch's units when this batch is one share of it (default: this batch's).
    Stats are sums over masked tokens (tokens, clipped_low, clipped_high, kl), to be pooled by the caller.
    """
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None].to(logp.dtype)
    high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    per_token = -torch.min(ratio * a, ratio.clamp(1 - cfg.epsilon, 1 + high) * a)
    stats = {"tokens": float(mask.sum()),
             "clipped_low": float((((ratio < 1 - cfg.epsilon) & (a < 0)) * mask).sum()),
             "clipped_high": float((((ratio > 1 + high) & (a > 0)) * mask).sum())}
    if cfg.beta:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference model's log-probs (ref_logp)")
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + cfg.beta * kl
        stats["kl"] = float((kl.detach() * mask).sum())
    loss_type = LOSSES[cfg.loss_type]
    denom = float(loss_type.units(mask).sum()) if denom is None else denom
    return loss_type.terms(per_token, mask, cfg).sum() / max(denom, 1.0), stats


def sequence_logps(model: torch.nn.Module, inputs: Tensor, targets: Tensor,
                   temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """(B, T) log-probs of `targets` under softmax(model(inputs) / temperature) and (B, T) entropies
    of that distribution (without gradient)."""
    logits = model(inputs) / temperature  # (B, T, V) fp32
    logz = logits.logsumexp(-1)
    logp = logits.gather(-1, targets[..., None])[..., 0] - logz
    with torch.no_grad():
        entropy = logz - (logits.softmax(-1) * logits).sum(-1)
    return logp, entropy


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

class PromptStream:
    """Training rows in a fresh (seed, epoch) shuffle each epoch; `pos`, the number of prompts drawn,
    is the data position."""

    def __init__(self, rows: Sequence[dict[str, Any]], seed: int, pos: int = 0):
        if not rows:
            raise ValueError("no training rows: GRPO needs problems with gold answers")
        missing = [i for i, r in enumerate(rows) if "problem" not in r or "answer" not in r]
        if missing:
            raise ValueError(f"training rows {missing[:5]} lack 'problem' or 'answer'; "
                             "use the dataset schema (reasoning.data)")
        self.rows, self.seed, self.pos = list(rows), seed, pos
        self._epoch, self._order = -1, []

    def take(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        """The next n (position, row) pairs."""
        out = []
        for pos in range(self.pos, self.pos + n):
            epoch, i = divmod(pos, len(self.rows))
            if epoch != self._epoch:
                self._order = list(range(len(self.rows)))
                random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
                self._epoch = epoch
            out.append((pos, self.rows[self._order[i]]))
        self.pos += n
        return out


@dataclass
class Group:
    """One prompt's G samples. `prompt` and `completions` are held only by the rank that sampled them."""

    pos: int  # position in the prompt stream: the group's global id
    rewards: Tensor  # (G, K) unweighted, one column per reward function
    lengths: list[int]
    truncated: list[bool]
    prompt: list[int] | None = None
    completions: list[Completion] | None = None


def sample_groups(generator: Generator, items: Sequence[tuple[int, dict[str, Any]]], cfg: GRPOConfig,
                  reward_fns: Mapping[str, RewardFn]) -> list[Group]:
    """Roll out G completions for each (position, row) and score them with every reward function."""
    template = chat_template_of(generator, cfg.prompt)
    prompts = [generator.tokenizer.encode(render(row["problem"], cfg.prompt, template)) for _, row in items]
    outs = generator.generate(prompts, cfg.sampling, n=cfg.num_generations,
                              seeds=[sample_seed(cfg.seed, pos) for pos, _ in items])
    groups = []
    for (pos, row), prompt, comps in zip(items, prompts, outs):
        rewards = torch.tensor([[float(fn(c.text, str(row["answer"]))) for fn in reward_fns.values()]
                                for c in comps], dtype=torch.float32)
        groups.append(Group(pos, rewards, [len(c.tokens) for c in comps], [c.truncated for c in comps],
                            prompt, comps))
    return groups


def _all_groups(local: list[Group], comm: Dist) -> list[Group]:
    """Every rank's groups in stream order: the sampling rank's objects, summaries of the others."""
    if comm.world == 1:
        return local
    gathered: list[Any] = [None] * comm.world
    dist.all_gather_object(gathered, [(g.pos, g.rewards.tolist(), g.lengths, g.truncated) for g in local])
    mine = {g.pos: g for g in local}
    groups = [mine[pos] if pos in mine else Group(pos, torch.tensor(r, dtype=torch.float32), lens, trunc)
              for part in gathered for pos, r, lens, trunc in part]
    return sorted(groups, key=lambda g: g.pos)


DYNAMIC_SAMPLING = ("none", "skip", "resample")


def collect_groups(generator: Generator, stream: PromptStream, cfg: GRPOConfig,
                   reward_fns: Mapping[str, RewardFn], weights: Tensor,
                   comm: Dist) -> tuple[list[Group], list[Group], int]:
    """(groups to train on, all groups sampled, rounds), per `dynamic_sampling`; both lists global."""
    kept: list[Group] = []
    sampled: list[Group] = []
    rounds, need = 0, cfg.prompts_per_step
    max_rounds = 1 + (cfg.max_resample_rounds if cfg.dynamic_sampling == "resample" else 0)
    while need > 0 and rounds < max_rounds:
        items = stream.take(need)
        groups = _all_groups(sample_groups(generator, items[comm.rank::comm.world], cfg, reward_fns), comm)
        sampled += groups
        if cfg.dynamic_sampling == "none":
            kept += groups
        else:
            keep = filter_groups(torch.stack([g.rewards @ weights for g in groups]))
            kept += [g for g, k in zip(groups, keep.tolist()) if k]
        rounds += 1
        need = cfg.prompts_per_step - len(kept) if cfg.dynamic_sampling == "resample" else 0
    return kept, sampled, rounds


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------

def build_examples(groups: Sequence[Group], adv: Tensor,
                   cfg: GRPOConfig) -> tuple[list[Example], list[float]]:
    """This rank's training sequences as train.py examples (prompt + completion, loss mask on the
    completion; all 0 for a truncated one with `mask_truncated_completions`) and their advantages."""
    examples, advs = [], []
    for g, a in zip(groups, adv.tolist()):
        if g.completions is None:
            continue  # another rank's group
        for c, ai in zip(g.completions, a):
            target = 0 if cfg.mask_truncated_completions and c.truncated else 1
            examples.append((g.prompt + c.tokens, [0] * len(g.prompt) + [target] * len(c.tokens)))
            advs.append(ai)
    return examples, advs


def _check_reference(ref_model: Qwen3 | Placed | None, cfg: GRPOConfig) -> None:
    if cfg.beta and ref_model is None:
        raise ValueError("beta > 0 needs a frozen reference model: pass ref_model, or set beta: 0")


def make_optimizer(model: Qwen3, cfg: GRPOConfig) -> torch.optim.AdamW:
    """train.py's AdamW with GRPO's optimisation fields."""
    return adamw(model, cfg.optim)


def grpo_step(policy: Placed, ref: Placed | None, generator: Generator, stream: PromptStream,
              optimizer: torch.optim.Optimizer, step: int, cfg: GRPOConfig,
              reward_fns: Mapping[str, RewardFn] | None = None, autocast: Any = nullcontext()) -> dict[str, float]:
    """One GRPO step (`step` counts from 0): rollouts with `generator` (on `policy.model`), rewards,
    advantages, `num_iterations` updates of the policy (`parallel.place`; `ref`: the placed frozen
    reference model, needed when beta > 0), after which `policy.model` holds the updated weights.

    Returns the step's metrics (global over ranks). `reward_fns` defaults to `cfg.reward_funcs`.
    """
    t0 = time.perf_counter()
    comm = policy.comm
    _check_reference(ref, cfg)
    reward_fns = reward_fns or {name: REWARDS[name] for name in cfg.reward_funcs}
    weights = torch.tensor(cfg.reward_weights or [1.0] * len(reward_fns))
    if len(weights) != len(reward_fns):
        raise ValueError(f"{len(cfg.reward_weights)} reward_weights for {len(reward_fns)} reward functions")
    device = policy.device

    policy.model.eval()
    with autocast:
        kept, sampled, rounds = collect_groups(generator, stream, cfg, reward_fns, weights, comm)
    t_rollout = time.perf_counter() - t0  # sampling and rewards

    all_rewards = torch.cat([g.rewards for g in sampled])  # (N, K)
    check_rewards(all_rewards, list(reward_fns), step)
    combined = all_rewards @ weights
    lengths = [n for g in sampled for n in g.lengths]
    metrics = {
        "reward_mean": combined.mean().item(), "reward_std": combined.std().item(),
        **{f"reward_{name}": all_rewards[:, k].mean().item() for k, name in enumerate(reward_fns)},
        "frac_zero_std": 1 - filter_groups(combined.view(len(sampled), -1)).float().mean().item(),
        "completion_len_mean": sum(lengths) / len(lengths), "completion_len_max": float(max(lengths)),
        "truncation_rate": sum(t for g in sampled for t in g.truncated) / len(lengths),
        "groups": float(len(kept)), "sampling_rounds": float(rounds), "data_position": float(stream.pos),
    }

    totals = dict.fromkeys(("loss", "grad_norm", "tokens", "clipped_low", "clipped_high", "kl", "entropy"),
                           0.0)
    if kept:
        adv = compute_advantages(torch.stack([g.rewards for g in kept]), weights, cfg)  # (P, G)
        examples, advs = build_examples(kept, adv, cfg)
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))  # less padding
        chunks = [order[j:j + cfg.micro_batch_size] for j in range(0, len(order), cfg.micro_batch_size)]
        batches = [(*collate(examples, idx, device), torch.tensor([advs[i] for i in idx], device=device))
                   for idx in chunks]
        [units] = comm.sum([sum(loss_units(b[2], cfg) for b in batches)], device)
        totals.update(_update(policy, ref, optimizer, batches, units, step, cfg, autocast))
        policy.gather()  # fsdp: the next rollouts and evaluations see the update

    dt = time.perf_counter() - t0
    n_iter = cfg.num_iterations
    tokens = max(totals["tokens"], 1.0)  # over all iterations
    metrics.update({
        "loss": totals["loss"] / n_iter, "grad_norm": totals["grad_norm"] / n_iter,
        "clip_ratio_low": totals["clipped_low"] / tokens, "clip_ratio_high": totals["clipped_high"] / tokens,
        "clip_ratio": (totals["clipped_low"] + totals["clipped_high"]) / tokens,
        "entropy": totals["entropy"] / tokens, "kl": totals["kl"] / tokens,
        "lr": lr_at((step + 1) * n_iter - 1, cfg.optim, cfg.max_steps * n_iter),
        "step_time": dt, "rollout_time": t_rollout, "tokens_per_s": sum(lengths) / dt,
    })
    return metrics


def check_rewards(rewards: Tensor, names: Sequence[str], step: int) -> None:
    """NonFiniteError when a reward function returned NaN or infinity for some of the (N, K)
    `rewards` (one column per function in `names`): it would turn every weight into NaN."""
    problems = []
    for k, name in enumerate(names):
        column = rewards[:, k]
        bad = ~torch.isfinite(column)
        if bool(bad.any()):
            values = "/".join(sorted({str(v) for v in column[bad].tolist()}))
            problems.append(f"reward function {name!r} returned {values} for {int(bad.sum())} of "
                            f"{len(column)} completions")
    if problems:
        raise NonFiniteError(f"step {step + 1}: {'; '.join(problems)}; stopped before the update. Make the "
                             "reward function return a finite number for every completion (e.g. 0 for an "
                             "unparsable one)")


def _update(policy: Placed, ref: Placed | None, optimizer: torch.optim.Optimizer, batches: list[tuple],
            units: float, step: int, cfg: GRPOConfig, autocast: Any) -> dict[str, float]:
    """`num_iterations` optimizer steps on this rank's micro-batches; pooled (global) sums of the stats."""
    comm, device = policy.comm, policy.device
    policy.trained.train()
    policy.trained.gradient_checkpointing = cfg.gradient_checkpointing
    # Every rank runs as many micro-batches as the busiest (idle ones add nothing).
    batches = batches + [(*idle_batch(device), torch.zeros(1, device=device))] * (
        comm.max(len(batches), device) - len(batches))
    n_iter = cfg.num_iterations
    old: list[Tensor] = []
    ref_logps: list[Tensor | None] = []
    keys = ("loss", "tokens", "clipped_low", "clipped_high", "kl", "entropy")
    local = dict.fromkeys(keys, 0.0)
    grad_norm = 0.0
    for it in range(n_iter):
        loss_before = local["loss"]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step * n_iter + it, cfg.optim, cfg.max_steps * n_iter)
        for j, (inputs, targets, mask, adv) in enumerate(batches):
            with policy.accumulate(last=j == len(batches) - 1):
                with autocast:
                    logp, entropy = sequence_logps(policy.net, inputs, targets, cfg.temperature)
                if it == 0:  # the policy that sampled: ratio 1 now, the anchor of later iterations
                    old.append(logp.detach())
                    ref_logps.append(_ref_logps(ref.net, inputs, targets, cfg, autocast) if cfg.beta else None)
                loss, stats = policy_loss(logp, old[j], adv, mask, cfg, ref_logps[j], denom=units)
                # DDP and FSDP average the ranks' gradients: scale this share back to a sum.
                (loss * comm.world).backward()
            local["loss"] += loss.item()
            local["entropy"] += float((entropy * mask).sum())
            for k, v in stats.items():
                local[k] += v
        norm = policy.clip_grad_norm(cfg.max_grad_norm)
        check_finite(step + 1 if n_iter == 1 else f"{step + 1} (iteration {it + 1} of {n_iter})",
                     {"loss": local["loss"] - loss_before, "gradient norm": norm})
        grad_norm += norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    policy.trained.eval()
    pooled = dict(zip(keys, comm.sum([local[k] for k in keys], device)))
    return {**pooled, "grad_norm": grad_norm}


@torch.no_grad()
def _ref_logps(ref_model: Qwen3, inputs: Tensor, targets: Tensor, cfg: GRPOConfig, autocast: Any) -> Tensor:
    with autocast:
        return sequence_logps(ref_model, inputs, targets, cfg.temperature)[0]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def reward_up_accuracy_down(rewards: Sequence[float], evals: Sequence[dict[str, Any]]) -> bool:
    """True when the mean training reward since the previous evaluation rose over the window before
    it while held-out accuracy fell: the policy is fitting the training rewards, not the task.

    rewards[i] is step i+1's mean reward; evals are {"step", "accuracy"} in order. The window before
    the first evaluated one is the first step's reward (the starting model's).
    """
    if len(evals) < 2:
        return False
    (s0, a0), (s1, a1) = ((e["step"], e["accuracy"]) for e in evals[-2:])
    start = evals[-3]["step"] if len(evals) >= 3 else 0
    now, before = rewards[s0:s1], rewards[start:s0] or rewards[:1]
    if not now or not before:
        return False
    return sum(now) / len(now) > sum(before) / len(before) and a1 < a0


def _evaluate(model: Qwen3, eval_fn: EvalFn, step: int, comm: Dist) -> dict[str, float]:
    """Rank 0 evaluates; every rank gets the metrics."""
    result = [eval_fn(model) if comm.rank == 0 else None]
    if comm.world > 1:
        dist.broadcast_object_list(result, src=0)
    metrics = result[0]
    if "accuracy" not in metrics:
        raise ValueError(f"eval_fn must return a dict with 'accuracy'; it returned keys {sorted(metrics)}")
    return {"step": step, **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}}


def train_grpo(model: Qwen3, ref_model: Qwen3 | None, tokenizer: Tokenizer,
               train_rows: Sequence[dict[str, Any]], cfg: GRPOConfig, out_dir: str | Path,
               eval_fn: EvalFn | None = None, log: LogFn | None = None,
               reward_fns: Mapping[str, RewardFn] | None = None) -> dict[str, Any]:
    """Train `model` in place with GRPO; resume from `out_dir` when it holds a checkpoint.

    `eval_fn(model)` (rank 0) returns held-out metrics with "accuracy"; it runs before the first
    step, every `eval_every` steps and after the last. `log(step, metrics)` (rank 0) gets the
    step's metrics (and eval_* ones). Per-step metrics are also appended to out_dir/metrics.jsonl.
    `reward_fns` replaces the functions named by `cfg.reward_funcs` (e.g. a custom task reward).
    Returns {steps, resumed_from, reward_mean, evals, wall_s}.
    """
    t_start = time.perf_counter()
    with training_setup(cfg.device, cfg.dtype, "GRPO", cfg.strategy, cfg.cpu_offload) as (device, dtype, comm):
        return _train_grpo(model, ref_model, tokenizer, train_rows, cfg, Path(out_dir), eval_fn, log,
                           reward_fns, device, dtype, comm, t_start)


def _train_grpo(model: Qwen3, ref_model: Qwen3 | None, tokenizer: Tokenizer, rows: Sequence[dict[str, Any]],
                cfg: GRPOConfig, out_dir: Path, eval_fn: EvalFn | None, log: LogFn | None,
                reward_fns: Mapping[str, RewardFn] | None, device: torch.device, dtype: torch.dtype, comm: Dist,
                t_start: float) -> dict[str, Any]:
    reward_fns = dict(reward_fns or {name: REWARDS[name] for name in cfg.reward_funcs})
    _check_reference(ref_model, cfg)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    stream = PromptStream(rows, cfg.seed)
    data_sha = stable_hash([[str(r["problem"]), str(r["answer"])] for r in rows])
    model.to(device=device, dtype=torch.float32)  # fp32 master weights, on the device the engine runs on
    policy = place(model, cfg.strategy, comm, device, dtype, cfg.cpu_offload)
    ref = (place(ref_model, cfg.strategy, comm, device, dtype, cfg.cpu_offload,
                 frozen=True) if cfg.beta else None)
    rollout_dtype = dtype if policy.sharded else torch.float32
    if rollout_dtype != torch.float32:
        # fsdp: the fp32 masters are the shards; the plain model only generates and evaluates, so it holds the
        # weights in the compute dtype the forward uses (FSDP's param_dtype): half the bytes, and a bf16 cache.
        model.to(rollout_dtype)
    optimizer = make_optimizer(policy.trained, cfg)
    torch.manual_seed(cfg.seed + comm.rank)
    random.seed(cfg.seed + comm.rank)

    key = {**run_settings(cfg), "reward functions": list(reward_fns), "training data": data_sha}
    state: dict[str, Any] = {"step": 0, "data_position": 0, "rewards": [], "evals": []}
    saved = resume(out_dir, policy.net, optimizer, key, comm)
    if saved is not None:
        state = {k: saved[k] for k in state}
        policy.gather()  # fsdp: the engine and the evaluation start from the checkpoint's weights
    resumed_from = state["step"]
    stream.pos = state["data_position"]
    generator = Generator(model, tokenizer, compile=cfg.compile, batch_size=cfg.generation_batch_size,
                          matmul_dtype=cfg.matmul_dtype)
    emit = StepLog(out_dir, resumed_from, comm.rank, log)

    def evaluate_now() -> dict[str, float]:
        ev = _evaluate(model, eval_fn, state["step"], comm)
        state["evals"].append(ev)
        out = {f"eval_{k}": v for k, v in ev.items() if k != "step"}
        if reward_up_accuracy_down(state["rewards"], state["evals"]):
            msg = (f"step {state['step']}: training reward rose while held-out accuracy fell "
                   f"({state['evals'][-2]['accuracy']:.3f} -> {ev['accuracy']:.3f}); the policy may be "
                   "overfitting its rewards: check the completions, lower the learning rate or stop early")
            warnings.warn(msg, stacklevel=2)
            out["warning_reward_up_accuracy_down"] = 1.0
        return out

    with emit:
        if eval_fn and not state["evals"]:
            emit(state["step"], evaluate_now())
        while state["step"] < cfg.max_steps:
            metrics = grpo_step(policy, ref, generator, stream, optimizer, state["step"], cfg, reward_fns, autocast)
            state["step"] += 1
            state["data_position"] = stream.pos
            state["rewards"].append(metrics["reward_mean"])
            end = state["step"] == cfg.max_steps
            if eval_fn and (end or (cfg.eval_every and state["step"] % cfg.eval_every == 0)):
                metrics.update(evaluate_now())
            emit(state["step"], metrics)
            if end or (cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0):
                save_checkpoint(out_dir, policy.net, optimizer, state, key, comm)
    if rollout_dtype != torch.float32:  # hand back the fp32 masters, as ddp does: free the cache, then gather
        model.free_caches()
        model.to(torch.float32)
        policy.gather()
    model.eval()
    return {"steps": state["step"], "resumed_from": resumed_from,
            "reward_mean": state["rewards"][-1] if state["rewards"] else None,
            "evals": state["evals"], "wall_s": time.perf_counter() - t_start}


def run_summary(rows: Sequence[dict[str, Any]], result: dict[str, Any],
                start_records: Sequence[dict[str, Any]] = (), last_records: Sequence[dict[str, Any]] = (),
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(step curve, evaluation curve, metrics) of a finished run, from its per-step log `rows`
    (out_dir/metrics.jsonl) and `train_grpo`'s result.

    The curves are apart because DVC plots want one shape per file: one row per step (rewards,
    lengths, clip ratios, KL, ...), one per held-out evaluation. The metrics hold the start and
    final held-out accuracy (95% Wilson), the mean reward of the first and last tenth of the
    steps and the warnings raised; with the starting and final evaluation's records, also the
    paired test of "GRPO beat its starting model" on the same problems (accuracy difference with
    its 95% bootstrap interval, McNemar's exact p). Raises ValueError without evaluations.
    """
    steps = [r for r in rows if "reward_mean" in r]
    evals = [{"step": r["step"], **{k[5:]: v for k, v in r.items() if k.startswith("eval_")}}
             for r in rows if "eval_accuracy" in r]
    if not evals:
        raise ValueError("the run logged no held-out evaluation: give train_grpo an eval_fn")
    curve = [{k: v for k, v in r.items() if not k.startswith("eval_")} for r in steps]
    tenth = max(1, len(steps) // 10)
    metrics = {
        **{f"start_{k}": evals[0][k] for k in ("accuracy", "ci_low", "ci_high")},
        **{k: evals[-1][k] for k in ("accuracy", "ci_low", "ci_high", "n")},
        "accuracy_gain": evals[-1]["accuracy"] - evals[0]["accuracy"],
        "reward_first_tenth": sum(r["reward_mean"] for r in steps[:tenth]) / tenth,
        "reward_last_tenth": sum(r["reward_mean"] for r in steps[-tenth:]) / tenth,
        "warnings_reward_up_accuracy_down": sum(r.get("warning_reward_up_accuracy_down", 0) for r in rows),
        "steps": result["steps"], "resumed_from": result["resumed_from"], "wall_s": result["wall_s"],
        "train_s": sum(r["step_time"] for r in steps),
        "grader": GRADER_NAME, "grader_version": GRADER_VERSION,  # which grader gave the rewards and verdicts
    }
    if start_records and last_records:
        c = compare_records(start_records, last_records)
        metrics.update({f"paired_{k}": c[k] for k in ("diff", "ci_low", "ci_high", "p_value")})
    return curve, evals, metrics
