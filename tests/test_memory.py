"""reasoning.memory against reality on the CPU: exact byte counts of weights, gradients, AdamW state,
FSDP2 shards and the engine's KV cache, and the activation estimate against a measured peak of the
training loops' own forward/backward (within a stated factor)."""

from __future__ import annotations

import re
import weakref
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from reasoning import memory
from reasoning.generate import Generator, SamplingConfig
from reasoning.grpo import GRPOConfig, _ref_logps, policy_loss, sequence_logps
from reasoning.memory import Setup, estimate
from reasoning.model import PRESETS, ModelConfig, Qwen3
from reasoning.tokenizer import Tokenizer
from reasoning.train import TrainConfig, _token_loss_sum, adamw
from reasoning.weights import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]

# Shapes whose activations are dominated by different terms: the logits (a large vocabulary), the
# blocks (wide, untied), and the tiny preset in between.
SHAPES = {
    "tiny": PRESETS["tiny"],
    "vocab": ModelConfig(16_384, 64, 2, 4, 2, 16, 128, rope_theta=1e4, max_position_embeddings=512),
    "wide": ModelConfig(320, 256, 3, 8, 2, 32, 768, rope_theta=1e4, max_position_embeddings=512,
                        tie_word_embeddings=False),
}


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storages created under the mode and still alive; `peak` their maximum.
    Storages of `held` tensors (weights, gradients, ...) existed before and are not counted."""

    def __init__(self, held=()):
        super().__init__()
        self.known = {id(t.untyped_storage()) for t in held}
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live and key not in self.known and storage.nbytes():
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)


def tensor_bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in {id(t): t for t in tensors}.values())


@pytest.mark.parametrize("preset", ["tiny", "tiny-untied"])
def test_weights_gradients_and_adamw_state_are_the_exact_bytes_of_a_training_step(preset):
    cfg = PRESETS[preset]
    model = Qwen3(cfg)
    model.init_weights(0)
    params = list(model.parameters())  # a tied embedding is one parameter
    assert Counter(tuple(p.shape) for p in params) == Counter(
        memory.root_shapes(cfg) + cfg.num_hidden_layers * memory.block_shapes(cfg))
    opt = adamw(model, TrainConfig())
    tokens = torch.randint(0, cfg.vocab_size, (2, 9))
    _token_loss_sum(model, (tokens[:, :-1], tokens[:, 1:], torch.ones(2, 8)), nullcontext()).backward()
    opt.step()
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    est = estimate(cfg, Setup(dtype="fp32"))
    assert est.parts["weights"] == tensor_bytes(params) == 4 * cfg.n_params
    assert est.parts["gradients"] == tensor_bytes(p.grad for p in params)
    assert est.parts["optimizer"] == tensor_bytes(state)


def test_fsdp_shards_are_the_bytes_fully_shard_allocates():
    fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = 7  # rows that do not divide evenly: FSDP2 pads dim 0, rank 0 holds ceil(rows / world)
    dist.init_process_group("fake", store=fake_pg.FakeStore(), rank=0, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        for preset in ("tiny", "tiny-untied"):
            cfg = PRESETS[preset]
            model = Qwen3(cfg)
            for block in model.layers:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            shards = tensor_bytes(p.to_local() for p in model.parameters())
            est = estimate(cfg, Setup(strategy="fsdp", gpus=world, dtype="fp32"))
            assert est.parts["weights"] == est.parts["gradients"] == shards > 4 * cfg.n_params // world
    finally:
        dist.destroy_process_group()


# (shape, stage, dtype, gradient checkpointing, beta)
CASES = [("tiny", "sft", "bf16", False, 0.0), ("tiny", "sft", "fp32", True, 0.0),
         ("vocab", "sft", "fp32", False, 0.0), ("vocab", "grpo", "bf16", True, 0.1),
         ("wide", "sft", "bf16", True, 0.0), ("wide", "grpo", "bf16", False, 0.1),
         ("wide", "grpo", "fp32", False, 0.0)]


@pytest.mark.parametrize("shape,stage,dtype,ckpt,beta", CASES)
def test_activation_estimate_is_within_its_stated_factor_of_a_measured_step(shape, stage, dtype, ckpt, beta):
    """The loops' own calls (train.py's loss; grpo.py's log-probs, reference and loss) on the second
    micro-batch (gradients already allocated): the tensors created and alive at the peak, autocast's
    weight copies included. The stated factor: within 10% (measured here: 0.99-1.07)."""
    cfg, B, T = SHAPES[shape], 2, 128
    torch.manual_seed(0)
    model = Qwen3(cfg)
    model.init_weights(0)
    model.train()
    model.gradient_checkpointing = ckpt
    ref = Qwen3(cfg).eval().requires_grad_(False) if beta else None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    inputs, targets = torch.randint(0, cfg.vocab_size, (2, B, T))
    mask = torch.ones(B, T)
    grpo_cfg = GRPOConfig(beta=beta)

    def micro_batch() -> None:
        if stage == "sft":
            _token_loss_sum(model, (inputs, targets, mask), autocast).backward()
            return
        with autocast:
            logp, _ = sequence_logps(model, inputs, targets)
        ref_logp = _ref_logps(ref, inputs, targets, grpo_cfg, autocast) if beta else None
        policy_loss(logp, logp.detach(), torch.ones(B), mask, grpo_cfg, ref_logp)[0].backward()

    micro_batch()
    held = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters())]
    mode = LiveBytes(held + ([*ref.parameters(), *ref.buffers()] if ref else []))
    with mode:
        micro_batch()
    setup = Setup(stage=stage, micro_batch=B, max_len=T, max_new_tokens=T // 2, dtype=dtype, beta=beta)
    est = estimate(cfg, setup, checkpointing=ckpt)
    predicted = est.parts["activations"] + est.parts.get("autocast_copies", 0)
    assert 0.9 <= mode.peak / predicted <= 1.1, (mode.peak, predicted)


def test_kv_cache_is_exactly_the_engines_and_rollouts_within_the_stated_factor(tiny_ckpt):
    """GRPO's rollouts under bf16 autocast decode with the fp32 training weights: an fp32 cache sized to
    the batch and the longest context (rounded to 64), autocast's bf16 weight copies, the prefill."""
    model = load_model(tiny_ckpt)
    prompts = [list(range(5, 25 + 7 * i)) for i in range(4)]
    sampling = SamplingConfig(max_new_tokens=40, temperature=1.0)
    mode = LiveBytes([*model.parameters(), *model.buffers()])
    with mode, torch.autocast("cpu", dtype=torch.bfloat16):
        Generator(model, Tokenizer(tiny_ckpt), batch_size=16).generate(prompts, sampling, n=4)
    context = max(map(len, prompts)) + sampling.max_new_tokens
    setup = Setup(stage="grpo", rollout_batch=16, num_generations=4, max_len=context, max_new_tokens=40)
    est = estimate(model.config, setup)
    cache = [b for c in model.kv_caches() for b in (c.k_cache, c.v_cache)]
    assert est.parts["kv_cache"] == tensor_bytes(cache) == memory.kv_cache_bytes(model.config, 16, 128, 4)
    predicted = est.parts["kv_cache"] + est.parts["autocast_copies"] + \
        memory.generation_transient_bytes(model.config, setup, 2)
    assert 0.8 <= mode.peak / predicted <= 1.2, (mode.peak, predicted)


