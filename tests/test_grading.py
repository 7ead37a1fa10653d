"""The answer grader: the labelled table, time limits off the main thread, refusals, injections."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sympy

from reasoning import grading
from reasoning.grading import comparison, sympy_worker
from reasoning.grading import REASONS, Verdict, answers_equivalent, extract_answer, grade

CASES = [json.loads(line) for line in (Path(__file__).parent / "grader_cases.jsonl").read_text().splitlines()]


def _case_id(i: int) -> str:
    return f"{i}-{CASES[i]['family']}"


@pytest.mark.parametrize("i", range(len(CASES)), ids=_case_id)
def test_labelled_table(i, tmp_path, monkeypatch):
    case = CASES[i]
    monkeypatch.chdir(tmp_path)  # the injection cases write `pwned` into the working directory
    verdict = grade(case["pred"], case["gold"])
    assert isinstance(verdict, Verdict) and verdict.reason in REASONS
    assert bool(verdict) is case["expected"], (case, verdict)
    assert verdict.correct == (verdict.reason in ("string-match", "numeric-match", "symbolic-match"))
    assert not list(tmp_path.iterdir()), "grading executed code from the answer"


def test_table_is_broad():
    families = {c["family"] for c in CASES}
    assert len(CASES) >= 200
    assert {"injection", "resource", "interval", "matrix", "equation", "set", "units"} <= families
    assert sum(c["expected"] for c in CASES) > 100 and sum(not c["expected"] for c in CASES) > 100


def test_verdict_api():
    v = grade(r"so the answer is $\boxed{\dfrac{1}{2}}$.", "0.5")
    assert v and v == Verdict(True, "numeric-match", r"\dfrac{1}{2}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.correct = False
    assert not grade("no answer here", "5") and grade("no answer here", "5").reason == "no-answer"
    assert isinstance(grading.GRADER_NAME, str) and isinstance(grading.GRADER_VERSION, str)


@pytest.mark.parametrize("text, expected", [
    (r"x \boxed{\frac{1}{\sqrt{2}}} y", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{1} then \fbox{2}", "2"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{-2} and \boxed{1}", "-2, 1"),
    (r"The final answer is $\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
    ("we get 3, then 4, finally 12.", "12"),
    ("no digits at all", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_reasons():
    assert answers_equivalent(r"\left( 3, \frac{\pi}{2} \right)", r"(3,\pi/2)").reason == "string-match"
    assert answers_equivalent(r"\sqrt{117}", r"3\sqrt{13}").reason == "numeric-match"
    assert answers_equivalent("ab+2a+5b+10", "(a+5)(b+2)").reason == "symbolic-match"
    assert answers_equivalent("ab+2a+5b+11", "(a+5)(b+2)").reason == "mismatch"


def _slow_pair() -> tuple[str, str]:
    """Equal expressions whose sympy proof takes seconds (the 6-angle cosine expansion)."""
    a, b, c, d, e, f = sympy.symbols("a b c d e f")
    return r"\cos(a+b+c+d+e+f)", sympy.latex(sympy.expand_trig(sympy.cos(a + b + c + d + e + f)))


def test_timeout_from_a_worker_thread():
    pred, gold = _slow_pair()
    out = {}

    def work():
        t = time.monotonic()
        out["verdict"] = answers_equivalent(pred, gold, timeout_s=0.2)
        out["seconds"] = time.monotonic() - t

    assert answers_equivalent("x^2-1", "(x-1)(x+1)")  # the sympy child is up before the timed check
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and out["verdict"] == Verdict(False, "timeout", pred)
    assert out["seconds"] < 3
    assert answers_equivalent("x^2-1", "(x-1)(x+1)").reason == "symbolic-match"  # a fresh child took over


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_timeout_inside_multiprocessing_workers(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    pred, gold = _slow_pair()
    answers_equivalent("x^2-1", "(x-1)(x+1)")  # a parent with a live child: a forked worker must not share it
    with multiprocessing.get_context(method).Pool(1) as pool:  # daemonic workers cannot use multiprocessing
        t = time.monotonic()
        verdict = pool.apply(answers_equivalent, (pred, gold), {"timeout_s": 0.2})
        elapsed = time.monotonic() - t
        assert pool.apply(answers_equivalent, ("x^2-1", "(x-1)(x+1)")).reason == "symbolic-match"
    assert verdict.reason == "timeout" and elapsed < 20  # includes the worker's and its child's start-up
    assert answers_equivalent("x^3-1", "(x-1)(x^2+x+1)").reason == "symbolic-match"


@pytest.mark.parametrize("pred", [
    r"9^{9^{9^{9}}}", r"2^{2^{2^{2^{2^{2}}}}}", r"10^{10^{10}}", r"(10^{100})^{1000}", r"x^{100000}",
    r"1000000!", r"(10^{9})!", r"((3!)!)!", r"\binom{100000}{50000}", r"e^{10^{10}}", r"\sqrt[10^{9}]{2}",
    "(" * 500 + "1" + ")" * 500, r"\sqrt{" * 300 + "2" + "}" * 300, r"\frac{1}{" * 200 + "2" + "}" * 200,
    "9" * 5000, "1+" * 3000 + "1", "-" * 3000 + "1", "[" * 60 + "1" + "]" * 60,
])
def test_resource_exhaustion_is_refused_fast(pred):
    t = time.monotonic()
    verdict = answers_equivalent(pred, "1")
    assert verdict == Verdict(False, "refused-unsafe", pred)
    assert time.monotonic() - t < 1.0


def test_small_towers_and_factorials_are_graded():
    assert answers_equivalent("2^{2^{2}}", "16") and answers_equivalent("(3!)!", "720")
    assert answers_equivalent("2^{100}", "1267650600228229401496703205376")


@pytest.mark.parametrize("template", [
    "__import__('os').system('touch {m}')",
    "__import__('builtins').open('{m}', 'w')",
    "eval(\"open('{m}', 'w')\")",
    "exec(\"open('{m}', 'w')\")",
    "(lambda: __import__('os').system('touch {m}'))()",
    "1 + __import__('subprocess').call(['touch', '{m}'])",
    r"\text{{__import__('os').system('touch {m}')}}",
    "Symbol('x').__class__.__mro__[-1].__subclasses__()",
    "sympify(\"__import__('os').system('touch {m}')\")",
])
def test_injected_code_never_runs(template, tmp_path):
    marker = tmp_path / "pwned"
    payload = template.replace("{m}", str(marker))
    for completion in (rf"\boxed{{{payload}}}", f"The final answer is {payload}", payload):
        verdict = grade(completion, r"\sqrt{2}")
        assert not verdict and verdict.reason in REASONS
    assert not answers_equivalent(payload, r"\sqrt{2}")
    assert not marker.exists()


def test_internal_errors_become_grader_error(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(comparison, "_parse_value", boom)
    assert answers_equivalent("1", "2") == Verdict(False, "grader-error", "1")
    assert grade(r"\boxed{1}", "2") == Verdict(False, "grader-error", "1")
    monkeypatch.undo()
    monkeypatch.setattr(comparison, "extract_answer", boom)
    assert grade(r"\boxed{1}", "1") == Verdict(False, "grader-error", None)


def test_child_errors_and_deaths_are_contained():
    worker = sympy_worker._worker()
    with pytest.raises(RuntimeError, match="unknown op"):
        worker.call({"op": "nope", "a": ("num", "1"), "b": ("num", "1")}, 30)
    assert answers_equivalent("x^2-1", "(x-1)(x+1)").reason == "symbolic-match"
    worker.proc.kill()  # our own child, by its process handle
    worker.proc.wait()
    assert answers_equivalent("x^2-4", "(x-2)(x+2)").reason == "symbolic-match"


def test_equivalence_is_symmetric_on_the_table():
    # self-consistency voting groups answers with answers_equivalent, so the order must not matter
    for case in CASES:
        pred = extract_answer(case["pred"])
        if pred is None or case["family"] in ("resource", "injection"):
            continue
        forward, backward = answers_equivalent(pred, case["gold"]), answers_equivalent(case["gold"], pred)
        assert bool(forward) == bool(backward), case


def test_concurrent_threads_share_the_child():
    pairs = [("x^2-1", "(x-1)(x+1)", True), (r"\sin^2 x + \cos^2 x", "1", True), ("x^2+1", "(x+1)^2", False)]
    pairs *= 4
    results = [None] * len(pairs)

    def work(k):
        results[k] = bool(answers_equivalent(*pairs[k][:2]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [expected for _, _, expected in pairs]


def test_voting_groups_equivalent_answers():
    answers = [r"\frac{1}{2}", "0.5", "1/2", r"\dfrac12", "0.6", r"\frac{2}{4}"]
    assert [bool(answers_equivalent(a, "0.5")) for a in answers] == [True, True, True, True, False, True]


def test_import_is_light():
    code = "import sys, reasoning.grading; print(sorted({'torch', 'sympy'} & set(sys.modules)))"
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.stdout.strip() == "[]"  # sympy only loads in the child process, torch never


def test_child_starts_as_a_module_from_another_directory(tmp_path):
    # A fresh process, elsewhere, with the project only on sys.path (no PYTHONPATH, no pip install
    # needed) and a decoy `reasoning` package in its working directory: its sympy child must still
    # import this copy of the grader.
    decoy = tmp_path / "reasoning"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('decoy package imported')\n")
    root = Path(__file__).parents[1]
    code = (f"import sys; sys.path.insert(0, {str(root)!r})\n"
            "from reasoning.grading import answers_equivalent\n"
            "print(answers_equivalent('x^2-1', '(x-1)(x+1)').reason)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.stdout.strip() == "symbolic-match", out.stderr
