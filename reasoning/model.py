"""Qwen3 (dense) from scratch, in the style of gpt-fast's model.py.

Design choices:
- Module names follow Hugging Face's Qwen3 layout minus the `model.` prefix, so weight loading
  is a strict state-dict load with one prefix rule (see weights.py), not a translation table.
- The KV cache is one pair of static buffers per layer, seen as (slots, kv heads, positions, head
  dim) for the generation at hand, allocated by `setup_caches` and only ever grown: a model holds
  one cache, sized by its largest generation's slots x positions. Every cache row ("slot") holds one sequence from position 0; each row of a forward
  pass names its slot (`slots`, default the first B) and its own positions (`input_pos`, per row), so
  a decode batch can mix sequences of different lengths and a finished sequence's slot can take a
  new prompt while the others keep decoding (continuous batching, see generate.py). Writes go in
  place at (slot, position); a growing `torch.cat` cache would recompile every step.
- Prompts of different lengths are prefilled together right-padded: a token attends to positions
  <= its own only, so the padding after a prompt never reaches it, and the padding's cache entries
  are overwritten by generated tokens before any query can see them. A row's logits therefore do
  not depend on what else is in the batch.
- Decode attends only to the filled prefix of the cache (`kv_len`), and grouped-query attention
  shares each K/V head with its query heads inside SDPA (`enable_gqa`) instead of copying the
  cache `n_heads / n_kv_heads` times per step: both costs grow with the context. `kv_len=None`
  attends to the whole cache, masked: fixed shapes, which a CUDA graph needs (generate.py).
- The weights stay in the model's dtype (fp32: exact, the training copy); `set_matmul_dtype`
  makes the Linear layers multiply by cached copies in another dtype (bf16, or weight-only int8
  with per-channel scales), so generation reads fewer bytes per token where that is faster on
  the hardware (see generate.py) without a second model.
- `forward(idx)` without `input_pos` is the training/scoring path: full causal attention, no
  cache, optional gradient checkpointing per block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 40_960

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention"
            )

    @property
    def n_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        attn = h * d * (self.num_attention_heads * 2 + self.num_key_value_heads * 2) + 2 * d
        block = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * block + h + head

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` that `transformers.Qwen3ForCausalLM` loads."""
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **dataclasses.asdict(self),
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
            "use_sliding_window": False,
            "initializer_range": 0.02,
        }

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Read the fields we model from a Hugging Face `config.json`; refuse other architectures.

        A key the file leaves out reads as transformers' `Qwen3Config` default (HF_DEFAULTS), not
        as this dataclass's default: the same file must mean the same model here and there."""
        if hf.get("model_type") not in (None, "qwen3"):
            raise ValueError(f"model_type {hf.get('model_type')!r} is not supported: this engine implements Qwen3")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names and v is not None}
        # transformers >= 5 writes rope settings as `rope_parameters`; older files use `rope_theta`
        # and `rope_scaling`. Only plain RoPE is implemented: refuse scaled variants loudly.
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"RoPE scaling {rope} is not supported by this engine")
        if "rope_theta" in rope:
            kwargs.setdefault("rope_theta", rope["rope_theta"])
        if hf.get("num_key_value_heads", 0) is None:  # Qwen3Config: None means one K/V head per query head
            kwargs["num_key_value_heads"] = hf.get("num_attention_heads")
        missing = names - kwargs.keys() - HF_DEFAULTS.keys()
        if missing:
            raise ValueError(f"config.json lacks {sorted(missing)}; is this a Qwen3 checkpoint?")
        return cls(**{**HF_DEFAULTS, **kwargs})


# transformers' `Qwen3Config` defaults (4.51 to 5.x) for the keys a config.json may leave out. They
# differ from the dataclass defaults above (Qwen3-0.6B's values, which the presets use): an absent
# `tie_word_embeddings` means untied, `rope_theta` 10,000, `head_dim` 128 (not hidden / heads).
HF_DEFAULTS: dict[str, Any] = {
    "num_key_value_heads": 32,
    "head_dim": 128,
    "rope_theta": 10_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32_768,
}