def test_what_each_choice_changes():
    cfg = PRESETS["qwen3-8b"]
    ddp = estimate(cfg, Setup())
    fsdp = estimate(cfg, Setup(strategy="fsdp", gpus=8))
    states = ("weights", "gradients", "optimizer")
    # 16 bytes per parameter replicated (ZeRO's count), an eighth of it (and padding) per GPU sharded
    assert sum(ddp.parts[k] for k in states) == 16 * cfg.n_params + 4 * memory.n_tensors(cfg)
    assert cfg.n_params * 16 / 8 <= sum(fsdp.parts[k] for k in states) < cfg.n_params * 16 / 8 * 1.001
    assert estimate(cfg, Setup(gpus=8)).parts["ddp_buckets"] == 4 * cfg.n_params
    assert estimate(cfg, Setup(stage="grpo", gpus=8)).parts["ddp_buckets"] == 4 * cfg.n_params  # grpo: DDP too
    offload = estimate(cfg, Setup(strategy="fsdp", gpus=8, cpu_offload=True))
    assert offload.host == sum(fsdp.parts[k] for k in states) and offload.parts["weights"] == 0
    assert offload.peak < fsdp.peak
    ckpt = estimate(cfg, Setup(grad_checkpointing=True))
    assert ckpt.parts["activations"] < ddp.parts["activations"] / 3
    grpo = estimate(cfg, Setup(stage="grpo"))
    with_ref = estimate(cfg, Setup(stage="grpo", beta=0.04))
    assert with_ref.parts["reference"] == 4 * cfg.n_params and with_ref.peak > grpo.peak
    # ddp decodes with its fp32 training model; fsdp with its gathered copy in the compute dtype (2P in bf16)
    grpo_fsdp = estimate(cfg, Setup(stage="grpo", strategy="fsdp", gpus=8))
    assert grpo.parts["kv_cache"] == 2 * grpo_fsdp.parts["kv_cache"] and grpo_fsdp.parts["rollout_weights"] == 2 * cfg.n_params
    fp32_fsdp = estimate(cfg, Setup(stage="grpo", strategy="fsdp", gpus=8, dtype="fp32"))
    assert fp32_fsdp.parts["rollout_weights"] == 4 * cfg.n_params and fp32_fsdp.parts["kv_cache"] == grpo.parts["kv_cache"]


