"""GRPO: advantages, each loss variant and clipping on hand-computed tensors, KL, filtering,
GDPO, truncation masking, a run on the tiny model, resume identity and a 2-process run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reasoning.config import from_dict
from reasoning.files import read_json, read_jsonl
from reasoning.generate import Completion, Generator
from reasoning.grpo import (
    GRPOConfig,
    Group,
    PromptStream,
    build_examples,
    collect_groups,
    compute_advantages,
    filter_groups,
    grpo_step,
    group_advantages,
    kl_k3,
    make_optimizer,
    policy_loss,
    reward_correct,
    reward_format,
    reward_up_accuracy_down,
    train_grpo,
)
from reasoning.tokenizer import Tokenizer
from reasoning.checkpoint import Dist
from reasoning.parallel import place
from reasoning.train import NonFiniteError
from reasoning.weights import load_model

EPS = 1e-4  # the std epsilon of the advantages
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def near(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=atol, rtol=1e-5)


def cfg_(**kw) -> GRPOConfig:
    return GRPOConfig(**{"device": "cpu", **kw})


# --- advantages -------------------------------------------------------------------------------

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_group_advantages_scale_group():
    adv = group_advantages(REWARDS, "group")
    s1 = math.sqrt(4 * 0.5**2 / 3)  # unbiased std of [1, 0, 0, 1]
    s2 = math.sqrt((3 * 0.25**2 + 0.75**2) / 3)  # of [1, 1, 1, 0]
    expected = [[0.5 / (s1 + EPS), -0.5 / (s1 + EPS), -0.5 / (s1 + EPS), 0.5 / (s1 + EPS)],
                [0.25 / (s2 + EPS)] * 3 + [-0.75 / (s2 + EPS)],
                [0.0] * 4]  # an all-equal group carries no signal
    near(adv, expected)


def test_group_advantages_scale_batch_and_none():
    mean = 5 / 12  # the batch of 12 rewards holds five 1s
    std = math.sqrt((5 * (1 - mean) ** 2 + 7 * mean**2) / 11)
    centred = [[0.5, -0.5, -0.5, 0.5], [0.25, 0.25, 0.25, -0.75], [0.0] * 4]
    near(group_advantages(REWARDS, "batch"), [[c / (std + EPS) for c in row] for row in centred])
    near(group_advantages(REWARDS, "none"), centred)


def test_gdpo_keeps_reward_combinations_apart_where_grpo_collapses_them():
    # Group A: (correct, format) = (1, 0) vs (0, 0); group B: (1, 1) vs (0, 0). Summed rewards [1, 0]
    # and [2, 0] normalise to the same GRPO advantages; GDPO gives B the larger ones (Liu et al. 2026).
    rewards = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])  # (P, G, K)
    w = torch.ones(2)
    grpo = compute_advantages(rewards, w, cfg_(reward_funcs=("correct", "format")))
    gdpo = compute_advantages(rewards, w, cfg_(reward_funcs=("correct", "format"),
                                               multi_objective_aggregation="normalize_then_sum"))
    near(grpo[0], grpo[1].tolist(), atol=1e-4)  # equal up to the std epsilon
    # By hand: per-reward group normalisation of [1, 0] is +-0.5 / (std + eps) with std = sqrt(0.5);
    # sums are A: [a, -a], B: [2a, -2a]; batch normalisation of [a, -a, 2a, -2a] (std sqrt(10/3) a).
    a = 0.5 / (math.sqrt(0.5) + EPS)
    sd = math.sqrt((2 * a**2 + 2 * (2 * a) ** 2) / 3)
    near(gdpo, [[a / (sd + EPS), -a / (sd + EPS)], [2 * a / (sd + EPS), -2 * a / (sd + EPS)]])


def test_filter_groups_keeps_groups_whose_rewards_differ():
    assert filter_groups(REWARDS).tolist() == [True, True, False]
    assert filter_groups(torch.tensor([[0.3, 0.3]])).tolist() == [False]


# --- losses ------------------------------------------------------------------------------------

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # sequence 1 has 2 tokens, sequence 2 has 1
ADV = torch.tensor([1.0, -3.0])


@pytest.mark.parametrize("loss_type, value, grads", [
    # ratio 1, so each token's loss is -A: [[-1, -1], [3]].
    ("grpo", (-2 / 2 + 3 / 1) / 2, [[-1 / 2 / 2] * 2 + [0], [3 / 1 / 2, 0, 0]]),  # token mean, sequence mean
    ("dr_grpo", (-2 / 4 + 3 / 4) / 2, [[-1 / 4 / 2] * 2 + [0], [3 / 4 / 2, 0, 0]]),  # / max_new_tokens (4)
    ("dapo", (-2 + 3) / 3, [[-1 / 3] * 2 + [0], [3 / 3, 0, 0]]),  # / all 3 tokens
])
def test_loss_variants_by_hand(loss_type, value, grads):
    cfg = cfg_(loss_type=loss_type, max_new_tokens=4)
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.3, 0.6, 0.1]])).requires_grad_()
    loss, stats = policy_loss(logp, logp.detach(), ADV, MASK, cfg)
    loss.backward()
    assert loss.item() == pytest.approx(value)
    near(logp.grad, grads)
    assert stats["tokens"] == 3 and stats["clipped_low"] == stats["clipped_high"] == 0


def test_global_denominator_makes_shares_add_up_to_the_whole_batch():
    cfg = cfg_(loss_type="dapo")
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.3, 0.6, 0.1]]))
    whole, _ = policy_loss(logp, logp, ADV, MASK, cfg)
    parts = [policy_loss(logp[i:i + 1], logp[i:i + 1], ADV[i:i + 1], MASK[i:i + 1], cfg, denom=3.0)[0]
             for i in range(2)]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item())


@pytest.mark.parametrize("epsilon_high, high_clip", [(0.28, 1.28), (None, 1.2)])
def test_clipped_ratio_by_hand(epsilon_high, high_clip):
    ratios = torch.tensor([[0.5, 0.9, 1.25, 1.5], [0.5, 0.9, 1.25, 1.5]])
    old = torch.zeros(2, 4)
    logp = ratios.log().requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    cfg = cfg_(loss_type="dapo", epsilon=0.2, epsilon_high=epsilon_high)
    loss, stats = policy_loss(logp, old, adv, torch.ones(2, 4), cfg)
    loss.backward()
    # A > 0: -min(r, clip(r)): only r above 1 + epsilon_high is clipped (no gradient).
    pos = [-0.5, -0.9, -min(1.25, high_clip), -min(1.5, high_clip)]
    # A < 0: max(r, clip(r)): only r below 1 - epsilon is clipped.
    neg = [0.8, 0.9, 1.25, 1.5]
    assert loss.item() == pytest.approx((sum(pos) + sum(neg)) / 8)
    pos_grad = [-0.5, -0.9, -1.25 if 1.25 < high_clip else 0.0, 0.0]
    neg_grad = [0.0, 0.9, 1.25, 1.5]
    near(logp.grad, [[g / 8 for g in pos_grad], [g / 8 for g in neg_grad]])
    assert stats["clipped_low"] == 1 and stats["clipped_high"] == (1 if high_clip > 1.25 else 2)


def test_kl_k3_is_nonnegative_zero_at_equality_and_unbiased():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    assert (kl_k3(a, b) >= 0).all()
    assert kl_k3(a, a).abs().max().item() == 0
    assert kl_k3(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))).item() == pytest.approx(
        0.5 - math.log(0.5) - 1)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    # E_{x~p}[k3] is exactly KL(p || q).
    assert (p * kl_k3(p.log(), q.log())).sum().item() == pytest.approx((p * (p / q).log()).sum().item())


def test_beta_adds_the_kl_penalty_and_needs_a_reference():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    cfg = cfg_(loss_type="dapo", beta=0.1)
    loss, stats = policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), cfg, ref_logp=ref)
    kl = 0.5 - math.log(0.5) - 1  # token 1; token 2 has KL 0
    assert loss.item() == pytest.approx(0.1 * kl / 2)
    assert stats["kl"] == pytest.approx(kl)
    with pytest.raises(ValueError, match="reference"):
        policy_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), cfg)


def test_truncated_completions_are_masked_out_of_the_loss():
    done = Completion(tokens=[5, 6, 1], finish_reason="stop")
    cut = Completion(tokens=[7, 8, 9, 10], finish_reason="length")
    group = Group(0, torch.zeros(2, 1), [3, 4], [False, True], prompt=[1, 2], completions=[done, cut])
    adv = torch.tensor([[0.5, -0.5]])
    for masked, cut_mask in [(True, [0, 0, 0, 0]), (False, [1, 1, 1, 1])]:
        examples, advs = build_examples([group], adv, cfg_(mask_truncated_completions=masked))
        assert examples == [([1, 2, 5, 6, 1], [0, 0, 1, 1, 1]), ([1, 2, 7, 8, 9, 10], [0, 0] + cut_mask)]
        assert advs == [0.5, -0.5]
    # Another rank's group (no completions here) contributes nothing on this rank.
    assert build_examples([Group(1, torch.zeros(2, 1), [1, 1], [False, False])], adv, cfg_()) == ([], [])


# --- rewards -------------------------------------------------------------------------------------

def test_rewards():
    assert reward_correct("so the answer is \\boxed{4}", "4") == 1.0
    assert reward_correct("so the answer is \\boxed{5}", "4") == 0.0
    assert reward_format("<think>\n2 + 2 = 4\n</think>\n\n\\boxed{4}") == 1.0
    for bad in ["\\boxed{4}", "<think></think> \\boxed{4}", "<think>ok</think>", "<think>a<think>b</think> 4",
                "<think>a</think> 4 </think>"]:
        assert reward_format(bad) == 0.0, bad


# --- dynamic sampling on a scripted generator ---------------------------------------------------

class ScriptedGenerator:
    """Prompts of "same" problems get G identical completions; the others' completions alternate a/b."""

    class tokenizer:
        @staticmethod
        def encode(text: str) -> list[int]:
            return [1] if "same" in text else [2]

    def generate(self, prompts, sampling, n, seeds):
        return [[Completion(tokens=[3], text="a" if p == [1] or j % 2 else "b", finish_reason="stop")
                 for j in range(n)] for p in prompts]


