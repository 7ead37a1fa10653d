"""Checkpoints: Hugging Face Qwen3 directories in, the same format out.

Design: our checkpoint format *is* the Hugging Face one (config.json + safetensors, sharded
with model.safetensors.index.json when large), so `transformers` loads what we save and we
load what the hub serves, through one strict loader. A saved model is a complete checkpoint:
its tokenizer files (`Tokenizer.save`: a hub checkpoint's own, or ours with our chat template),
a generation_config.json that stops where our engine stops, and the bos/eos/pad ids in
config.json, so `AutoTokenizer.apply_chat_template` + `generate` in transformers (or vLLM)
continue a conversation exactly as our engine does. Loading builds the module on the meta
device and assigns the tensors, so a model is never materialised twice; keys and shapes are
checked exactly and every failure names the file and the fix. Weights come from safetensors
only (no pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import stable_hash
from .files import sha256_file
from .hub import HubError
from .model import ModelConfig, Qwen3
from .tokenizer import Tokenizer

HF_PREFIX = "model."


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match the architecture."""


def hf_key(name: str) -> str:
    return name if name.startswith("lm_head.") else HF_PREFIX + name


def parse_source(source: str) -> tuple[str, str | None]:
    """'hf:Qwen/Qwen3-0.6B@<rev>' -> ('Qwen/Qwen3-0.6B', '<rev>'); 'Qwen/Qwen3-0.6B' -> (id, None)."""
    spec = source.removeprefix("hf:")
    repo, _, rev = spec.partition("@")
    return repo, rev or None


def resolve(source: str, revision: str | None = None, cache_dir: str | None = None,
            setting: str = "the model source") -> Path:
    """A local checkpoint directory for `source`: a path as is, or a hub id (`hf:` prefix optional)
    downloaded through huggingface_hub's cache. Set HF_HUB_OFFLINE=1 to use only the cache.

    A failed download raises `hub.HubError` naming `setting` (e.g. "load_base.source") and the local
    directory to put there, with the `hf download` command that makes it."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json: not a checkpoint directory")
        return path
    if not source.startswith("hf:") and source.count("/") != 1:
        raise CheckpointError(f"{source!r} is neither an existing directory nor a hub id like hf:Qwen/Qwen3-0.6B")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, rev = parse_source(source)
    try:
        return Path(snapshot_download(
            repo, revision=revision or rev, cache_dir=cache_dir,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt"],
        ))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        local = repo.split("/")[-1]
        pin = f" --revision {revision or rev}" if revision or rev else ""
        raise HubError(f"checkpoint {repo}@{revision or rev or 'main'}", setting, local,
                       f"hf download {repo}{pin} --local-dir {local}", e) from e


def _weight_files(ckpt: Path) -> list[Path]:
    index = ckpt / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [ckpt / n for n in names]
    else:
        files = sorted(ckpt.glob("*.safetensors"))
    missing = [f.name for f in files if not f.exists()]
    if not files or missing:
        raise CheckpointError(f"{ckpt}: safetensors weight files missing {missing or ''}; re-download the checkpoint")
    return files


def model_id(ckpt: str | Path) -> str:
    """The model's identity: a content hash (16 hex digits) of its safetensors weight files.

    Every stage names a model by it (records, resume journals, training runs, teachers), so a
    retrained model is a new model whatever its path, and the same weights are the same model
    wherever they lie. Raises CheckpointError when weight files are missing."""
    return stable_hash([sha256_file(f) for f in _weight_files(Path(ckpt))])


def read_config(ckpt: str | Path) -> ModelConfig:
    path = Path(ckpt) / "config.json"
    try:
        return ModelConfig.from_hf(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found: not a checkpoint directory") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid Qwen3 config: {e}") from None


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """'name: n nan/inf of m' for each floating tensor of `state` holding NaN or infinity (one
    `isfinite().all()` per tensor; the count only for the bad ones)."""
    bad = []
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            kinds = "/".join(k for k, hit in (("nan", t.isnan().any()), ("inf", t.isinf().any())) if hit)
            bad.append(f"{name}: {n} non-finite ({kinds}) of {t.numel()}")
    return bad


def load_model(ckpt: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Qwen3:
    """Load a Qwen3 checkpoint directory with an exact key and shape check; CheckpointError (naming
    the tensors) when a weight is NaN or infinite."""
    ckpt = Path(ckpt)
    cfg = read_config(ckpt)
    with torch.device("meta"):
        model = Qwen3(cfg)
    expected = {hf_key(k): v.shape for k, v in model.state_dict().items()
                if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(ckpt):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if cfg.tie_word_embeddings and key == "lm_head.weight":
                        continue  # some tied checkpoints also store the head; the embedding is the source
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file} is corrupt or truncated ({e}); re-download or re-save it") from None
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    bad_shapes = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(expected[k])}"
                  for k in expected.keys() & state.keys() if state[k].shape != expected[k]]
    if missing or unexpected or bad_shapes:
        raise CheckpointError(
            f"{ckpt} does not match its config.json: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shape mismatches {bad_shapes[:5]}"
        )
    bad = non_finite(state)
    if bad:
        raise CheckpointError(
            f"{ckpt} holds non-finite weights ({'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''}): the file is "
            "corrupt or was saved from a diverged run; re-download it or use an earlier checkpoint")
    ours = {k.removeprefix(HF_PREFIX): v.to(device=device, dtype=dtype) for k, v in state.items()}
    if cfg.tie_word_embeddings:
        ours["lm_head.weight"] = ours["embed_tokens.weight"]
    model.load_state_dict(ours, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True replaced the tied Parameter
    return model.eval()


def _token_ids(generation: dict[str, Any]) -> dict[str, int]:
    """config.json's bos/eos/pad ids from a generation config (its first eos when it lists several)."""
    ids = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = generation.get(key)
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            ids[key] = value
    return ids


