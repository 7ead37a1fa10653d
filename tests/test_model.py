"""The from-scratch Qwen3 against transformers' Qwen3ForCausalLM (test-only oracle), and checkpoint I/O."""

from __future__ import annotations

import json

import pytest
import torch

from reasoning.model import PRESETS
from reasoning.model import Qwen3
from reasoning.weights import CheckpointError, load_model, read_config, save_model
from tests.conftest import make_checkpoint

transformers = pytest.importorskip("transformers")


def hf_model(ckpt):
    return transformers.Qwen3ForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32).eval()


@pytest.mark.parametrize("preset", ["tiny", "tiny-untied"])
def test_logits_match_transformers(tmp_path, tiny_tokenizer_path, preset):
    ckpt = make_checkpoint(tmp_path / preset, preset, tiny_tokenizer_path, seed=1)
    ours, ref = load_model(ckpt), hf_model(ckpt)
    idx = torch.randint(0, PRESETS[preset].vocab_size, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(idx), ref(idx).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4
    assert a.std() > 0.1  # the comparison is not between two near-constant outputs


def test_transformers_checkpoint_loads_into_ours(tmp_path, tiny_tokenizer_path):
    """A checkpoint saved by transformers itself (not by us) loads with the same logits."""
    cfg = transformers.Qwen3Config(**{k: v for k, v in PRESETS["tiny-untied"].to_hf().items()
                                      if k not in ("architectures", "model_type", "torch_dtype")})
    torch.manual_seed(0)
    ref = transformers.Qwen3ForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    idx = torch.randint(0, cfg.vocab_size, (1, 17))
    with torch.no_grad():
        assert (ours(idx) - ref(idx).logits).abs().max() <= 1e-4


def test_sharded_round_trip(tmp_path, tiny_tokenizer_path):
    ckpt = make_checkpoint(tmp_path / "sharded", "tiny-untied", tiny_tokenizer_path, max_shard_bytes=40_000)
    shards = sorted(p.name for p in ckpt.glob("*.safetensors"))
    assert len(shards) > 2 and (ckpt / "model.safetensors.index.json").exists()
    ours, ref = load_model(ckpt), hf_model(ckpt)
    idx = torch.randint(0, 320, (1, 9))
    with torch.no_grad():
        assert (ours(idx) - ref(idx).logits).abs().max() <= 1e-4
    # and back out through our saver: identical tensors
    again = load_model(save_model(ours, tmp_path / "again"))
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.parametrize("prefix_only", [False, True])
def test_cached_decode_equals_full_forward(tiny_ckpt, prefix_only):
    model = load_model(tiny_ckpt)
    idx = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)
        model.setup_caches(2, 64)
        # prefix_only: attend to the written cache positions only (kv_len), as generation does
        step = [model(idx[:, :5], torch.arange(5), kv_len=5 if prefix_only else None)]
        for t in range(5, 12):
            step.append(model(idx[:, t:t + 1], torch.tensor([t]), kv_len=t + 1 if prefix_only else None))
    assert torch.allclose(torch.cat(step, 1), full, atol=1e-4)


