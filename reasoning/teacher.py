"""Teachers for distillation (the book's chapter 8): where raw reasoning samples come from.

Design choices:
- A teacher is anything with `sample(problems, n, seeds)` yielding (problem index, n raw samples,
  seconds) as problems finish, in any order: the engine (any checkpoint we load, prompted by a
  `PromptConfig`), an OpenAI-compatible endpoint (`reasoning.endpoint`), or a file of traces
  generated elsewhere (the book's published ones), matched to our problems by normalised text.
- All three hand back the same raw sample shape (text, optional separate reasoning, finish
  reason, tokens); `reasoning.distill` turns each into (thinking, content) the same way, and
  verifies and contamination-checks imported traces like fresh ones.
- `info` (kind, id, revision) names the teacher in every trace and in the journal's name: the
  engine's revision is its weights' content hash (`weights.model_id`), so a retrained model is a
  new teacher; a file's is its sha256; an endpoint's is what the params record.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .chat_template import ChatTemplate
from .data import normalize_problem
from .endpoint import ChatClient, EndpointConfig
from .files import read_json, read_jsonl, sha256_file
from .generate import Generator, SamplingConfig, check_matmul_dtype, load_generator
from .hub import HubError
from .prompts import COT_SUFFIX, PromptConfig, chat_template_of, render
from .toy.task import solution_path

TOY_TEACHER_REVISION = "1"  # bump when toy.task.solution_path writes other traces (journals are keyed by it)


@dataclass(frozen=True)
class TeacherConfig:
    kind: str = "engine"  # "engine" (a checkpoint we load), "endpoint" (OpenAI-compatible server), "file"
    # or "toy" (the toy world's reference solutions: ToyTeacher)
    # engine: checkpoint dir or hub id; endpoint: the served model name; file: a JSON/JSONL path or
    # hf:<owner>/<dataset>/<file> with rows {problem, message_thinking, message_content}
    model: str = "data/models/base"
    revision: str = ""  # engine: recorded (default: the weights' content hash); endpoint: recorded;
    # file: the hub revision to download (the recorded revision is the file's sha256)
    prompt: PromptConfig = PromptConfig(cot_suffix=COT_SUFFIX)
    endpoint: EndpointConfig = EndpointConfig()
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    matmul_dtype: str = "model"  # engine: model | auto | bfloat16 | int8 ...: the weight matmuls' precision (generate.Generator)
    batch_size: int = 64  # engine: sequences (problems x n) decoded together

    def __post_init__(self) -> None:
        check_matmul_dtype(self.matmul_dtype, "teacher_traces.teacher.matmul_dtype")
        if self.kind not in ("engine", "endpoint", "file", "toy"):
            raise ValueError(f"teacher kind {self.kind!r} is unknown; use 'engine', 'endpoint', 'file' or 'toy'")
        if self.kind == "endpoint" and self.prompt.template != "chat":
            raise ValueError("an endpoint applies its own chat template: set teacher.prompt.template: chat")


class Teacher(Protocol):
    info: dict[str, str]  # kind, id, revision
    device: torch.device  # where it computes: its engine's device, or the CPU (endpoint, file)
    chat_template: ChatTemplate | None  # what chat prompts render with here; None: none we can see

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        """Yield (problem index, n raw samples, seconds) as problems finish, in any order."""
        ...


class EngineTeacher:
    """A model run by our engine; problems go through `render` (chat: in the model's own template)."""

    def __init__(self, generator: Generator, prompt: PromptConfig, sampling: SamplingConfig,
                 info: dict[str, str]):
        self.generator, self.prompt, self.sampling, self.info = generator, prompt, sampling, info
        self.chat_template = chat_template_of(generator, prompt)

    @property
    def device(self) -> torch.device:
        return self.generator.model.device

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        per_call = max(1, self.generator.batch_size // n)  # one decode batch per call, journaled after it
        for start in range(0, len(problems), per_call):
            chunk = range(start, min(start + per_call, len(problems)))
            t0 = time.perf_counter()
            outs = self.generator.generate([render(problems[i], self.prompt, self.chat_template) for i in chunk],
                                           self.sampling, n=n, seeds=[seeds[i] for i in chunk])
            share = (time.perf_counter() - t0) / len(chunk)
            for i, comps in zip(chunk, outs):
                yield i, [{"text": c.text, "reasoning": None, "finish_reason": c.finish_reason,
                           "tokens": len(c.tokens)} for c in comps], share


class EndpointTeacher:
    """A model behind an OpenAI-compatible endpoint; the server applies its chat template."""

    chat_template = None  # the server's, which we do not see
    device = torch.device("cpu")  # the server computes; we only wait

    def __init__(self, client: ChatClient, prompt: PromptConfig, sampling: SamplingConfig, info: dict[str, str]):
        self.client, self.prompt, self.sampling, self.info = client, prompt, sampling, info

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        s = self.sampling
        requests = [{"messages": self.prompt.messages(p),
                     "n": n, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens,
                     "seed": seed % 2**31, "stop": s.stop_strings}  # 31 bits: some servers take int32 seeds
                    for p, seed in zip(problems, seeds)]
        for i, choices, seconds in self.client.complete_many(requests):
            yield i, [{"text": c.content, "reasoning": c.reasoning, "finish_reason": c.finish_reason,
                       "tokens": None, "model": c.model} for c in choices], seconds


class FileTeacher:
    """Traces generated elsewhere (rows {problem, message_thinking, message_content}), looked up by problem."""

    chat_template = None  # no prompt is rendered here
    device = torch.device("cpu")  # nothing is computed: the traces are looked up

    def __init__(self, rows: Sequence[dict[str, Any]], info: dict[str, str]):
        self.info = info
        self.by_problem: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if not isinstance(r, dict) or not isinstance(r.get("problem"), str) or "message_content" not in r:
                raise ValueError(f"{info['id']}: a row lacks 'problem' or 'message_content': {str(r)[:200]}")
            self.by_problem.setdefault(normalize_problem(r["problem"]), []).append(
                {"text": str(r["message_content"]), "reasoning": r.get("message_thinking"),
                 "finish_reason": "stop", "tokens": None})

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        for i, p in enumerate(problems):  # a problem the file lacks gets no samples
            yield i, self.by_problem.get(normalize_problem(p), [])[:n], 0.0


class ToyTeacher:
    """The toy world's stand-in for the book's far larger teacher (chapter 8 distills the traces of
    Qwen3-235B-A22B and DeepSeek-R1): the toy task's reference solutions, which are always right.
    Each sample combines the terms in an order drawn from its problem's seed (`toy.task.solution_path`),
    as a large model's traces vary, so n > 1 gives distinct traces. Problems are looked up among the
    training rows given; one not among them gets no samples."""

    chat_template = None  # no prompt is rendered here
    device = torch.device("cpu")  # nothing but string work

    def __init__(self, rows: Sequence[dict[str, Any]], info: dict[str, str]):
        self.info = info
        self.by_problem = {normalize_problem(r["problem"]): r for r in rows}

    def sample(self, problems: Sequence[str], n: int,
               seeds: Sequence[int]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        for i, p in enumerate(problems):
            row, rng = self.by_problem.get(normalize_problem(p)), random.Random(seeds[i])
            samples = []
            for _ in range(n if row else 0):
                steps, answer = solution_path(row, rng).rsplit("\n", 1)  # type: ignore[arg-type]
                samples.append({"text": answer, "reasoning": steps, "finish_reason": "stop", "tokens": None})
            yield i, samples, 0.0


def _trace_file(source: str, revision: str) -> Path:
    path = Path(source)
    if path.exists():
        return path
    parts = source.removeprefix("hf:").split("/", 2)
    if not source.startswith("hf:") or len(parts) < 3:
        raise FileNotFoundError(f"trace file {source!r} not found; give a local path or "
                                "hf:<owner>/<dataset>/<file>")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, name = "/".join(parts[:2]), parts[2]
    try:
        return Path(hf_hub_download(repo, name, repo_type="dataset", revision=revision or None))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        pin = f" --revision {revision}" if revision else ""
        local = repo.split("/")[-1]
        raise HubError(f"trace file {name} of dataset {repo}", "teacher_traces.teacher.model", f"{local}/{name}",
                       f"hf download {repo} {name} --repo-type dataset{pin} --local-dir {local}", e) from e


def load_teacher(cfg: TeacherConfig, sampling: SamplingConfig, train: Sequence[dict[str, Any]] = ()) -> Teacher:
    """The engine teacher (model loaded), endpoint teacher (key read), file teacher or toy teacher (the
    reference solutions of the `train` rows) that `cfg` names."""
    if cfg.kind == "toy":
        return ToyTeacher(train, {"kind": "toy", "id": "toy:reference-solutions", "revision": TOY_TEACHER_REVISION})
    if cfg.kind == "endpoint":
        info = {"kind": "endpoint", "id": cfg.model, "revision": cfg.revision, "base_url": cfg.endpoint.base_url}
        return EndpointTeacher(ChatClient(cfg.endpoint, cfg.model), cfg.prompt, sampling, info)
    if cfg.kind == "file":
        path = _trace_file(cfg.model, cfg.revision)
        rows = read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)
        info = {"kind": "file", "id": cfg.model, "revision": sha256_file(path)[:16]}
        return FileTeacher(rows, info)
    generator = load_generator(cfg.model, cfg, "teacher_traces.teacher.model")
    info = {"kind": "engine", "id": cfg.model, "revision": cfg.revision or generator.model_id}
    return EngineTeacher(generator, cfg.prompt, sampling, info)