def _scripted(mode: str, rows: list[dict], rounds: int = 10):
    stream = PromptStream(rows, seed=0)
    order = [row["problem"] for _, row in PromptStream(rows, seed=0).take(40)]
    cfg = cfg_(num_generations=4, prompts_per_step=3, dynamic_sampling=mode, max_resample_rounds=rounds)
    reward = {"b": lambda text, gold: float(text == "b")}
    kept, sampled, n_rounds = collect_groups(ScriptedGenerator(), stream, cfg, reward, torch.ones(1),
                                             Dist(torch.device("cpu")))
    return kept, sampled, n_rounds, stream.pos, order


@pytest.mark.parametrize("mode", ["none", "skip", "resample"])
def test_dynamic_sampling(mode):
    rows = [{"problem": f"{'same' if i % 2 else 'mixed'} {i}", "answer": "0"} for i in range(10)]
    kept, sampled, rounds, pos, order = _scripted(mode, rows)
    informative = [not p.startswith("same") for p in order]
    if mode == "none":
        assert (len(kept), rounds, pos) == (3, 1, 3) and kept == sampled
    elif mode == "skip":
        assert rounds == 1 and pos == 3 and len(kept) == sum(informative[:3])
    else:  # draws exactly the missing number each round until 3 informative groups
        assert len(kept) == 3 and all(informative[g.pos] for g in kept)
        assert pos == [i for i, x in enumerate(informative) if x][2] + 1
        assert len(sampled) == pos and rounds > 1
    assert all(g.rewards.shape == (4, 1) for g in sampled)