def test_a_row_does_not_depend_on_its_slot_its_padding_or_its_neighbours(tiny_ckpt):
    """Right-padded prefill into chosen slots, then decode steps at per-row positions, give each row
    what it gets alone in slot 0 (continuous batching relies on it)."""
    model = load_model(tiny_ckpt)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(1, 320, (6,), generator=g), torch.randint(1, 320, (10,), generator=g)
    nxt = torch.randint(1, 320, (2, 3), generator=g)  # three decode tokens for each row
    with torch.no_grad():
        model.setup_caches(1, 32)
        alone = [model(a[None], torch.arange(6), kv_len=6)[:, -1]]
        for t in range(3):
            alone.append(model(nxt[:1, t:t + 1], torch.tensor([6 + t]), kv_len=7 + t)[:, -1])
        model.setup_caches(4, 64)
        idx = torch.zeros(2, 10, dtype=torch.long)
        idx[0, :6], idx[1] = a, b  # row a right-padded with 4 zeros
        slots = torch.tensor([3, 1])
        first = model(idx, torch.arange(10), slots=slots, kv_len=10, logits_at=torch.tensor([5, 9]))[:, 0]
        for c in model.kv_caches():  # compaction: slots 3, 1 -> 0, 1 (row a's padding comes along)
            c.copy_rows(torch.tensor([3, 1]), torch.tensor([0, 1]), 10)
        together = [first[:1]]
        for t in range(3):
            pos = torch.tensor([[6 + t], [10 + t]])
            together.append(model(nxt[:, t:t + 1], pos, kv_len=11 + t)[:1, -1])
    for x, y in zip(alone, together):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_close_to_fp32(tiny_ckpt, dtype):
    idx = torch.randint(0, 320, (1, 10))
    with torch.no_grad():
        ref, low = load_model(tiny_ckpt)(idx), load_model(tiny_ckpt, dtype=dtype)(idx)
    assert low.dtype == torch.float32  # logits always come back in fp32
    assert (ref.softmax(-1) - low.softmax(-1)).abs().max() < 0.05


