"""The toy task: determinism, disjoint splits, answers checked independently of the generator."""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import os
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from reasoning.data import SCHEMA_FIELDS, answer_from_solution, validate_rows
from reasoning.prompts import COT_SUFFIX, PromptConfig, render
from reasoning.tokenizer import ENDOFTEXT, IM_END, IM_START
from reasoning.toy.task import (
    FAMILIES, LEVELS, TOY_CHAT_TEMPLATE, generate_problems, make_splits, pretrain_corpus, require_disjoint,
    solution_path,
)

ROOT = Path(__file__).resolve().parents[1]
ROWS = generate_problems(1500, seed=11)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _walk(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_walk(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_walk(node.left), _walk(node.right))
    raise ValueError(f"unexpected syntax {ast.dump(node)}")


def value(expr: str, x: Fraction | None = None) -> Fraction:
    """Exact value of our +-*/ expressions (with `7x` and \\frac{a}{b}) by a restricted AST walk."""
    expr = re.sub(r"\\frac\{(\d+)\}\{(\d+)\}", r"(\1/\2)", expr)
    expr = re.sub(r"(\d)x", r"\1*x", expr)
    if x is not None:
        expr = expr.replace("x", f"({x.numerator}/{x.denominator})")
    return _walk(ast.parse(expr, mode="eval").body)


def word_answer(problem: str) -> Fraction:
    """Re-derive a word problem's answer from its sentences alone."""
    total = None
    for sentence in re.split(r"(?<=[.?]) ", problem):
        nums = [int(n) for n in re.findall(r"\d+", sentence)]
        if " has " in sentence:
            total = Fraction(nums[0])
        elif "boxes of" in sentence:
            total += nums[0] * nums[1]
        elif " more." in sentence:
            total += nums[0]
        elif "gives" in sentence or "loses" in sentence:
            total -= nums[0]
        elif "equally among" in sentence:
            total /= nums[0]
        elif not sentence.startswith("How many"):
            raise AssertionError(f"unknown sentence {sentence!r}")
    return total


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate_problems(200, seed=11) == ROWS[:200]  # also prefix-stable
    other = generate_problems(200, seed=12)
    assert len({r["id"] for r in other} & {r["id"] for r in ROWS[:200]}) < 20


def test_rows_do_not_depend_on_hash_randomisation():
    code = "import json, reasoning.toy.task as t; print(json.dumps(t.generate_problems(300, 5)))"
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        digests.add(hashlib.sha256(out.stdout.encode()).hexdigest())
    assert digests == {hashlib.sha256((json.dumps(generate_problems(300, 5)) + "\n").encode()).hexdigest()}


def test_schema_ids_and_coverage():
    kept, skipped = validate_rows(ROWS, "toy")  # the same data code as MATH-500
    assert kept == ROWS and not any(skipped.values())
    assert all(list(r) == list(SCHEMA_FIELDS) for r in ROWS)
    assert len({r["id"] for r in ROWS}) == len(ROWS)
    assert all(r["id"].startswith(f"toy-{r['subject']}-") for r in ROWS)
    assert {(r["subject"], r["level"]) for r in ROWS} == {(f, lv) for f in FAMILIES for lv in LEVELS}


def test_level_and_family_filters():
    rows = generate_problems(100, seed=3, levels=(2, 4), families=("word", "linear"))
    assert {r["level"] for r in rows} == {2, 4} and {r["subject"] for r in rows} == {"word", "linear"}
    assert rows == generate_problems(100, seed=3, levels=(4, 2), families=("linear", "word"))
    with pytest.raises(ValueError, match="levels"):
        generate_problems(5, seed=0, levels=(0, 6))
    with pytest.raises(ValueError, match="families"):
        generate_problems(5, seed=0, families=("geometry",))
    with pytest.raises(ValueError, match="distinct problems"):  # linear level 1 has ~1,300 problems
        generate_problems(2000, seed=0, levels=(1,), families=("linear",))


def test_answers_are_right_by_independent_check():
    for r in ROWS:
        answer = value(r["answer"])
        if r["subject"] == "arithmetic":
            assert value(r["problem"].removeprefix("Compute ").rstrip(".")) == answer, r
        elif r["subject"] == "linear":
            lhs, rhs = r["problem"].removeprefix("Solve for x: ").rstrip(".").split(" = ")
            assert value(lhs, answer) == value(rhs, answer), r
        else:
            assert word_answer(r["problem"]) == answer, r


def test_solutions_are_one_operation_steps_ending_in_the_boxed_answer():
    for r in ROWS:
        *steps, last = r["solution"].split("\n")
        assert last == f"\\boxed{{{r['answer']}}}" and answer_from_solution(r["solution"]) == r["answer"]
        x = value(r["answer"])
        for line in steps:
            sides = line.split(" = ")
            assert len({value(s, x) for s in sides}) == 1, (r["id"], line)  # every equality holds
            assert all(len(re.findall(r" [-+*/] ", s)) <= 1 for s in sides), (r["id"], line)
        assert value(steps[-1].split(" = ")[-1]) == x


def test_higher_levels_take_more_steps():
    for family in FAMILIES:
        rows = [r for r in ROWS if r["subject"] == family]
        steps = [[r["solution"].count("\n") for r in rows if r["level"] == lv] for lv in LEVELS]
        means = [sum(s) / len(s) for s in steps]
        assert means == sorted(means) and means[-1] > means[0], (family, means)


def test_grader_accepts_every_generated_answer():
    from reasoning.grading import grade
    for r in ROWS[:300]:
        assert grade(f"\\boxed{{{r['answer']}}}", r["answer"]), r
        assert grade(r["solution"], r["answer"]), r
        wrong = value(r["answer"]) + 1  # a near miss in the same format
        text = f"\\frac{{{wrong.numerator}}}{{{wrong.denominator}}}" if wrong.denominator > 1 else str(wrong)
        assert not grade(f"\\boxed{{{text}}}", r["answer"]), r


def test_splits_are_disjoint_deterministic_and_checked():
    train, test = make_splits(400, 100, seed=1)
    assert (len(train), len(test)) == (400, 100)
    require_disjoint(train, test)
    assert make_splits(400, 100, seed=1) == (train, test)
    assert make_splits(50, 100, seed=1)[1] == test  # the test split does not move with n_train
    leak = dict(train[7], problem="  " + train[7]["problem"].upper())  # same problem, other case and spacing
    with pytest.raises(ValueError, match="also in train"):
        require_disjoint(train, test + [leak])


def test_pretrain_corpus_kinds():
    rows = ROWS[:1000]
    docs = pretrain_corpus(rows, seed=0, direct_frac=0.4, chat_frac=0.1, plain_frac=0.2)
    assert docs == pretrain_corpus(rows, seed=0, direct_frac=0.4, chat_frac=0.1, plain_frac=0.2)
    assert docs != pretrain_corpus(rows, seed=1, direct_frac=0.4, chat_frac=0.1, plain_frac=0.2)
    kinds = Counter()
    for row, doc in zip(rows, docs):
        assert doc.endswith(ENDOFTEXT) and doc.count(ENDOFTEXT) == 1
        body, boxed = doc.removesuffix(ENDOFTEXT), f"\\boxed{{{row['answer']}}}"
        if body == f"{render(row['problem'])}\n{boxed}":
            kinds["direct"] += 1
        elif body == f"{render(row['problem'], PromptConfig(cot_suffix=COT_SUFFIX))}\n{row['solution']}":
            kinds["cot"] += 1
        elif body == f"{row['problem']}\n{row['solution']}":
            kinds["plain"] += 1
        else:  # the chat transcript continues the exact prompt evaluation sends, thinking off
            prompt = render(row["problem"], PromptConfig(template="chat"), TOY_CHAT_TEMPLATE)
            assert body == f"{prompt}{boxed}{IM_END}\n", body
            assert body.count(IM_START) == 2
            kinds["chat"] += 1
    for kind, frac in {"direct": 0.4, "chat": 0.1, "plain": 0.2, "cot": 0.3}.items():
        assert abs(kinds[kind] / len(rows) - frac) < 0.05, kinds
    assert all(d.endswith(f"{r['solution']}{ENDOFTEXT}") for r, d in
               zip(rows, pretrain_corpus(rows, seed=0, direct_frac=0.0, chat_frac=0.0, plain_frac=0.0)))
    with pytest.raises(ValueError, match="fraction"):
        pretrain_corpus(rows, seed=0, direct_frac=0.8, chat_frac=0.3)



@pytest.mark.parametrize("family", ["arithmetic", "word"])
def test_solution_paths_are_valid_and_varied(family):
    """Every drawn path: each step's arithmetic right, the running total never negative, products first,
    the last step the answer, and every number of the problem used once (each intermediate result
    feeds exactly one later step); across draws several orders appear, left-to-right among them."""
    import random

    rows = [r for r in ROWS if r["subject"] == family][:300]
    rng, varied, canonical = random.Random(0), 0, 0
    for row in rows:
        paths = {solution_path(row, rng) for _ in range(8)}
        varied += len(paths) > 1
        canonical += row["solution"] in paths
        for path in paths:
            *steps, boxed = path.split("\n")
            assert boxed == f"\\boxed{{{row['answer']}}}"
            operands, results, ops = Counter(), [], []
            for line in steps:
                m = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", line)
                assert m, (row["problem"], line)
                a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
                assert r == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] and (op != "/" or a % b == 0)
                operands.update([a, b])
                results.append(r)
                ops.append(op)
            assert str(results[-1]) == row["answer"]
            if path != row["solution"]:  # (the reference word solution buys its boxes where the story does)
                assert ops == sorted(ops, key=lambda o: o != "*")  # products first
            problem_numbers = Counter(int(x) for x in re.findall(r"\d+", row["problem"]))
            assert operands == problem_numbers + Counter(results[:-1]), (row["problem"], path)
    assert varied > 0.6 * len(rows) and canonical > 0, (varied, canonical)


def test_linear_rows_keep_their_solution_and_corpus_shuffles_only_when_asked():
    import random

    row = next(r for r in ROWS if r["subject"] == "linear")
    assert solution_path(row, random.Random(0)) == row["solution"]
    rows = [r for r in ROWS if r["subject"] != "linear"][:400]
    plain = dict(direct_frac=0.0, chat_frac=0.0, plain_frac=1.0)
    assert all(d == f"{r['problem']}\n{r['solution']}{ENDOFTEXT}"
               for r, d in zip(rows, pretrain_corpus(rows, seed=3, **plain)))
    shuffled = pretrain_corpus(rows, seed=3, shuffled_frac=1.0, **plain)
    assert sum(d != f"{r['problem']}\n{r['solution']}{ENDOFTEXT}" for r, d in zip(rows, shuffled)) > 0.5 * len(rows)
    with pytest.raises(ValueError, match="shuffled_frac"):
        pretrain_corpus(rows, seed=3, shuffled_frac=1.5)