def test_resample_gives_up_after_max_rounds():
    rows = [{"problem": f"same {i}", "answer": "0"} for i in range(10)]
    kept, sampled, rounds, pos, _ = _scripted("resample", rows, rounds=2)
    assert kept == [] and rounds == 3 and pos == 9  # 3 prompts a round, none informative


def test_prompt_stream_is_a_pure_function_of_its_position():
    rows = [{"problem": str(i), "answer": str(i)} for i in range(5)]
    a = PromptStream(rows, seed=3)
    first = a.take(7) + a.take(6)
    b = PromptStream(rows, seed=3, pos=7)
    assert b.take(6) == first[7:]
    assert sorted(r["problem"] for _, r in first[:5]) == [str(i) for i in range(5)]  # each row once per epoch
    with pytest.raises(ValueError, match="answer"):
        PromptStream([{"problem": "x"}], seed=0)


# --- config ----------------------------------------------------------------------------------------

def test_config_rejects_unknown_options_with_the_allowed_ones():
    with pytest.raises(ValueError, match="loss_type 'ppo' is unknown.*dapo"):
        GRPOConfig(loss_type="ppo")
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="reward_weights has 1 entries for 2"):
        GRPOConfig(reward_funcs=("correct", "format"), reward_weights=(1.0,))
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(GRPOConfig, {"kl_coef": 0.1})
    cfg = from_dict(GRPOConfig, {"reward_funcs": ["correct", "format"], "reward_weights": [1.0, 0.2],
                                 "prompt": {"template": "chat", "think": True}})
    assert cfg.reward_weights == (1.0, 0.2) and cfg.prompt.think