@pytest.mark.parametrize("low_dtype", [torch.bfloat16, torch.int8])
def test_low_precision_matmuls_close_to_fp32_and_weights_untouched(tiny_ckpt, low_dtype):
    model = load_model(tiny_ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 320, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(idx)
        model.set_matmul_dtype(low_dtype)
        low = model(idx)
        model.set_matmul_dtype(None)
        again = model(idx)
    assert low.dtype == torch.float32 and not torch.equal(low, ref)  # the low-precision copies were used...
    assert (ref.softmax(-1) - low.softmax(-1)).abs().max() < 0.05  # ...within their rounding
    assert torch.equal(again, ref)  # and switching back is exact
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("low_dtype", [torch.bfloat16, torch.int8])
def test_low_precision_copies_follow_weight_updates(tiny_ckpt, low_dtype):
    """An optimizer step between generations (as in RL) must not leave stale low-precision copies."""
    model = load_model(tiny_ckpt)
    idx = torch.randint(0, 320, (1, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.set_matmul_dtype(low_dtype)
        old = model(idx)
        model.set_matmul_dtype(None)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(idx).logsumexp(-1).mean().backward()
    opt.step()
    with torch.no_grad():
        ref = model(idx)
        model.set_matmul_dtype(low_dtype)
        new = model(idx)
    assert (new.softmax(-1) - ref.softmax(-1)).abs().max() < 0.05
    assert (new.softmax(-1) - old.softmax(-1)).abs().max() > 0.05  # the update moved the outputs


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_tokenizer_path):
    ckpt = make_checkpoint(tmp_path / "c", "tiny", tiny_tokenizer_path)
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(ckpt)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path, tiny_tokenizer_path):
    ckpt = make_checkpoint(tmp_path / "m", "tiny", tiny_tokenizer_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches.*mlp"):
        load_model(ckpt)
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 128, 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing.*layers.2"):
        load_model(ckpt)
    with pytest.raises(CheckpointError, match="config.json"):
        read_config(tmp_path)


def test_hub_unreachable_names_the_local_alternative(monkeypatch, tmp_path):
    from reasoning.hub import HubError
    from reasoning.weights import resolve
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="set load_base.source: Qwen3-0.6B, after downloading it .* with "
                                       "`hf download Qwen/Qwen3-0.6B --local-dir Qwen3-0.6B`"):
        resolve("hf:Qwen/Qwen3-0.6B", cache_dir=str(tmp_path), setting="load_base.source")


def test_presets_param_counts():
    assert abs(PRESETS["qwen3-0.6b"].n_params / 1e6 - 596) < 1  # 0.6B with tied embeddings
    assert sum(p.numel() for p in Qwen3(PRESETS["tiny-untied"]).parameters()) == PRESETS["tiny-untied"].n_params


# ---------------------------------------------------------------------------------------------
# config.json keys left out, and non-finite weights (issue 14)

OPTIONAL_KEYS = ("tie_word_embeddings", "rope_theta", "max_position_embeddings", "rms_norm_eps", "head_dim",
                 "rope_parameters", "rope_scaling")


def test_pruned_config_reads_as_transformers_does(tmp_path):
    """A config.json without the optional keys means transformers' Qwen3Config defaults (untied,
    rope_theta 1e4, 32768 positions, head_dim 128), not our dataclass defaults: same fields, same logits."""
    from reasoning.model import ModelConfig
    cfg = ModelConfig(320, 64, 2, 4, 2, 128, 128, rope_theta=10_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, max_position_embeddings=32_768)
    model = Qwen3(cfg)
    model.init_weights(1, std=0.2)
    ckpt = save_model(model, tmp_path / "pruned")
    hf = json.loads((ckpt / "config.json").read_text())
    for key in OPTIONAL_KEYS:
        hf.pop(key, None)
    (ckpt / "config.json").write_text(json.dumps(hf))

    assert read_config(ckpt) == cfg
    ref_cfg = transformers.Qwen3Config.from_pretrained(ckpt)
    assert (ref_cfg.tie_word_embeddings, ref_cfg.max_position_embeddings, ref_cfg.head_dim) == (False, 32_768, 128)
    ours, ref = load_model(ckpt), hf_model(ckpt)
    assert not torch.equal(ours.lm_head.weight, ours.embed_tokens.weight)  # the stored head is used
    idx = torch.randint(0, 320, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(idx), ref(idx).logits
    assert (a - b).abs().max().item() <= 1e-4 and a.std() > 0.1


def test_null_kv_heads_means_one_per_query_head():
    from reasoning.model import ModelConfig
    base = {k: v for k, v in PRESETS["tiny"].to_hf().items() if k != "num_key_value_heads"}
    assert ModelConfig.from_hf({**base, "num_key_value_heads": None}).num_key_value_heads == 4
    with pytest.raises(ValueError, match="multiple of num_key_value_heads \\(32\\)"):  # absent: Qwen3Config's 32
        ModelConfig.from_hf(base)


def test_save_refuses_non_finite_weights(tmp_path):
    model = Qwen3(PRESETS["tiny"])
    model.init_weights(0)
    with torch.no_grad():
        model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*nan"):
        save_model(model, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


def test_load_refuses_non_finite_weights(tmp_path, tiny_tokenizer_path):
    """Tensor bytes overwritten in place (the header intact): a clear error naming the tensor,
    not a model that silently generates token 0."""
    from safetensors import safe_open
    ckpt = make_checkpoint(tmp_path / "bad", "tiny", tiny_tokenizer_path)
    f = ckpt / "model.safetensors"
    raw = bytearray(f.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:header])
    start, _ = meta["model.norm.weight"]["data_offsets"]
    raw[header + start: header + start + 200] = b"\xff" * 200  # 50 fp32 NaNs
    f.write_bytes(bytes(raw))
    with safe_open(str(f), "pt") as sf:
        assert not torch.isfinite(sf.get_tensor("model.norm.weight")).all()
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*50 non-finite"):
        load_model(ckpt)


def test_int8_quantization_is_per_channel_and_within_half_a_step():
    from reasoning.model import Int8Weight, linear_as
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 64, generator=g)
    w[1] *= 100  # one large row must not cost the others their resolution
    w[4] = 0  # an all-zero row quantizes to zeros, not NaN
    q = Int8Weight.quantize(w)
    assert q.q.dtype == torch.int8 and q.q.shape == w.shape and q.scales.shape == (6,)
    back = q.q.float() * q.scales.float()[:, None]
    step = w.abs().amax(1) / 127
    # within half a quantization step, plus the bf16 rounding of the scale (2^-8 relative)
    assert ((back - w).abs() <= step[:, None] * (0.5 + 127 * 2 ** -8) + 1e-12).all()
    assert torch.equal(q.q[4], torch.zeros(64, dtype=torch.int8))
    x = torch.randn(3, 5, 64, generator=g)
    y = linear_as(x, q)
    assert y.shape == (3, 5, 6) and y.dtype == torch.float32
    assert torch.allclose(y, x @ back.T, rtol=0.02, atol=0.02 * (x @ back.T).abs().max().item())
