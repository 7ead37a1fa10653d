"""The toy world's task: synthetic, verifiable math problems generated from a seed.

Design: three families (arithmetic chains, linear equations, word problems) at five difficulty
levels; a higher level means more steps and larger numbers. A worked solution is a rigid list of
one-operation steps ("17 + 25 = 42"), each small enough for a tiny transformer to compute in
one pass, ending with the final answer in \\boxed{} on its own line. The answer alone needs all
steps at once, so answering directly is hard and writing the steps helps: the gap that
chain-of-thought, sampling, SFT and GRPO are there to close. Rows use the MATH-500 schema (id,
problem, answer, solution, level, subject). Everything is drawn from one `random.Random(seed)`
and ids hash the problem text with sha256 (never Python's salted `hash`), so a seed gives the
same rows on any machine.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from math import gcd
from typing import Any

from ..chat_template import BUILTIN_TEMPLATE, ChatTemplate
from ..data import check_disjoint, normalize_problem
from ..prompts import COT_SUFFIX, PromptConfig, render
from ..tokenizer import ENDOFTEXT

# The toy world's chat template: the built-in one, which the toy tokenizer (with no template of its
# own) renders with and its checkpoints carry.
TOY_CHAT_TEMPLATE = ChatTemplate(BUILTIN_TEMPLATE)

LEVELS = (1, 2, 3, 4, 5)
Problem = tuple[str, list[str], str]  # (problem text, solution steps, answer)


def _step(a: int, op: str, b: int) -> tuple[int, str]:
    r = a + b if op == "+" else a - b if op == "-" else a * b
    return r, f"{a} {op} {b} = {r}"


# level -> (number of terms, largest term, whether one term is a product of two digits)
_ARITHMETIC = {1: (2, 30, False), 2: (3, 30, False), 3: (4, 50, False), 4: (4, 50, True), 5: (5, 99, True)}


def _arithmetic(rng: random.Random, level: int) -> Problem:
    n_terms, top, with_product = _ARITHMETIC[level]
    values = [rng.randint(1, top) for _ in range(n_terms)]
    texts, steps = [str(v) for v in values], []
    if with_product:  # precedence: the product is computed first, wherever it stands
        i, a, b = rng.randrange(n_terms), rng.randint(2, 9), rng.randint(2, 9)
        values[i], line = _step(a, "*", b)
        texts[i] = f"{a} * {b}"
        steps.append(line)
    expr, total = texts[0], values[0]
    for text, value in zip(texts[1:], values[1:]):
        op = "-" if value <= total and rng.random() < 0.5 else "+"  # running total stays >= 0
        total, line = _step(total, op, value)
        expr += f" {op} {text}"
        steps.append(line)
    return f"Compute {expr}.", steps, str(total)


def _x(coef: int) -> str:
    return "x" if coef == 1 else f"{coef}x"


def _linear(rng: random.Random, level: int) -> Problem:
    if level == 1:  # x + a = b or x - a = b
        x, a = rng.randint(2, 30), rng.randint(1, 30)
        if rng.random() < 0.5 or a >= x:
            return f"Solve for x: x + {a} = {x + a}.", [f"x = {x + a} - {a} = {x}"], str(x)
        return f"Solve for x: x - {a} = {x - a}.", [f"x = {x - a} + {a} = {x}"], str(x)
    if level in (2, 3):  # ax + b = c or ax - b = c
        top_a, top_x, top_b = (5, 10, 20) if level == 2 else (9, 15, 50)
        a, x, b = rng.randint(2, top_a), rng.randint(1, top_x), rng.randint(1, top_b)
        op = "-" if level == 3 and a * x > b and rng.random() < 0.5 else "+"
        c = a * x + b if op == "+" else a * x - b
        undo = "-" if op == "+" else "+"
        steps = [f"{_x(a)} = {c} {undo} {b} = {a * x}", f"x = {a * x} / {a} = {x}"]
        return f"Solve for x: {_x(a)} {op} {b} = {c}.", steps, str(x)
    # ax + b = cx + d: level 4 has an integer answer (maybe negative), level 5 a fraction.
    a = rng.randint(3, 9)
    c, b = rng.randint(1, a - 2), rng.randint(1, 30)
    k = a - c
    while True:
        num = k * rng.choice([n for n in range(-9, 13) if n]) if level == 4 else rng.randint(1, 40)
        if (level == 4 or gcd(num, k) == 1) and b + num >= 1:
            break
    d = b + num
    answer = str(num // k) if level == 4 else f"\\frac{{{num}}}{{{k}}}"  # level 4: k divides num; 5: coprime
    steps = [f"{_x(a)} - {_x(c)} = {_x(k)}", f"{_x(k)} = {d} - {b} = {num}", f"x = {num} / {k} = {answer}"]
    return f"Solve for x: {_x(a)} + {b} = {_x(c)} + {d}.", steps, answer


_NAMES = (("Ann", "She"), ("Ben", "He"), ("Cara", "She"), ("Dan", "He"), ("Eva", "She"), ("Finn", "He"))
_ITEMS = ("apples", "pens", "cards", "books", "eggs", "coins", "stamps", "shells")
_GAIN = ("{p} buys {k} more.", "{p} finds {k} more.")
_LOSS = ("{p} gives {k} to a friend.", "{p} loses {k}.")
# level -> (largest starting count, number of add/remove events, buys boxes, shares at the end)
_WORD = {1: (30, 1, False, False), 2: (30, 2, False, False), 3: (50, 1, True, False),
         4: (50, 2, True, False), 5: (50, 2, True, True)}


def _word(rng: random.Random, level: int) -> Problem:
    top, n_events, boxes, share = _WORD[level]
    while True:  # redraw until the final share divides evenly
        (name, p), items = rng.choice(_NAMES), rng.choice(_ITEMS)
        total = rng.randint(1, top)
        sentences, steps = [f"{name} has {total} {items}."], []
        events = ["change"] * n_events + ["boxes"] * boxes
        rng.shuffle(events)
        for event in events:
            if event == "boxes":
                m, n = rng.randint(2, 9), rng.randint(2, 9)
                bought, line = _step(m, "*", n)
                sentences.append(f"{p} buys {m} boxes of {n}.")
                total, added = _step(total, "+", bought)
                steps += [line, added]
                continue
            lose = total >= 2 and rng.random() < 0.5
            k = rng.randint(1, total - 1) if lose else rng.randint(1, 30)
            sentences.append(rng.choice(_LOSS if lose else _GAIN).format(p=p, k=k))
            total, line = _step(total, "-" if lose else "+", k)
            steps.append(line)
        if not share:
            sentences.append(f"How many {items} does {name} have now?")
            return " ".join(sentences), steps, str(total)
        divisors = [k for k in range(2, 10) if total % k == 0]
        if divisors:
            k = rng.choice(divisors)
            sentences += [f"{p} shares them equally among {k} friends.",
                          f"How many {items} does each friend get?"]
            return " ".join(sentences), steps + [f"{total} / {k} = {total // k}"], str(total // k)


FAMILIES: dict[str, Callable[[random.Random, int], Problem]] = {
    "arithmetic": _arithmetic,
    "linear": _linear,
    "word": _word,
}


def generate_problems(
    n: int, seed: int, levels: Sequence[int] = LEVELS, families: Sequence[str] = tuple(FAMILIES)
) -> list[dict[str, Any]]:
    """`n` distinct problems in the dataset schema; family and level drawn uniformly per row.

    The rows are a prefix-stable stream: the first k rows for n > k equal the rows for n = k.
    """
    bad_levels = sorted(set(levels) - set(LEVELS))
    bad_families = sorted(set(families) - set(FAMILIES))
    if bad_levels or not levels:
        raise ValueError(f"levels {list(levels)} are invalid; choose a non-empty subset of {list(LEVELS)}")
    if bad_families or not families:
        raise ValueError(
            f"families {list(families)} are invalid; choose a non-empty subset of {list(FAMILIES)}"
        )
    if n < 0:
        raise ValueError(f"n = {n}: the number of problems cannot be negative")
    rng = random.Random(seed)
    levels, families = sorted(set(levels)), sorted(set(families))  # order of the arguments must not matter
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    draws = 0
    while len(rows) < n:
        draws += 1
        if draws > 50 * n + 1000:  # duplicates are redrawn, and a small problem space runs out
            raise ValueError(
                f"only {len(rows)} distinct problems found for families {families} at levels {levels}; "
                f"ask for fewer than {n} or allow more levels or families"
            )
        family, level = rng.choice(families), rng.choice(levels)
        problem, steps, answer = FAMILIES[family](rng, level)
        key = normalize_problem(problem)
        if key in seen:
            continue
        seen.add(key)
        rows.append({
            "id": f"toy-{family}-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
            "problem": problem,
            "answer": answer,
            "solution": "\n".join([*steps, f"\\boxed{{{answer}}}"]),
            "level": level,
            "subject": family,
        })
    return rows


def require_disjoint(train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]]) -> None:
    """Raise if a test problem also appears in train (`reasoning.data`'s normalised-text check)."""
    overlap = check_disjoint(train, test)
    if overlap:
        raise ValueError(
            f"{len(overlap)} test problem(s) also in train, e.g. {overlap[:3]}; draw both splits "
            "from one stream of distinct problems (make_splits does)"
        )


def make_splits(
    n_train: int, n_test: int, seed: int, levels: Sequence[int] = LEVELS,
    families: Sequence[str] = tuple(FAMILIES),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Disjoint (train, test) splits from one stream of distinct problems, checked.

    Test takes the head of the stream, so the test split does not change when n_train does.
    """
    rows = generate_problems(n_test + n_train, seed, levels, families)
    train, test = rows[n_test:], rows[:n_test]
    require_disjoint(train, test)
    return train, test


_TERM = re.compile(r"(\d+) \* (\d+)|(\d+)")
_EVENTS = (  # word-problem sentences -> the change they make to the running total
    (re.compile(r"buys (\d+) boxes of (\d+)\.$"), "boxes"),
    (re.compile(r"(?:buys|finds) (\d+) more\.$"), "+"),
    (re.compile(r"(?:gives (\d+) to a friend|loses (\d+))\.$"), "-"),
)


def _signed_terms(row: dict[str, Any]) -> tuple[list[str], list[tuple[str, int]], int] | None:
    """(steps computed first, [(sign, value), ...], divisor at the end or 1) of an arithmetic or word
    problem; None for linear equations."""
    text = row["problem"]
    if row.get("subject") == "arithmetic" and text.startswith("Compute "):
        expr = text[len("Compute "):-1].split(" ")
        first, terms, signs = [], [], ["+"]
        i = 0
        while i < len(expr):
            if i + 2 < len(expr) and expr[i + 1] == "*":
                value, line = _step(int(expr[i]), "*", int(expr[i + 2]))
                first.append(line)
                i += 3
            else:
                value = int(expr[i])
                i += 1
            terms.append(value)
            if i < len(expr):
                signs.append(expr[i])
                i += 1
        return first, list(zip(signs, terms)), 1
    if row.get("subject") == "word":
        sentences = [s + "." for s in text.split(". ") if s]
        start = re.search(r" has (\d+) ", sentences[0])
        if start is None:
            return None
        first, terms = [], [("+", int(start.group(1)))]
        share = re.search(r"among (\d+) friends\.$", sentences[-2]) if len(sentences) > 2 else None
        for sentence in sentences[1:-2 if share else -1]:
            for pattern, kind in _EVENTS:
                m = pattern.search(sentence)
                if m:
                    if kind == "boxes":
                        value, line = _step(int(m.group(1)), "*", int(m.group(2)))
                        first.append(line)
                        terms.append(("+", value))
                    else:
                        terms.append((kind, int(next(g for g in m.groups() if g))))
                    break
        return first, terms, int(share.group(1)) if share else 1
    return None


def solution_path(row: dict[str, Any], rng: random.Random) -> str:
    """A worked solution of `row` that combines its terms in an order drawn from `rng`.

    Arithmetic chains and word problems (before any final sharing) are sums of signed terms, and
    any order that starts with a positive term and keeps the running total >= 0 is as valid as the
    problem's own left-to-right solution (products are still computed first). Different orders
    compute different intermediate sums, so they fail on different steps: a model pretrained on
    several paths samples several, and a majority vote over them can beat its greedy path (the
    diversity self-consistency needs; one rigid path per problem gives none). Other rows, and
    draws that find no valid order in a few tries, keep `row["solution"]`.
    """
    parsed = _signed_terms(row)
    if parsed is None or len(parsed[1]) < 2:
        return row["solution"]
    first, terms, divisor = parsed
    for _ in range(8):
        order = rng.sample(terms, len(terms))
        if order[0][0] != "+":
            continue
        total, steps = order[0][1], list(first)
        for sign, value in order[1:]:
            if sign == "-" and value > total:
                break
            total, line = _step(total, sign, value)
            steps.append(line)
        else:
            if divisor > 1:
                steps.append(f"{total} / {divisor} = {total // divisor}")
                total //= divisor
            if str(total) != row["answer"]:  # a parse the generator did not mean: keep the reference
                return row["solution"]
            return "\n".join([*steps, f"\\boxed{{{row['answer']}}}"])
    return row["solution"]


def pretrain_corpus(
    rows: Sequence[dict[str, Any]], seed: int, direct_frac: float = 0.4, chat_frac: float = 0.1,
    plain_frac: float = 0.2, shuffled_frac: float = 0.0,
) -> list[str]:
    """One pretraining document per row, each ending with <|endoftext|>, its kind drawn at random.

    Kinds: `direct_frac` base prompt + direct \\boxed{} answer; `chat_frac` chat transcript with
    thinking off and a direct answer (so the model has seen the chat tokens); `plain_frac` the
    problem followed by its worked solution, no prompt; the rest base prompt with the
    chain-of-thought suffix + worked solution. A base model trained on this answers directly
    unless the prompt asks it to explain step by step. A worked solution combines the terms in
    an order drawn at random (`solution_path`) with probability `shuffled_frac`, else in the
    problem's order.
    """
    fracs = {"direct_frac": direct_frac, "chat_frac": chat_frac, "plain_frac": plain_frac}
    if any(not 0 <= f <= 1 for f in fracs.values()) or sum(fracs.values()) > 1:
        raise ValueError(f"{fracs}: each fraction must lie in [0, 1] and together they may not exceed 1")
    if not 0 <= shuffled_frac <= 1:
        raise ValueError(f"shuffled_frac {shuffled_frac}: must lie in [0, 1]")
    rng = random.Random(seed)
    docs = []
    for row in rows:
        problem, boxed, r = row["problem"], f"\\boxed{{{row['answer']}}}", rng.random()
        solution = solution_path(row, rng) if shuffled_frac and rng.random() < shuffled_frac else row["solution"]
        if r < direct_frac:
            doc = f"{render(problem)}\n{boxed}"
        elif r < direct_frac + chat_frac:
            # Rendered as the whole conversation, so it begins exactly with the chat prompt
            # `render(problem, PromptConfig(template="chat"), TOY_CHAT_TEMPLATE)` that evaluation sends.
            doc = TOY_CHAT_TEMPLATE.render(
                [{"role": "user", "content": problem},
                 {"role": "assistant", "content": boxed, "reasoning_content": ""}],
                add_generation_prompt=False,
            )
        elif r < direct_frac + chat_frac + plain_frac:
            doc = f"{problem}\n{solution}"
        else:
            doc = f"{render(problem, PromptConfig(cot_suffix=COT_SUFFIX))}\n{solution}"
        docs.append(doc + ENDOFTEXT)
    return docs
