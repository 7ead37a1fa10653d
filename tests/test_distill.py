"""Distillation: trace parsing and filtering, contamination, resumable traces, SFT masks, the endpoint
client against a local stub server, and the two stages (resume equivalence, torchrun, --help)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from reasoning.data import write_dataset
from reasoning.distill import (
    SFTConfig, TracesConfig, build_sft_examples, generate_traces, judge, remove_contaminated, sample_hash,
    sft_example, split_trace, student_prompt,
)
from reasoning.files import read_json, read_jsonl, write_jsonl
from reasoning.generate import Completion, SamplingConfig
from reasoning.grading import GRADER_NAME, GRADER_VERSION
from reasoning.prompts import COT_SUFFIX, PromptConfig, prompt_hash, render
from reasoning.endpoint import ChatClient, EndpointConfig, EndpointError
from reasoning.teacher import TOY_TEACHER_REVISION, EndpointTeacher, EngineTeacher, TeacherConfig, load_teacher
from reasoning.tokenizer import Tokenizer
from reasoning.weights import load_model
from stages.distill_sft import main as sft_main
from stages.teacher_traces import main as traces_main
from tests.hf_parity import assert_chat_matches_transformers

ROOT = Path(__file__).resolve().parents[1]


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"p{i}", "problem": f"Compute {i} + {i + 1}.", "answer": str(2 * i + 1), "solution": "",
             "level": 1, "subject": "arithmetic"} for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------
# Parsing, filtering, contamination


@pytest.mark.parametrize("text, reasoning, expected", [
    ("<think>\nadd them\n</think>\n\nSo \\boxed{3}", None, ("add them", "So \\boxed{3}", None)),
    ("add them</think>\\boxed{3}", None, ("add them", "\\boxed{3}", None)),  # <think> was in the prompt
    ("The answer is \\boxed{3}.", "  add them ", ("add them", "The answer is \\boxed{3}.", None)),
    ("<think>\nadd them and then", None, ("add them and then", "", "unclosed_think")),
    ("1 + 2 = 3\n\\boxed{3}\n\nQuestion:\nWhat is \\boxed{9}", None, ("1 + 2 = 3", "\\boxed{3}", None)),
    ("I think it is 3", None, ("", "I think it is 3", None)),
    ("<think>x</think>\n\\boxed{3}", "<think>add them</think>", ("add them", "\\boxed{3}", None)),
])
def test_split_trace(text, reasoning, expected):
    assert split_trace(text, reasoning) == expected


def test_judge_keeps_verified_traces_and_names_every_reject():
    problem = rows(1, start=1)[0]  # Compute 1 + 2. -> 3
    samples = [
        ("1 + 2 = 3\n\\boxed{3}", "stop"),
        ("1 + 2 = 3\n\\boxed{3}", "length"),  # truncated, even though right
        ("1 + 2 = 4\n\\boxed{4}", "stop"),
        ("I am not sure how", "stop"),  # no answer
        ("<think>1 + 2", "stop"),
        ("\\boxed{3}", "stop"),  # right, but no reasoning
        ("1 + 2  = 3\n\\boxed{3}", "stop"),  # the first trace again, up to whitespace
        ("2 + 1 = 3\n\\boxed{3}", "stop"),  # a second distinct verified trace
    ]
    cfg = TracesConfig(n=len(samples), keep_per_problem=1)
    out = judge(problem, [{"text": t, "finish_reason": f} for t, f in samples], cfg, {"teacher": "t"})
    assert [r["reject_reason"] for r in out] == [None, "truncated", "wrong_answer", "no_answer", "unclosed_think",
                                                 "no_thinking", "duplicate", "over_quota"]
    kept = out[0]
    assert kept["verified"] and (kept["message_thinking"], kept["message_content"]) == ("1 + 2 = 3", "\\boxed{3}")
    assert kept["id"] == "p1/0" and kept["gtruth_answer"] == "3" and kept["teacher"] == "t"
    assert kept["sampling"]["temperature"] == cfg.sampling.temperature and kept["sampling"]["n"] == len(samples)
    assert [r["answer_correct"] for r in out] == [True, True, False, False, False, True, True, True]
    # keep_per_problem 0 keeps every distinct verified trace; require_thinking off keeps the bare answer
    out = judge(problem, [{"text": t, "finish_reason": f} for t, f in samples],
                dataclasses.replace(cfg, keep_per_problem=0, require_thinking=False), {})
    assert [r["id"] for r in out if r["verified"]] == ["p1/0", "p1/5", "p1/7"]


def test_contamination_exact_and_ngram():
    test = [{"problem": "Ann has 12 apples. She buys 3 more. She loses 2. How many apples does Ann have now?"},
            {"problem": "Solve for $x$: $2x + 3 = 7$."}]
    train = [
        {"id": "exact", "problem": "solve for $x$:  $2x+3=7$."},  # same after normalisation
        {"id": "ngram",
         "problem": "Ann has 10 apples. She buys 3 more. She loses 2. How many apples does Ann have now?"},
        {"id": "clean", "problem": "Ben has 10 pens. He buys 3 more. How many pens does Ben have now?"},
    ]
    clean, dropped = remove_contaminated(train, test, ngram=13)
    assert [r["id"] for r in clean] == ["clean"] and dropped == {"exact": 1, "ngram": 1}
    clean, dropped = remove_contaminated(train, test, ngram=0)  # exact only
    assert [r["id"] for r in clean] == ["ngram", "clean"] and dropped == {"exact": 1, "ngram": 0}


# ---------------------------------------------------------------------------------------------
# Resumable traces with the engine teacher (a fake generator stands in for the model)


class FakeGenerator:
    """Answers a problem's sample right or wrong at random from its seed; raises after `fail_after` calls."""

    batch_size = 8

    def __init__(self, problems: list[dict], prompt: PromptConfig, fail_after: int | None = None):
        self.answers = {render(p["problem"], prompt): int(p["answer"]) for p in problems}
        self.fail_after, self.prompts = fail_after, []

    def generate(self, prompts, sampling, n=1, seeds=None):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.prompts.append(list(prompts))
        out = []
        for p, seed in zip(prompts, seeds):
            rng, gold = random.Random(seed), self.answers[p]
            out.append([Completion(tokens=[1] * 5, text=f"step {k}\n\\boxed{{{gold + rng.choice([0, 0, 1])}}}",
                                   finish_reason="stop") for k in range(n)])
        return out