def test_reward_up_accuracy_down():
    rewards = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    evals = [{"step": 0, "accuracy": 0.5}, {"step": 3, "accuracy": 0.4}]
    assert reward_up_accuracy_down(rewards, evals)  # steps 1-3 above step 1 alone, accuracy down
    assert not reward_up_accuracy_down(rewards, [evals[0], {"step": 3, "accuracy": 0.6}])
    evals.append({"step": 6, "accuracy": 0.3})
    assert reward_up_accuracy_down(rewards, evals)
    assert not reward_up_accuracy_down([0.6, 0.5, 0.4, 0.3, 0.2, 0.1], evals)  # reward fell too
    assert not reward_up_accuracy_down(rewards, evals[:1])


# --- end to end on the tiny model -----------------------------------------------------------------

ROWS = [{"id": str(i), "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(12)]


def e_share(text: str, gold: str) -> float:
    """A reward the tiny random model can learn quickly: the share of 'e' characters."""
    return text.count("e") / max(len(text), 1)


TINY = dict(num_generations=4, prompts_per_step=4, max_new_tokens=8, learning_rate=1e-3, micro_batch_size=16,
            device="cpu", seed=0)


def test_grpo_step_raises_a_rewarded_behaviour(tiny_ckpt):
    model, tok = load_model(tiny_ckpt), Tokenizer(tiny_ckpt)
    # The random tiny model takes off after 10-20 steps, depending on the draws (six seeds: +0.09 to
    # +0.55 mean reward by step 20); by step 30 this one has risen from 0.015 to 0.40.
    cfg = cfg_(**{**TINY, "max_steps": 30})
    gen, stream, opt = Generator(model, tok), PromptStream(ROWS, cfg.seed), make_optimizer(model, cfg)
    history = [grpo_step(place(model), None, gen, stream, opt, step, cfg, {"e": e_share})
               for step in range(cfg.max_steps)]
    rewards = [m["reward_mean"] for m in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, rewards
    for key in ["reward_std", "frac_zero_std", "completion_len_mean", "completion_len_max", "truncation_rate",
                "clip_ratio", "entropy", "kl", "grad_norm", "step_time", "tokens_per_s", "lr"]:
        assert math.isfinite(history[-1][key]), key
    assert history[0]["completion_len_max"] <= 8 and stream.pos == 4 * cfg.max_steps


def test_resume_ends_identical_to_an_uninterrupted_run(tiny_ckpt, tmp_path):
    tok = Tokenizer(tiny_ckpt)
    cfg = cfg_(**{**TINY, "max_steps": 4, "checkpoint_every": 2, "num_iterations": 2, "epsilon_high": 0.28,
                  "dynamic_sampling": "skip", "beta": 0.05})
    straight = load_model(tiny_ckpt)
    logged: list[tuple[int, dict]] = []
    train_grpo(straight, load_model(tiny_ckpt), tok, ROWS, cfg, tmp_path / "a", reward_fns={"e": e_share},
               log=lambda s, m: logged.append((s, m)))
    assert [s for s, _ in logged] == [1, 2, 3, 4]

    class Killed(Exception):
        pass

    def die_at_3(step, metrics):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train_grpo(load_model(tiny_ckpt), load_model(tiny_ckpt), tok, ROWS, cfg, tmp_path / "b",
                   reward_fns={"e": e_share}, log=die_at_3)
    resumed = load_model(tiny_ckpt)
    out = train_grpo(resumed, load_model(tiny_ckpt), tok, ROWS, cfg, tmp_path / "b",
                     reward_fns={"e": e_share})
    assert out["resumed_from"] == 2 and out["steps"] == 4
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in rows_a] == [r["reward_mean"] for r in rows_b]
    assert [r["kl"] for r in rows_a] == [r["kl"] for r in rows_b] and rows_a[-1]["kl"] > 0

    with pytest.raises(ValueError, match="different learning_rate;"):
        train_grpo(load_model(tiny_ckpt), load_model(tiny_ckpt), tok, ROWS, replace(cfg, learning_rate=1e-4),
                   tmp_path / "b", reward_fns={"e": e_share})

    # Periodic evaluation: before the first step and at the end; a falling accuracy while the
    # reward rises raises the collapse warning.
    logged.clear()
    with pytest.warns(UserWarning, match="held-out accuracy fell"):
        train_grpo(load_model(tiny_ckpt), load_model(tiny_ckpt), tok, ROWS, cfg, tmp_path / "c",
                   eval_fn=lambda model: {"accuracy": 1.0 - len(logged) / 10},
                   reward_fns={"e": lambda text, gold: float(len(logged))},
                   log=lambda s, m: logged.append((s, m)))
    evals = [(s, m["eval_accuracy"]) for s, m in logged if "eval_accuracy" in m]
    assert evals == [(0, 1.0), (4, pytest.approx(0.6))]
    assert logged[-1][1]["warning_reward_up_accuracy_down"] == 1.0


DIST_SCRIPT = """
import json, os, sys, torch
import torch.distributed as dist
from safetensors.torch import save_file
import reasoning.grpo as core
from reasoning.config import from_dict
from reasoning.files import read_json, read_jsonl
from reasoning.grpo import GRPOConfig, train_grpo
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model
from tests.test_grpo import ROWS, e_share

torch.set_num_threads(1)
dist.init_process_group("gloo")  # one group for the three runs (train_grpo leaves a group it did not open)
ckpt, out, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
for name, strategy in (("ddp", "ddp"), ("fsdp", "fsdp")):
    model = load_model(ckpt)
    cfg = from_dict(GRPOConfig, {**settings, "strategy": strategy})
    train_grpo(model, load_model(ckpt), Tokenizer(ckpt), ROWS, cfg, f"{out}/{name}", reward_fns={"e": e_share})
    if os.environ["RANK"] == "0":
        save_file({k: v.contiguous() for k, v in model.named_parameters()}, f"{out}/{name}.safetensors")

class Killed(Exception):
    pass

def lr_until_step_3(step, *args):  # every rank dies in step 3 (one iteration per step), after step 2's checkpoint
    if step >= 2:
        raise Killed
    return real_lr(step, *args)

real_lr, core.lr_at = core.lr_at, lr_until_step_3
try:
    train_grpo(load_model(ckpt), load_model(ckpt), Tokenizer(ckpt), ROWS,
               from_dict(GRPOConfig, {**settings, "strategy": "fsdp"}), f"{out}/killed", reward_fns={"e": e_share})
except Killed:
    pass
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_ddp_and_fsdp_match_one_and_resume_on_one(tiny_ckpt, tmp_path):
    """DDP and FSDP (policy and reference model sharded) on 2 processes end where 1 process does;
    an FSDP run killed on 2 processes resumes on 1 (FSDP over one rank, or DDP) and ends there too."""
    # DAPO's token-level loss and filtering make uneven, token-weighted shares across the ranks (idle
    # micro-batches); beta > 0 brings in the reference model.
    settings = {**TINY, "max_steps": 3, "prompts_per_step": 5, "loss_type": "dapo", "dynamic_sampling": "skip",
                "micro_batch_size": 3, "beta": 0.05, "checkpoint_every": 2}
    script = tmp_path / "run.py"
    script.write_text(DIST_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", str(script), str(tiny_ckpt), str(tmp_path), json.dumps(settings)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tok = Tokenizer(tiny_ckpt)
    model = load_model(tiny_ckpt)
    train_grpo(model, load_model(tiny_ckpt), tok, ROWS, cfg_(**settings), tmp_path / "one", reward_fns={"e": e_share})
    start = load_model(tiny_ckpt)
    moved = max((p - p0).abs().max().item() for p, p0 in zip(model.parameters(), start.parameters()))
    assert moved > 1e-3  # training did change the weights

    def assert_matches_one(params: dict[str, torch.Tensor], what: str) -> None:
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name], p.detach(), atol=2e-5, rtol=1e-4, msg=f"{what}: {name}")

    one = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    for name in ("ddp", "fsdp"):
        assert_matches_one(load_file(str(tmp_path / f"{name}.safetensors")), name)
        rows = read_jsonl(tmp_path / name / "metrics.jsonl")
        assert [r["reward_mean"] for r in one] == pytest.approx([r["reward_mean"] for r in rows])
        assert [r["groups"] for r in one] == [r["groups"] for r in rows]
        assert [r["kl"] for r in one] == pytest.approx([r["kl"] for r in rows], rel=1e-4) and one[-1]["kl"] > 0

    assert read_json(tmp_path / "killed" / "step_00000002" / "state.json")["world_size"] == 2
    for strategy in ("fsdp", "ddp"):
        shutil.copytree(tmp_path / "killed", tmp_path / f"resumed_{strategy}")
        resumed = load_model(tiny_ckpt)
        out = train_grpo(resumed, load_model(tiny_ckpt), tok, ROWS, cfg_(**settings, strategy=strategy),
                         tmp_path / f"resumed_{strategy}", reward_fns={"e": e_share})
        assert out["resumed_from"] == 2 and out["steps"] == 3
        assert_matches_one({k: v.detach() for k, v in resumed.named_parameters()}, f"resumed under {strategy}")



def test_fsdp_in_bf16_rolls_out_from_a_bf16_copy_and_hands_back_fp32_masters(tiny_ckpt, tmp_path):
    """Under fsdp the shards hold the fp32 masters, so the plain model the engine decodes with is kept in
    the compute dtype (half the bytes, a bf16 KV cache: what lets GRPO on Qwen3-8B fit 8 x 80 GiB); when
    training ends it holds the fp32 masters again, not their bf16 roundings."""
    model, start = load_model(tiny_ckpt), load_model(tiny_ckpt)
    seen = []

    def reward(text: str, gold: str) -> float:  # called while the rollouts' model and cache are alive
        seen.append((model.embed_tokens.weight.dtype, model.kv_caches()[0].k_store.dtype))
        return e_share(text, gold)

    out = train_grpo(model, None, Tokenizer(tiny_ckpt), ROWS, cfg_(**{**TINY, "max_steps": 2}, strategy="fsdp",
                                                                    dtype="bfloat16"),
                     tmp_path / "run", reward_fns={"e": reward})
    assert out["steps"] == 2 and set(seen) == {(torch.bfloat16, torch.bfloat16)}
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())
    moved = max((params[n] - p0).abs().max().item() for n, p0 in start.named_parameters())
    assert moved > 1e-4
    assert any((p.to(torch.bfloat16).float() != p).any() for p in params.values())  # not bf16-rounded


# --- non-finite rewards, losses and gradients (issue 14) ---------------------------------------------

def test_a_nan_reward_stops_the_step_before_any_weight_changes(tiny_ckpt, tmp_path):
    model, tok = load_model(tiny_ckpt), Tokenizer(tiny_ckpt)
    cfg = cfg_(**{**TINY, "max_steps": 3})
    calls = []

    def correct(text: str, gold: str) -> float:  # NaN for 2 of the 16 completions of step 2
        calls.append(1)
        return float("nan") if len(calls) in (20, 25) else e_share(text, gold)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"step 2: reward function 'correct' returned nan for 2 of 16 "):
        train_grpo(model, None, tok, ROWS, cfg, tmp_path / "run", reward_fns={"correct": correct})
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    # and grpo_step alone refuses it without touching the weights
    model = load_model(tiny_ckpt)
    gen, stream, opt = Generator(model, tok), PromptStream(ROWS, cfg.seed), make_optimizer(model, cfg)
    with pytest.raises(NonFiniteError, match=r"step 1: reward function 'bad' returned inf for 16 of 16"):
        grpo_step(place(model), None, gen, stream, opt, 0, cfg, {"bad": lambda text, gold: float("inf")})
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_nan_weight_stops_grpo_at_the_loss(tiny_ckpt):
    model, tok = load_model(tiny_ckpt), Tokenizer(tiny_ckpt)
    cfg = cfg_(**TINY)
    gen, stream, opt = Generator(model, tok), PromptStream(ROWS, cfg.seed), make_optimizer(model, cfg)
    with torch.no_grad():
        model.norm.weight[0] = float("nan")  # the generation's logits too: rewards stay finite (e_share)
    with pytest.raises(NonFiniteError, match=r"step 1: the loss is nan and the gradient norm is nan"):
        grpo_step(place(model), None, gen, stream, opt, 0, cfg, {"e": e_share})