# Named presets (the released Qwen3 dense shapes) and small shapes for tests and the toy world.
PRESETS: dict[str, ModelConfig] = {
    "qwen3-0.6b": ModelConfig(151_936, 1024, 28, 16, 8, 128, 3072),
    "qwen3-1.7b": ModelConfig(151_936, 2048, 28, 16, 8, 128, 6144),
    "qwen3-4b": ModelConfig(151_936, 2560, 36, 32, 8, 128, 9728),
    "qwen3-8b": ModelConfig(151_936, 4096, 36, 32, 8, 128, 12_288, tie_word_embeddings=False),
    "tiny": ModelConfig(320, 64, 2, 4, 2, 16, 128, rope_theta=10_000.0, max_position_embeddings=512),
    "tiny-untied": ModelConfig(
        320, 64, 2, 4, 2, 16, 128, rope_theta=10_000.0, tie_word_embeddings=False, max_position_embeddings=512
    ),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 whatever the storage dtype (as Qwen3 does), then cast back.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Int8Weight(NamedTuple):
    """A weight quantized to int8 per output channel (symmetric): w ~= q * scales[:, None].

    The weight-only int8 scheme of gpt-fast's quantize.py (and LLM.int8()'s per-row absmax): each
    output row keeps its own scale, so one large row does not crush the resolution of the others.
    Multiplied by `torch._weight_int8pack_mm` with bf16 activations: half the bytes of bf16 weights
    per decode step, a quarter of fp32's."""

    q: Tensor  # (out, in) int8
    scales: Tensor  # (out,) bfloat16

    @classmethod
    def quantize(cls, w: Tensor) -> Int8Weight:
        w = w.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        q = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        return cls(q, scales.to(torch.bfloat16))


def linear_as(x: Tensor, w: Tensor | Int8Weight) -> Tensor:
    """x @ w.T with `w` in its own precision (a dtype copy or an Int8Weight); the result in x's dtype."""
    if isinstance(w, Int8Weight):
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        return torch._weight_int8pack_mm(flat, w.q, w.scales).reshape(*x.shape[:-1], -1).to(x.dtype)
    return F.linear(x.to(w.dtype), w).to(x.dtype)  # activations (residual stream) keep their dtype


class Linear(nn.Linear):
    """Bias-free nn.Linear that can multiply by a copy of its weight in another dtype, or by an int8
    quantization of it (`torch.int8`: Int8Weight).

    The copy is made on first use and re-made only when the weight changes (its storage or its
    version counter, which optimizer steps bump), so a model trained between generations never
    decodes with stale weights. (Weights created under inference_mode have no version counter:
    they cannot be trained, and only their storage is checked.)
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        self.compute_weight: Tensor | Int8Weight | None = None  # None: multiply by self.weight itself
        self._copy: Tensor | Int8Weight | None = None
        self._copy_key: tuple | None = None

    def weight_as(self, dtype: torch.dtype) -> Tensor | Int8Weight:
        w = self.weight
        if w.dtype == dtype:
            return w
        key = (dtype, w.device, w.data_ptr(), None if w.is_inference() else w._version)
        if self._copy_key != key:
            self._copy, self._copy_key = None, None  # free the old copy before making the new one
            copy = Int8Weight.quantize(w) if dtype == torch.int8 else w.detach().to(dtype)
            self._copy, self._copy_key = copy, key
        return self._copy

    def forward(self, x: Tensor) -> Tensor:
        w = self.compute_weight
        if w is None:
            return F.linear(x, self.weight)
        return linear_as(x, w)


class KVCache(nn.Module):
    """One layer's keys and values: flat storage for `capacity` (slot, position) pairs, seen as
    k_cache/v_cache of shape (slots, kv heads, positions, head dim) by `shape`. One storage serves a
    generation of 64 slots x 128 positions and one of 1 slot x 8,192: memory follows the largest
    call's slots x positions, not the largest slots times the largest positions of different calls."""

    def __init__(self, capacity: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None):
        super().__init__()
        self.capacity, self.n_kv, self.head_dim = capacity, n_kv_heads, head_dim
        size = capacity * n_kv_heads * head_dim
        self.register_buffer("k_store", torch.zeros(size, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_store", torch.zeros(size, dtype=dtype, device=device), persistent=False)
        self.k_cache = self.v_cache = self.k_store[:0]

    def shape(self, batch: int, seq: int) -> None:
        """See the storage as (batch, kv heads, seq, head dim); batch x seq <= capacity. Kept as it is
        when the shape is the same (a compiled decode step then sees the same tensors)."""
        shape = (batch, self.n_kv, seq, self.head_dim)
        if tuple(self.k_cache.shape) != shape:
            n = batch * seq * self.n_kv * self.head_dim
            self.k_cache, self.v_cache = self.k_store[:n].view(shape), self.v_store[:n].view(shape)

    def update(self, slots: Tensor | None, input_pos: Tensor, k: Tensor, v: Tensor,
               kv_len: int) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H_kv, T, D) at (slot, position) and return the B rows' keys and values at
        positions [0, kv_len). slots: (B,) cache rows, None for rows 0..B-1 (read as a view, no copy);
        input_pos: (B, T) positions."""
        B = k.shape[0]
        rows = torch.arange(B, device=k.device) if slots is None else slots
        # advanced indices around a slice put (B, T) first: the values go in as (B, T, H_kv, D)
        self.k_cache[rows[:, None], :, input_pos] = k.transpose(1, 2).to(self.k_cache.dtype)
        self.v_cache[rows[:, None], :, input_pos] = v.transpose(1, 2).to(self.v_cache.dtype)
        if slots is None:
            return self.k_cache[:B, :, :kv_len], self.v_cache[:B, :, :kv_len]
        return self.k_cache[slots, :, :kv_len], self.v_cache[slots, :, :kv_len]

    def copy_rows(self, src: Tensor, dst: Tensor, length: int) -> None:
        """Positions [0, length) of slots `src` copied into slots `dst` (both (R,)), in place: the
        fan-out of one prompt's prefill to its n samples, and the compaction of live rows into the
        first slots. Only the filled prefix moves, never the whole cache."""
        for cache in (self.k_cache, self.v_cache):
            cache[dst, :, :length] = cache[src, :, :length]  # the source is gathered first: overlap is safe


def rope_tables(cfg: ModelConfig, max_pos: int) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # (P, D): Qwen's half-split ("rotate_half") layout
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, H, T, D); cos/sin: (B, 1, T, D)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, self.n_heads * self.head_dim)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.head_dim)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.hidden_size)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                input_pos: Tensor | None, slots: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if input_pos is not None:
            # attend to the filled prefix of the cache only: (B, H_kv, S, D)
            k, v = self.kv_cache.update(slots, input_pos, k, v, mask.shape[-1])
            k, v = k.to(q.dtype), v.to(q.dtype)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                input_pos: Tensor | None, slots: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos, slots)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False
        self.max_batch_size = self.max_seq_length = -1
        self._rope_len = 0

    def init_weights(self, seed: int, std: float = 0.02) -> None:
        """Random init for pretraining from scratch (normal(0, std) matrices, unit norms)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def _ensure_rope(self, length: int) -> None:
        if self._rope_len < length:
            self._rope_len = max(length, 2 * self._rope_len, 256)
            cos, sin = rope_tables(self.config, self._rope_len)
            self.register_buffer("rope_cos", cos.to(self.device), persistent=False)
            self.register_buffer("rope_sin", sin.to(self.device), persistent=False)

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype | None = None) -> None:
        """Static KV caches seen as `max_batch_size` slots x `max_seq_length` positions (of `dtype`,
        default the weights'). The storage allocated already is kept when it holds that many (slot,
        position) pairs, else re-allocated (the old one freed first) at the larger of what is asked
        and twice what it held, so a model's caches are allocated a few times at most over any number
        of generations, even a chat whose history grows turn by turn."""
        dtype = dtype or self.embed_tokens.weight.dtype
        cache = self.layers[0].self_attn.kv_cache
        need = max_batch_size * max_seq_length
        if cache is None or cache.k_store.dtype != dtype or cache.k_store.device != self.device \
                or cache.capacity < need:
            capacity = need if cache is None or cache.k_store.dtype != dtype else max(need, 2 * cache.capacity)
            self.free_caches()  # the old storage goes before the new is allocated: one cache at a time
            for layer in self.layers:
                a = layer.self_attn
                a.kv_cache = KVCache(capacity, a.n_kv, a.head_dim, dtype, self.device)
        for layer in self.layers:
            layer.self_attn.kv_cache.shape(max_batch_size, max_seq_length)
        self.max_batch_size, self.max_seq_length = max_batch_size, max_seq_length
        self._ensure_rope(max_seq_length)

    def set_matmul_dtype(self, dtype: torch.dtype | None) -> None:
        """Linear layers multiply by cached `dtype` copies of their weights (None: by the weights;
        torch.int8: by per-channel int8 quantizations, see Int8Weight).

        Activations, norms, attention and the KV cache keep the model's dtype; only the weight
        matmuls change precision. Switching back to None keeps the copies for the next switch.
        """
        for m in self.modules():
            if isinstance(m, Linear):
                m.compute_weight = None if dtype is None else m.weight_as(dtype)
                if m.compute_weight is m.weight:
                    m.compute_weight = None  # same dtype: nothing to change

    def free_caches(self) -> None:
        """Drop the KV caches (their memory goes back to the allocator); the next generation sets them up again."""
        for layer in self.layers:
            layer.self_attn.kv_cache = None

    def kv_caches(self) -> list[KVCache]:
        return [layer.self_attn.kv_cache for layer in self.layers]

    def forward(self, idx: Tensor, input_pos: Tensor | None = None, slots: Tensor | None = None,
                kv_len: int | None = None, logits_at: Tensor | None = None) -> Tensor:
        """Logits (B, T, V) in fp32, or (B, 1, V) at the tokens `logits_at` names.

        idx: (B, T) token ids. input_pos: (B, T) or (T,) cache positions of those tokens, which are
        also their rotary positions (None: no cache, causal attention over idx alone).
        slots: (B,) the cache rows the B rows write and read (default: rows 0..B-1).
        kv_len: attend to cache positions [0, kv_len) only, which must cover input_pos (default: the
        whole cache); each token attends to the positions <= its own.
        logits_at: (B,) index into T per row, e.g. each right-padded prompt's last token.
        """
        B, T = idx.shape
        x = self.embed_tokens(idx)
        if input_pos is None:
            self._ensure_rope(T)
            pos = torch.arange(T, device=idx.device).expand(B, T)
            mask = None
        else:
            pos = input_pos.expand(B, T)
            k_idx = torch.arange(self.max_seq_length if kv_len is None else kv_len, device=idx.device)
            mask = (k_idx[None, None, :] <= pos[:, :, None])[:, None]  # (B, 1, T, S)
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (B, 1, T, D)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, mask, input_pos, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, None if input_pos is None else pos, slots)
        if logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at][:, None]
        return self.lm_head(self.norm(x)).float()