def run_traces(problems, journal, cfg, fail_after=None):
    gen = FakeGenerator(problems, cfg.teacher.prompt, fail_after)
    info = {"kind": "engine", "id": "fake", "revision": "r1"}
    teacher = EngineTeacher(gen, cfg.teacher.prompt, cfg.sampling, info)
    test = rows(3, start=100)
    return gen, teacher, lambda: generate_traces(teacher, problems, test, cfg, journal, progress=False)


def test_killed_trace_generation_resumes_without_duplicates(tmp_path):
    problems = rows(20)
    cfg = TracesConfig(n=4, keep_per_problem=2)  # 8 rows per call: 2 problems per generate call
    _, _, straight = run_traces(problems, tmp_path / "straight", cfg)
    kept, rejected, metrics = straight()

    gen, teacher, killed = run_traces(problems, tmp_path / "resumed", cfg, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        killed()
    journal = tmp_path / "resumed" / f"{sample_hash(teacher, cfg)}.jsonl"
    assert len(read_jsonl(journal)) == 6  # 3 calls of 2 problems each were journaled
    gen, _, resumed = run_traces(problems, tmp_path / "resumed", cfg)
    kept2, rejected2, metrics2 = resumed()
    assert sum(len(p) for p in gen.prompts) == 14  # only the 14 unfinished problems were sampled
    assert kept2 == kept and rejected2 == rejected
    ids = [r["id"] for r in kept2 + rejected2]
    assert len(ids) == len(set(ids)) == 20 * 4
    assert {k: v for k, v in metrics2.items() if k not in ("wall_time_s", "journal")} == \
        {k: v for k, v in metrics.items() if k not in ("wall_time_s", "journal")}
    assert metrics["kept"] + sum(metrics["rejected"].values()) == metrics["samples"] == 80
    assert metrics["kept"] == len(kept) > 0 and metrics["rejected"]["wrong_answer"] > 0

    # A finished run samples nothing again, even with other filter settings ...
    gen, _, again = run_traces(problems, tmp_path / "resumed", dataclasses.replace(cfg, keep_per_problem=1))
    kept3, _, _ = again()
    assert gen.prompts == [] and len(kept3) == len({r["problem_id"] for r in kept})
    # ... while other sampling settings are another teacher run, in another journal
    other = dataclasses.replace(cfg, sampling=SamplingConfig(max_new_tokens=64, temperature=1.0))
    gen, _, fresh = run_traces(problems, tmp_path / "resumed", other)
    fresh()
    assert sum(len(p) for p in gen.prompts) == 20 and len(list((tmp_path / "resumed").glob("*.jsonl"))) == 2


def test_file_teacher_imports_verifies_and_checks_published_traces(tmp_path):
    published = [  # the book's format; problems matched to ours up to spacing and case
        {"problem": "compute 1 + 2.", "gtruth_answer": "3", "message_thinking": "1 + 2 = 3",
         "message_content": "So \\boxed{3}"},
        {"problem": "Compute 2 + 3.", "message_thinking": "2 + 3 = 6", "message_content": "\\boxed{6}"},
        {"problem": "Compute 50 + 51.", "message_thinking": "easy", "message_content": "\\boxed{101}"},
        {"problem": "A problem we do not have.", "message_thinking": "t", "message_content": "\\boxed{1}"},
    ]
    (tmp_path / "published.json").write_text(json.dumps(published))
    cfg = TracesConfig(teacher=TeacherConfig(kind="file", model=str(tmp_path / "published.json")), n=1)
    teacher = load_teacher(cfg.teacher, cfg.sampling)
    assert teacher.info["kind"] == "file" and len(teacher.info["revision"]) == 16
    kept, rejected, metrics = generate_traces(teacher, rows(4) + rows(1, start=50), rows(1, start=50), cfg,
                                              tmp_path / "journal", progress=False)
    assert [r["problem_id"] for r in kept] == ["p1"] and kept[0]["message_thinking"] == "1 + 2 = 3"
    assert [(r["problem_id"], r["reject_reason"]) for r in rejected] == [("p2", "wrong_answer")]
    assert metrics["contaminated"]["exact"] == 1 and metrics["problems_sampled"] == 4
    assert metrics["samples"] == 2 and metrics["coverage"] == 0.25  # p0 and p3 have no published trace


def test_toy_teacher_writes_verified_varied_traces_of_known_problems(tmp_path):
    """The toy world's teacher: the reference solutions of the training rows it is given, each sample
    in its own order (so n = 4 gives distinct traces), all verified by the grader; a problem it was not
    given gets no sample."""
    from reasoning.toy.task import generate_problems

    train = [r for r in generate_problems(60, seed=4) if r["subject"] != "linear"][:20]
    cfg = TracesConfig(teacher=TeacherConfig(kind="toy"), n=4, keep_per_problem=0)
    teacher = load_teacher(cfg.teacher, cfg.sampling, train)
    assert teacher.info == {"kind": "toy", "id": "toy:reference-solutions", "revision": TOY_TEACHER_REVISION}
    kept, rejected, metrics = generate_traces(teacher, train, [], cfg, tmp_path / "journal", progress=False)
    assert metrics["coverage"] == 1.0 and not [r for r in rejected if r["reject_reason"] != "duplicate"]
    assert len(kept) > 1.5 * len(train)  # most problems have several orders
    assert all(t["message_content"] == f"\\boxed{{{row['answer']}}}" for row in train for t in kept
               if t["problem"] == row["problem"])
    unknown = list(teacher.sample(["Compute 1 + 1."], 4, [0]))
    assert unknown == [(0, [], 0.0)]


# ---------------------------------------------------------------------------------------------
# SFT examples


@pytest.mark.parametrize("think", [True, False])
def test_sft_loss_mask_covers_exactly_the_response(tiny_tokenizer_path, think):
    tok = Tokenizer(tiny_tokenizer_path)
    cfg = SFTConfig(think=think)
    tokens, mask = sft_example("What is 12 + 7?", "12 + 7 = 19", "\\boxed{19}", tok, cfg)
    first = mask.index(1)
    assert set(mask[:first]) == {0} and set(mask[first:]) == {1}  # one contiguous response span at the end
    prompt = render("What is 12 + 7?", student_prompt(cfg), tok.chat_template)
    assert tok.decode(tokens[:first]) == prompt
    response = tok.decode(tokens[first:])
    if think:
        assert prompt.endswith("<|im_start|>assistant\n")
        assert response == "<think>\n12 + 7 = 19\n</think>\n\n\\boxed{19}<|im_end|>"
    else:  # non-thinking mode: the empty think block is part of the prompt, not a target
        assert prompt.endswith("<think>\n\n</think>\n\n")
        assert response == "12 + 7 = 19\n\n\\boxed{19}<|im_end|>"
    assert tokens[-1] == tok.im_end_id


def test_sft_needs_a_template_whose_conversation_extends_its_prompt(tiny_tokenizer_path, tmp_path):
    """The loss goes on what follows the evaluation prompt; a template that renders the answered
    conversation otherwise (here: no generation prompt inside it) cannot be trained behind."""
    shutil.copyfile(tiny_tokenizer_path, tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant (thinking):{% endif %}")}))
    with pytest.raises(ValueError, match=f"{tmp_path}.*does not begin with the prompt"):
        sft_example("What is 12 + 7?", "12 + 7 = 19", "\\boxed{19}", Tokenizer(tmp_path), SFTConfig())


def test_sft_examples_hold_out_whole_problems(tiny_tokenizer_path):
    tok = Tokenizer(tiny_tokenizer_path)
    traces = [{"problem_id": f"p{i}", "problem": f"What is {i}?", "message_thinking": f"it is {i}",
               "message_content": f"\\boxed{{{i}}}", "verified": True} for i in range(10) for _ in range(2)]
    traces.append({**traces[0], "verified": False})
    train, val, counts = build_sft_examples(traces, tok, SFTConfig(val_problems=3))
    assert counts == {"traces": 21, "unverified_skipped": 1, "malformed_skipped": 0, "train_examples": 14,
                      "val_examples": 6, "train_problems": 7, "val_problems": 3}
    assert not {tuple(t) for t, _ in train} & {tuple(t) for t, _ in val}  # both traces of a problem on one side
    with pytest.raises(ValueError, match="cannot spare 10"):
        build_sft_examples(traces, tok, SFTConfig(val_problems=10))


def test_trace_rows_without_a_field_are_skipped_counted_and_named(tiny_tokenizer_path, caplog):
    tok = Tokenizer(tiny_tokenizer_path)
    traces = [{"problem_id": f"p{i}", "problem": f"What is {i}?", "message_thinking": f"it is {i}",
               "message_content": f"\\boxed{{{i}}}", "verified": True} for i in range(6)]
    del traces[2]["message_thinking"]  # the reproduction: KeyError: 'message_thinking'
    traces[4]["message_content"] = ""
    train, val, counts = build_sft_examples(traces, tok, SFTConfig(val_problems=1), "data/traces/traces.jsonl")
    assert counts["malformed_skipped"] == 2 and len(train) + len(val) == 4
    assert "data/traces/traces.jsonl:3: row skipped: field 'message_thinking' missing" in caplog.text
    assert "data/traces/traces.jsonl:5: row skipped: field 'message_content' missing or empty" in caplog.text


# ---------------------------------------------------------------------------------------------
# Endpoint client against a stub server


class Stub(BaseHTTPRequestHandler):
    """/v1/chat/completions: fails the first request with 500, then answers one choice per request
    (as Ollama does, ignoring n) with separate reasoning, after checking the bearer key."""

    calls: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.calls.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.headers.get("Authorization") != "Bearer sekret":
            return self._send(401, {"error": "bad key"})
        if len(Stub.calls) == 1:
            return self._send(500, {"error": "overloaded"})
        question = body["messages"][-1]["content"]
        a, b = (int(x) for x in question.split("Compute ")[1].split(".")[0].split(" + "))
        message = {"role": "assistant", "content": f"So \\boxed{{{a + b}}}",
                   "reasoning_content": f"{a} + {b} = {a + b}"}
        choice = {"index": 0, "finish_reason": "stop", "message": message}
        self._send(200, {"model": "stub-model-v2", "choices": [choice]})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_url():
    Stub.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_endpoint_client_retries_authenticates_and_fills_n(stub_url, monkeypatch, tmp_path):
    monkeypatch.setenv("STUB_KEY", "sekret")
    sleeps = []
    cfg = EndpointConfig(base_url=stub_url, api_key_env="STUB_KEY", backoff_s=1.0, concurrency=2)
    client = ChatClient(cfg, "stub-model", sleep=sleeps.append)
    choices = client.complete([{"role": "user", "content": "Compute 2 + 3."}], n=2, seed=7, max_tokens=50)
    assert [(c.content, c.reasoning, c.model) for c in choices] == [("So \\boxed{5}", "2 + 3 = 5",
                                                                      "stub-model-v2")] * 2
    assert len(Stub.calls) == 3 and len(sleeps) == 1 and 0.5 <= sleeps[0] <= 1.0  # one retry after the 500
    assert {c["path"] for c in Stub.calls} == {"/v1/chat/completions"}
    first = Stub.calls[0]["body"]
    assert first["n"] == 2 and first["max_tokens"] == 50 and first["model"] == "stub-model" and first["seed"] == 7
    assert Stub.calls[2]["body"]["n"] == 1 and Stub.calls[2]["body"]["seed"] == 8  # the missing choice, new seed

    # the endpoint teacher through generate_traces: separate reasoning becomes message_thinking
    tcfg = TracesConfig(n=1, sampling=SamplingConfig(max_new_tokens=50, temperature=0.7))
    teacher = EndpointTeacher(client, PromptConfig(template="chat", cot_suffix=COT_SUFFIX), tcfg.sampling,
                              {"kind": "endpoint", "id": "stub-model", "revision": ""})
    kept, rejected, metrics = generate_traces(teacher, rows(5), [], tcfg, tmp_path, progress=False)
    assert len(kept) == 5 and not rejected and metrics["coverage"] == 1.0
    assert kept[1]["message_thinking"] == "1 + 2 = 3" and kept[1]["served_model"] == "stub-model-v2"
    assert Stub.calls[-1]["body"]["messages"][-1]["content"].endswith(COT_SUFFIX)


def test_endpoint_client_fails_fast_on_bad_key_and_gives_up_after_retries(stub_url, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "wrong")
    client = ChatClient(EndpointConfig(base_url=stub_url, api_key_env="STUB_KEY"), "m", sleep=lambda s: None)
    with pytest.raises(EndpointError, match="HTTP 401.*api_key_env"):
        client.complete([{"role": "user", "content": "Compute 1 + 1."}])
    assert len(Stub.calls) == 1  # not retried
    monkeypatch.delenv("STUB_KEY")
    with pytest.raises(EndpointError, match="STUB_KEY is empty or unset"):
        ChatClient(EndpointConfig(base_url=stub_url, api_key_env="STUB_KEY"), "m")
    dead = ChatClient(EndpointConfig(base_url="http://127.0.0.1:9/v1", max_retries=2, timeout_s=2), "m",
                      sleep=lambda s: None)
    with pytest.raises(EndpointError, match="failed 3 times"):
        dead.complete([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------------
# Stages


SFT_PARAMS = {"think": True, "val_problems": 4, "train": {
    "lr": 3e-3, "warmup_steps": 2, "epochs": 2, "batch_size": 4, "micro_batch_size": 4, "max_len": 256,
    "checkpoint_every": 2, "device": "cpu", "dtype": "float32", "seed": 0}}


@pytest.fixture(scope="module")
def sft_inputs(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("sft")
    traces = [{"id": f"p{i}/{k}", "problem_id": f"p{i}", "problem": f"What is {i} + {k}?", "verified": True,
               "message_thinking": f"{i} + {k} = {i + k}", "message_content": f"\\boxed{{{i + k}}}"}
              for i in range(12) for k in range(2)]
    write_jsonl(root / "traces.jsonl", traces)
    (root / "params.yaml").write_text(yaml.safe_dump({"distill_sft": SFT_PARAMS}))
    return root


def sft_args(root: Path, name: str, model: Path) -> list[str]:
    out = root / name
    return ["--model", str(model), "--traces", str(root / "traces.jsonl"), "--out", str(out / "model"),
            "--metrics", str(out / "metrics.json"), "--curve", str(out / "curve.json"),
            "--val-curve", str(out / "val.json"), "--chart", str(out / "chart.png"),
            "--params", str(root / "params.yaml"),
            "--state", str(out / "state")]


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def test_killed_sft_resumes_to_the_same_model_and_log(sft_inputs, tiny_ckpt, monkeypatch):
    root = sft_inputs
    straight = sft_main(sft_args(root, "straight", tiny_ckpt))
    assert straight["steps"] == 8 and straight["train_examples"] == 16 and straight["val_examples"] == 8
    meta = read_json(root / "straight" / "model" / "metadata.json")
    assert meta["prompt"] == dataclasses.asdict(PromptConfig(template="chat", think=True))
    # The export: the base's tokenizer files and template, stops at <|im_end|> or <|endoftext|> anywhere.
    sft, tok = root / "straight" / "model", Tokenizer(tiny_ckpt)
    assert (sft / "tokenizer_config.json").read_bytes() == (tiny_ckpt / "tokenizer_config.json").read_bytes()
    assert read_json(sft / "generation_config.json") == {
        "bos_token_id": tok.eos_id, "eos_token_id": [tok.im_end_id, tok.eos_id], "pad_token_id": tok.eos_id}
    assert meta["prompt_hash"] == straight["prompt_hash"] == prompt_hash(PromptConfig(template="chat", think=True),
                                                                         tok.chat_template)
    assert_chat_matches_transformers(sft, root / "straight", think=True)
    assert not (root / "straight" / "state").exists() or not any((root / "straight" / "state").iterdir())

    import stages.distill_sft as stage
    real_train = stage.train

    def train_killed_at_step_5(*args, log=None, **kw):
        def dying_log(step, m):  # the step's row is in the log file when this runs
            if log:
                log(step, m)
            if step == 5 and "loss" in m:
                raise KeyboardInterrupt("killed")
        return real_train(*args, log=dying_log, **kw)

    monkeypatch.setattr(stage, "train", train_killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        sft_main(sft_args(root, "resumed", tiny_ckpt))
    monkeypatch.setattr(stage, "train", real_train)
    resumed = sft_main(sft_args(root, "resumed", tiny_ckpt))
    assert resumed["resumed_from"] == 4
    a, b = state_of(root / "straight" / "model"), state_of(root / "resumed" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def curves(name):
        return ([(r["step"], r["loss"], r["lr"]) for r in read_json(root / name / "curve.json")],
                [(r["step"], r["val_loss"]) for r in read_json(root / name / "val.json")])

    assert curves("resumed") == curves("straight")  # each step logged once, with the same values
    steps, val = curves("straight")
    assert [s for s, _, _ in steps] == list(range(1, 9)) and [s for s, _ in val] == [4, 8]  # val at epoch ends
    assert (root / "straight" / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # how it reads: test_report


@pytest.mark.slow
def test_sft_stage_under_torchrun_with_two_processes(sft_inputs, tiny_ckpt):
    root = sft_inputs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.distill_sft", *sft_args(root, "ddp", tiny_ckpt)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    if not (root / "straight" / "model").exists():  # the one-process run of the resume test
        sft_main(sft_args(root, "straight", tiny_ckpt))
    a, b = state_of(root / "straight" / "model"), state_of(root / "ddp" / "model")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert read_json(root / "ddp" / "metrics.json")["steps"] == 8


def test_teacher_traces_stage_with_an_engine_teacher(tmp_path, tiny_ckpt):
    train, test = rows(6), rows(2, start=50)
    train.append({**test[0], "id": "leak"})  # a test problem in the training split
    write_dataset(train, tmp_path / "train.jsonl", "test")
    write_dataset(test, tmp_path / "test.jsonl", "test")
    section = {"teacher": {"model": str(tiny_ckpt), "device": "cpu", "dtype": "float32", "batch_size": 8},
               "sampling": {"max_new_tokens": 6, "temperature": 1.0}, "n": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teacher_traces": section}))
    args = ["--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl"),
            "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json"),
            "--params", str(tmp_path / "params.yaml"),
            "--state", str(tmp_path / "work"), "--no-progress"]
    metrics = traces_main(args)
    assert metrics["contaminated"] == {"exact": 1, "ngram": 0} and metrics["problems_sampled"] == 6
    assert metrics["samples"] == 12 == metrics["kept"] + sum(metrics["rejected"].values())
    assert len(read_jsonl(tmp_path / "out" / "rejected.jsonl")) == 12 - metrics["kept"]  # a random model
    assert metrics["teacher_kind"] == "engine" and len(metrics["teacher_revision"]) == 16
    assert (metrics["grader"], metrics["grader_version"]) == (GRADER_NAME, GRADER_VERSION)
    assert read_json(tmp_path / "metrics.json") == json.loads(json.dumps(metrics))
    again = traces_main(args)  # the journal makes the rerun identical
    assert {k: v for k, v in again.items() if k not in ("wall_time_s", "peak_memory_bytes")} == \
        {k: v for k, v in metrics.items() if k not in ("wall_time_s", "peak_memory_bytes")}
    with pytest.raises(ValueError, match="unknown key"):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teacher_traces": {**section, "temprature": 1}}))
        traces_main(args)


@pytest.mark.parametrize("main", [traces_main, sft_main])
def test_stage_help(main, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "usage: python -m stages." in capsys.readouterr().out