def save_model(model: Qwen3, out_dir: str | Path, tokenizer_path: str | Path | None = None,
               dtype: torch.dtype | None = None, max_shard_bytes: int = 4 << 30,
               generation_config: dict[str, Any] | None = None) -> Path:
    """Save as a Hugging Face checkpoint (atomic: written to a temp dir, then renamed into place).

    With `tokenizer_path` (a model directory or a tokenizer.json) the checkpoint is complete: its
    tokenizer files (`Tokenizer.save`), generation_config.json (`generation_config`, e.g.
    `generate.hf_generation_config`; None: the tokenizer directory's own generation_config.json,
    else the engine's stop tokens, `Tokenizer.generation_token_ids`) and the bos/eos/pad ids in
    config.json (the generation config's; its first eos). Without one: weights and config.json
    only (training state). Refuses (ValueError naming the tensors) a model holding NaN or infinite weights."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {hf_key(k): v.detach().to(dtype or v.dtype).contiguous().cpu()
             for k, v in model.state_dict().items()
             if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    bad = non_finite(state)
    if bad:
        raise ValueError(f"refusing to save {out_dir}: non-finite weights ({'; '.join(bad[:5])}"
                         f"{'; ...' if len(bad) > 5 else ''}); the model diverged or was loaded from a bad file")
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += nbytes
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(v.numel() * v.element_size() for v in state.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        hf_cfg = cfg.to_hf()
        hf_cfg["torch_dtype"] = str(dtype or next(iter(state.values())).dtype).removeprefix("torch.")
        if tokenizer_path is not None:
            tok = Tokenizer(tokenizer_path)
            tok.save(tmp, model_max_length=cfg.max_position_embeddings)
            own = tok.directory / "generation_config.json"
            if generation_config is None and own.exists():  # a hub checkpoint keeps its own
                shutil.copyfile(own, tmp / "generation_config.json")
                generation_config = json.loads(own.read_text())
            else:
                generation_config = generation_config or tok.generation_token_ids()
                (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
            hf_cfg.update(_token_ids(generation_config))
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