def test_models_are_read_from_presets_checkpoints_config_files_and_hub_names(tiny_ckpt):
    assert memory.load_config("qwen3-4b")[1] == PRESETS["qwen3-4b"]
    assert memory.load_config(str(tiny_ckpt))[1] == PRESETS["tiny"]
    assert memory.load_config(str(tiny_ckpt / "config.json"))[1] == PRESETS["tiny"]
    assert memory.load_config("Qwen/Qwen3-8B") == ("Qwen/Qwen3-8B", PRESETS["qwen3-8b"])  # no download
    assert memory.load_config("hf:Qwen/Qwen3-0.6B-Base")[1] == PRESETS["qwen3-0.6b"]
    with pytest.raises(ValueError, match="preset .* checkpoint directory .* hub id"):
        memory.load_config("no-such-model")


def test_cli_prints_each_part_the_peak_and_the_verdict(capsys):
    memory.main(["--model", "qwen3-8b", "--strategy", "fsdp", "--gpus", "8", "--max-len", "2048",
                 "--gpu-memory", "80GiB"])
    out = capsys.readouterr().out
    est = estimate(PRESETS["qwen3-8b"], Setup(strategy="fsdp", gpus=8))
    assert list(est.parts) == ["weights", "gradients", "optimizer", "gathered", "activations"]
    for key, value in est.parts.items():
        assert re.search(rf"^{re.escape(memory.PART_NAMES[key])} +{value / 2**30:.2f}\b", out, re.M), key
    assert "with gradient checkpointing" in out
    assert re.search(rf"peak \(forward/backward\)\s+{est.peak / 2**30:.2f}", out)
    assert "80 GiB GPU: fits" in out


@pytest.mark.parametrize("argv,message", [
    (["--model", "tiny", "--cpu-offload"], "cpu_offload needs strategy fsdp"),
    (["--model", "tiny", "--stage", "eval", "--strategy", "fsdp"], "evaluation replicates the model"),
    (["--model", "tiny", "--gpu-memory", "lots"], "write e.g. 80GiB"),
    (["--model", "tiny", "--stage", "grpo", "--max-new-tokens", "4096"], "max_new_tokens"),
    (["--model", "nowhere"], "neither a preset"),
])
def test_bad_settings_are_refused_naming_the_fix(argv, message):
    with pytest.raises(SystemExit, match=message):
        memory.main(argv)


def test_readme_tables_are_the_tools_output(capsys):
    """Each `python -m reasoning.memory --table ...` command of the README is followed by its output."""
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^    python -m reasoning\.memory (--table[^\n#]*)", readme, re.M)
    assert len(commands) == 2
    for args in commands:
        memory.main(args.split())
        out = capsys.readouterr().out.strip()
        assert out.count("\n") == 1 + 4 * 2 * len(memory.TABLE_GPUS)  # header, rule, one row per combination
        assert out in readme, f"README's table for `{args.strip()}` is stale: rerun the command"
