"""The answer conventions of issue 15, one parametrized table per kind.

Each row is (completion, gold, right verdict). Rows that must stay incorrect guard each fix against
over-accepting. `B(...)` boxes an answer, as a model's completion would. The last rows of each
table (after the "held out" comment) were written after the fix, as a check that it covers the
kind rather than the listed lines.
"""

from __future__ import annotations

import pytest

from reasoning.grading import answers_equivalent, extract_answer, grade


def B(answer: str) -> str:
    return f"The final answer is $\\boxed{{{answer}}}$."


def ids(table: list[tuple]) -> list[str]:
    return [f"{i}-{'ok' if row[-1] is True else 'wrong' if row[-1] is False else 'none'}" for i, row in enumerate(table)]


def check(completion: str, gold: str, expected: bool) -> None:
    verdict = grade(completion, gold)
    assert bool(verdict) is expected, (completion, gold, verdict)


def check_symmetric(completion: str, gold: str, expected: bool) -> None:
    check(completion, gold, expected)
    pred = extract_answer(completion)  # voting compares answers both ways: the order must not matter
    assert bool(answers_equivalent(gold, pred)) is expected, (gold, pred)


# 1. A repeated final box is one answer, not a list.
REPEATED_BOX = [
    ("The answer is \\boxed{5}.\n\n\\boxed{5}", "5", True),
    ("So $\\boxed{(1, 2)}$.\n\n$\\boxed{(1,2)}$", "(1,2)", True),
    ("\\boxed{[0, 1)}\n\n\\boxed{[0, 1)}", "[0,1)", True),
    ("The roots are \\boxed{1, 2}\n\n\\boxed{1, 2}", "1, 2", True),
    ("\\boxed{\\frac{1}{2}} \\boxed{\\dfrac{1}{2}}", "\\frac12", True),
    ("$\\boxed{3}$ $\\boxed{3}$ $\\boxed{3}$", "3", True),
    ("\\boxed{x^2 + 1}\n\n\\boxed{x^2+1}", "x^2+1", True),
    ("\\boxed{2}, \\boxed{3}\n\n\\boxed{2}, \\boxed{3}", "2, 3", True),
    ("\\boxed{\\{1, 2\\}}\n\\boxed{\\{1,2\\}}", "\\{1, 2\\}", True),
    ("\\boxed{-2} and \\boxed{1}", "-2, 1", True),  # different boxes stay a list
    ("$\\boxed{\\text{(B)}}$\n\n$\\boxed{\\text{(B)}}$", "\\text{(B)}", True),
    ("\\[\\boxed{10}\\]\n\\[\\boxed{10}\\]", "10", True),
    ("\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}\n\n\\boxed{(3, \\frac{\\pi}{2})}", "(3,\\frac{\\pi}{2})", True),
    ("\\boxed{1}, \\boxed{2}, \\boxed{1}", "1, 2", True),
    ("\\boxed{5}\n\n\\boxed{6}", "5", False),
    ("\\boxed{5}\n\n\\boxed{6}", "6", False),
    ("\\boxed{5}\n\n\\boxed{6}", "5, 6", True),
    ("\\boxed{(1,2)}\n\n\\boxed{(2,1)}", "(1,2)", False),
    ("\\boxed{[0, 1)}\n\n\\boxed{[0, 1]}", "[0,1)", False),
    # held out: written after the fix, run once as a check
    ("Final: $\\boxed{\\sqrt{2}}$\n\n$\\boxed{\\sqrt{2}}$", "\\sqrt2", True),
    ("\\boxed{(-\\infty, 3]}\n\\boxed{(-\\infty,3]}", "(-\\infty,3]", True),
    ("\\boxed{7}\n\n\\boxed{-7}", "7", False),
]


@pytest.mark.parametrize("completion, gold, expected", REPEATED_BOX, ids=ids(REPEATED_BOX))
def test_repeated_final_box_is_one_answer(completion, gold, expected):
    check(completion, gold, expected)


# 2. The last closed box is the answer; an "answer is" phrase is only the fallback without a box.
BOX_BEATS_PHRASE = [
    ("Hence $\\boxed{12}$. Double-check: the answer is indeed 12.", "12", True),
    ("So \\boxed{12}. Therefore the answer is 12 apples.", "12", True),
    ("\\boxed{7}\n\nThus, the answer is: seven.", "7", True),
    ("The sum is $\\boxed{20}$. The answer is consistent with 4 \\cdot 5.", "20", True),
    ("We find $\\boxed{\\frac{3}{4}}$, so the answer is that $\\frac{3}{4}$ of the pie is left.", "\\frac34", True),
    ("There are $\\boxed{15}$ ways... no wait, recount: the final answer is 16", "15", True),
    ("There are $\\boxed{15}$ ways... no wait, recount: the final answer is 16", "16", False),
    ("The answer is 9.\n\n$\\boxed{9}$", "9", True),
    ("Therefore \\boxed{8}. The answer is 8 because 2^3 = 8.", "8", True),
    ("\\boxed{x=4}\n\nSo the final answer is x equals four.", "4", True),
    ("\\boxed{\\frac{1}{3}}. Answer: about 0.33", "\\frac13", True),
    ("Hence $\\boxed{12}$. Double-check: the answer is indeed 12.", "13", False),
    ("Thus the answer is $16$.", "16", True),  # no box: the phrase decides
    ("The final answer is: 2, 3", "2, 3", True),
    # held out: written after the fix, run once as a check
    ("The area is $\\boxed{36}$ square units. So the answer is 36 square units, which is 6^2.", "36", True),
    ("$\\boxed{-4}$\n\nHence, the answer is: $x = -4$ is the only root, not 4.", "-4", True),
    ("\\boxed{3}. Wait, the answer is 4.", "4", False),
]


@pytest.mark.parametrize("completion, gold, expected", BOX_BEATS_PHRASE, ids=ids(BOX_BEATS_PHRASE))
def test_last_closed_box_beats_answer_phrase(completion, gold, expected):
    check(completion, gold, expected)


# 3. An unclosed final box (cut off inside \boxed{) is no final answer, not the box before it.
UNCLOSED_BOX = [
    ("So \\boxed{5}. Hmm, let me recompute: \\boxed{", "5"),
    ("We get \\boxed{12}. Double-checking, the final answer is \\boxed{13", "12"),
    ("We get \\boxed{12}. Double-checking, the final answer is \\boxed{13", "13"),
    ("\\boxed{\\frac{1}{2", "\\frac12"),
    ("The answer is \\boxed{", "5"),
    ("$\\boxed{3}$ and $\\boxed{4", "3"),
    ("The answer is 7. So $\\boxed{\\text{sev", "7"),
    ("\\boxed{5} then \\boxed {", "5"),
    ("\\boxed{5} \\fbox{6", "5"),
    ("\\boxed{2} and \\boxed{3} and \\fbox{", "2, 3"),
    # held out: written after the fix, run once as a check
    ("Thus \\boxed{42}.\n\nActually, reconsider the count: \\boxed{4", "42"),
    ("\\boxed{\\sqrt{2}} ... final: \\fbox{\\sqrt{", "\\sqrt2"),
]


@pytest.mark.parametrize("completion, gold", UNCLOSED_BOX, ids=ids(UNCLOSED_BOX))
def test_unclosed_final_box_is_no_answer(completion, gold):
    assert extract_answer(completion) is None
    verdict = grade(completion, gold)
    assert not verdict and verdict.reason == "no-answer" and verdict.extracted is None


@pytest.mark.parametrize("completion, gold", [
    ("\\boxed{5}", "5"),
    ("\\boxed{5}\n\n(The format asked for is \\boxed{}.)", "5"),  # an empty closed box is not an answer
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
])
def test_closed_boxes_still_answer(completion, gold):
    check(completion, gold, True)


# 4. Thousands separators inside any brace or bracket group are still separators.
THOUSANDS = [
    (B("\\frac{1,000}{3}"), "\\frac{1000}{3}", True),
    (B("\\sqrt{1,000,000}"), "1000", True),
    (B("1,000^{2}"), "1000000", True),
    (B("1,000(1.05)^2"), "1102.5", True),
    (B("\\frac{12,345}{2}"), "6172.5", True),
    (B("2^{1,000}"), "2^{1000}", True),
    (B("\\text{1,250}"), "1250", True),
    (B("10,000\\pi"), "10000\\pi", True),
    (B("\\frac{1{,}000}{3}"), "\\frac{1000}{3}", True),
    (B("1,000 \\cdot 10^{3}"), "1000000", True),
    (B("\\$1,500 \\text{ per month}"), "1500", True),
    (B("\\dfrac{2,000}{3}"), "\\frac{2000}{3}", True),
    (B("\\sqrt{2,500}"), "50", True),
    (B("3,000\\sqrt{2}"), "3000\\sqrt2", True),
    (B("2(1,000)"), "2000", True),
    (B("(1,000)^2"), "1000000", True),
    (B("1,000\\left(1+\\frac{5}{100}\\right)^{2}"), "1102.5", True),
    (B("\\$1,234.50"), "1234.5", True),
    (B("(100,200)"), "100200", False),  # a pair, not a number
    (B("[1,500]"), "1500", False),  # an interval
    (B("\\{1,234\\}"), "1234", False),  # a set
    (B("\\frac{1,000}{3}"), "\\frac{1}{3}", False),
    (B("(1,000, 2,000)"), "(1000, 2000)", False),  # ambiguous inside a tuple: left alone
    # held out: written after the fix, run once as a check
    (B("\\frac{5,000}{9}"), "\\frac{5000}{9}", True),
    (B("\\sqrt{10,000}"), "100", True),
    (B("25,000^{1/2}"), "50\\sqrt{10}", True),
    (B("\\frac{1,000}{7}"), "\\frac{1000}{9}", False),
]


@pytest.mark.parametrize("completion, gold, expected", THOUSANDS, ids=ids(THOUSANDS))
def test_thousands_separators_inside_groups(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 5. Degrees inside trigonometric functions are degrees, not radians.
TRIG_DEGREES = [
    (B("\\sin 30^\\circ"), "\\frac{1}{2}", True),
    (B("\\cos 60^{\\circ}"), "0.5", True),
    (B("\\tan 45\u00b0"), "1", True),
    (B("\\sin(30 \\text{ degrees})"), "1/2", True),
    (B("\\sin 30 \\text{ degrees}"), "\\frac12", True),
    (B("2\\cos^2 45^\\circ"), "1", True),
    (B("\\sin 60^\\circ"), "\\frac{\\sqrt{3}}{2}", True),
    (B("\\cos(90^\\circ - \\theta)"), "\\sin\\theta", True),
    (B("\\sin 30^\\circ + \\cos 60^\\circ"), "1", True),
    (B("\\sin\\left(30^{\\circ}\\right)"), "1/2", True),
    (B("\\sin 30\\degree"), "\\frac12", True),
    (B("\\cos 0^\\circ"), "1", True),
    (B("\\tan 60\\degree"), "\\sqrt3", True),
    (B("\\cos 120^\\circ"), "-\\frac12", True),
    (B("\\sin(-30^\\circ)"), "-\\frac12", True),
    (B("\\sec 60^\\circ"), "2", True),
    (B("\\cos 36^\\circ"), "\\frac{1+\\sqrt5}{4}", True),
    (B("2\\sin 15^\\circ \\cos 15^\\circ"), "\\frac12", True),
    (B("\\sin 90 \\text{ degrees}"), "1", True),
    (B("30^\\circ"), "30", True),  # outside a trigonometric function the sign is dropped
    (B("\\theta = 45^\\circ"), "45", True),
    (B("\\sin 30^\\circ"), "\\frac{\\sqrt3}{2}", False),
    (B("\\cos 30^\\circ"), "\\frac12", False),
    (B("\\sin 30^\\circ"), "30", False),
    # held out: written after the fix, run once as a check
    (B("\\cos^2 30^\\circ"), "\\frac34", True),
    (B("4\\sin 150^{\\circ}"), "2", True),
    (B("\\cos 180 \\text{ degrees}"), "-1", True),
    (B("\\tan 45^\\circ"), "\\frac{\\sqrt2}{2}", False),
]


@pytest.mark.parametrize("completion, gold, expected", TRIG_DEGREES, ids=ids(TRIG_DEGREES))
def test_degrees_inside_trig_functions(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 6. Odd roots of negative numbers are real, as in MATH.
ODD_ROOTS = [
    (B("\\sqrt[3]{-8}"), "-2", True),
    (B("\\sqrt[5]{-32}"), "-2", True),
    (B("\\sqrt[3]{-\\frac{1}{8}}"), "-\\frac12", True),
    (B("\\sqrt[3]{-2}"), "-\\sqrt[3]{2}", True),
    (B("(-8)^{1/3}"), "-2", True),
    (B("(-8)^{\\frac{2}{3}}"), "4", True),
    (B("\\sqrt[3]{-27} + 1"), "-2", True),
    (B("\\sqrt[3]{-8}x"), "-2x", True),
    (B("\\sqrt[3]{-64}"), "-4", True),
    (B("-\\sqrt[3]{-8}"), "2", True),
    (B("\\sqrt[7]{-128}"), "-2", True),
    (B("(-32)^{\\frac15}"), "-2", True),
    (B("\\sqrt[3]{-16}"), "-2\\sqrt[3]{2}", True),
    (B("\\sqrt[3]{-0.001}"), "-0.1", True),
    (B("\\sqrt[6]{-64}"), "-2", False),
    (B("\\sqrt[3]{-8}"), "1+\\sqrt{3}i", False),  # the real root, not the principal one
    (B("\\sqrt[3]{-8}"), "2", False),
    (B("\\sqrt[4]{-16}"), "-2", False),  # even roots of negatives stay complex
    (B("\\sqrt[4]{-16}"), "2", False),
    (B("\\sqrt{-4}"), "-2", False),
    (B("\\sqrt{-4}"), "2i", True),
    # held out: written after the fix, run once as a check
    (B("\\sqrt[3]{-1000}"), "-10", True),
    (B("2\\sqrt[3]{-27}"), "-6", True),
    (B("\\sqrt[3]{-\\frac{27}{64}}"), "-0.75", True),
    (B("\\sqrt[3]{-27}"), "3", False),
]


@pytest.mark.parametrize("completion, gold, expected", ODD_ROOTS, ids=ids(ODD_ROOTS))
def test_odd_roots_of_negatives_are_real(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 7. "x is not a" is the set it describes; so is a set difference.
EXCLUSIONS = [
    (B("x \\neq 0"), "(-\\infty, 0) \\cup (0, \\infty)", True),
    (B("\\mathbb{R} \\setminus \\{0\\}"), "(-\\infty, 0) \\cup (0, \\infty)", True),
    (B("(0, 20) \\setminus \\{4\\}"), "(0,4) \\cup (4,20)", True),
    (B("x \\ne -1"), "(-\\infty,-1)\\cup(-1,\\infty)", True),
    (B("\\{x \\mid x \\neq 3\\}"), "(-\\infty,3)\\cup(3,\\infty)", True),
    (B("\\mathbb{R} - \\{2\\}"), "(-\\infty,2)\\cup(2,\\infty)", True),
    (B("\\mathbb{R}\\backslash\\{1\\}"), "(-\\infty,1)\\cup(1,\\infty)", True),
    (B("x \\neq 2, x \\neq 3"), "(-\\infty,2)\\cup(2,3)\\cup(3,\\infty)", True),
    (B("\\mathbb{R} \\setminus \\{-2, 3\\}"), "(-\\infty,-2)\\cup(-2,3)\\cup(3,\\infty)", True),
    (B("[0, 5] \\setminus \\{0\\}"), "(0,5]", True),
    (B("x \\neq \\pm 1"), "(-\\infty,-1)\\cup(-1,1)\\cup(1,\\infty)", True),
    (B("x \u2260 0"), "(-\\infty, 0) \\cup (0, \\infty)", True),
    (B("x \\neq 1 \\text{ and } x \\neq -1"), "(-\\infty,-1)\\cup(-1,1)\\cup(1,\\infty)", True),
    (B("x \\neq -3, 3"), "(-\\infty,-3)\\cup(-3,3)\\cup(3,\\infty)", True),
    (B("[-5, 5] \\setminus \\{0\\}"), "[-5,0)\\cup(0,5]", True),
    (B("x \\in \\mathbb{R}, x \\neq 0"), "(-\\infty,0)\\cup(0,\\infty)", True),
    (B("\\text{all real numbers except } 0"), "(-\\infty,0)\\cup(0,\\infty)", True),
    (B("\\text{All real numbers except } x = 2 \\text{ and } x = -2"), "(-\\infty,-2)\\cup(-2,2)\\cup(2,\\infty)", True),
    (B("(0,\\infty) \\setminus \\{1\\}"), "(0,1)\\cup(1,\\infty)", True),
    (B("\\text{all real numbers except } 0"), "0", False),  # not the bare 0 once the words are dropped
    (B("x \\neq 5"), "(-\\infty,5]\\cup(5,\\infty)", False),
    (B("x \\neq 0"), "(0, \\infty)", False),
    (B("x \\neq 1"), "(-\\infty, 0) \\cup (0, \\infty)", False),
    (B("(0, 20) \\setminus \\{4\\}"), "(0,4) \\cup (4,20]", False),
    (B("\\mathbb{R} \\setminus \\{0\\}"), "(-\\infty, \\infty)", False),
    (B("x \\neq 0"), "x = 0", False),
    (B("x \\neq 0"), "0", False),
    # held out: written after the fix, run once as a check
    (B("x \\neq 4"), "(-\\infty, 4) \\cup (4, \\infty)", True),
    (B("(-\\infty, 10] \\setminus \\{2\\}"), "(-\\infty,2)\\cup(2,10]", True),
    (B("\\mathbb{R} \\setminus \\{-1, 1\\}"), "(-\\infty,-1)\\cup(-1,1)\\cup(1,\\infty)", True),
    (B("x \\neq 4"), "(-\\infty,4)", False),
]


@pytest.mark.parametrize("completion, gold, expected", EXCLUSIONS, ids=ids(EXCLUSIONS))
def test_not_equal_and_set_difference_are_sets(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 8. A list written with "and"/"or" (Oxford comma included) is the list.
AND_OR_LISTS = [
    (B("2, 3, and 5"), "2, 3, 5", True),
    (B("19, 46, 82"), "19, 46, \\text{ and } 82", True),
    (B("2, 3 \\text{ and } 5"), "2, 3, 5", True),
    (B("1, 2, or 3"), "1,2,3", True),
    (B("-1 \\text{ and } 4"), "4, -1", True),
    (B("\\frac{1}{2}, 1, \\text{and } 2"), "\\frac12, 1, 2", True),
    (B("x = 2 \\text{ or } x = 3"), "2, 3", True),
    (B("2,\\ 3,\\ \\text{and}\\ 5"), "2,3,5", True),
    (B("\\text{2, 3, and 5}"), "2, 3, 5", True),
    (B("3 \\text{ or } -3"), "\\pm 3", True),
    (B("a=1, b=2, \\text{and } c=3"), "a=1,b=2,c=3", True),
    (B("(1,2), (3,4), \\text{ and } (5,6)"), "(1,2),(3,4),(5,6)", True),
    (B("2, 4, 6, and 8"), "8,6,4,2", True),
    (B("\\text{2 and 3}"), "2, 3", True),
    (B("2, 3, and 5"), "2, 3", False),
    (B("2, 3, and 5"), "2, 3, 5, 7", False),
    (B("2, 3, and 5"), "10", False),
    (B("2, 3, and 5"), "2, 4, 5", False),
    # held out: written after the fix, run once as a check
    (B("4, 9, \\text{and } 16"), "4,9,16", True),
    (B("-2, 0, \\text{ or } 2"), "0, 2, -2", True),
    (B("1 \\text{ and } 2"), "1, 2, 3", False),
]


@pytest.mark.parametrize("completion, gold, expected", AND_OR_LISTS, ids=ids(AND_OR_LISTS))
def test_lists_with_and_or(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 9. An equation's left side counts when the two answers name different variables.
EQUATION_SIDES = [
    (B("x = 3"), "y = 3", False),
    (B("x = 3"), "3", True),
    (B("3"), "x = 3", True),
    (B("y = -2"), "x = -2", False),
    (B("y = \\frac{1}{2}"), "x = \\frac{1}{2}", False),
    (B("x = 3"), "x = 3", True),
    (B("x = 3"), "3 = x", True),
    (B("a = 5"), "b = 5", False),
    (B("y = x + 1"), "y = 1 + x", True),
    (B("x - 3 = 0"), "y = 3", False),
    (B("z = 3"), "x = 3", False),
    (B("y=2x"), "x = 2y", False),
    (B("x=3"), "x-3=0", True),
    (B("y = \\frac{3}{4}x + 2"), "y=0.75x+2", True),
    (B("t = 4"), "4", True),
    (B("y = 2"), "y - 2 = 0", True),
    # held out: written after the fix, run once as a check
    (B("x = 7"), "y = 7", False),
    (B("y = -\\frac{3}{2}"), "-\\frac32", True),
    (B("x=-1"), "x = -1", True),
    (B("y = 0"), "x = 0", False),
]


@pytest.mark.parametrize("completion, gold, expected", EQUATION_SIDES, ids=ids(EQUATION_SIDES))
def test_equation_sides_name_the_variable(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 10. Function labels: f(x) =, f^{-1}(x) =, y = name the function's value.
FUNCTION_LABELS = [
    (B("f^{-1}(x) = \\frac{x-1}{2}"), "\\frac{x-1}{2}", True),
    (B("y = 2x+1"), "f(x) = 2x+1", True),
    (B("f(x) = 2x+1"), "y = 2x + 1", True),
    (B("g(x) = x^2 - 1"), "x^2-1", True),
    (B("f'(x) = 3x^2"), "3x^2", True),
    (B("f^{-1}(x)=\\frac{x+3}{2}"), "y = \\frac{x+3}{2}", True),
    (B("h(t) = -16t^2 + 64t"), "-16t^2+64t", True),
    (B("p(x) = (x-1)(x+2)"), "x^2+x-2", True),
    (B("f(x) = 2x+1"), "g(x) = 2x + 1", True),
    (B("g^{-1}(x) = x^3"), "y = x^3", True),
    (B("P(x) = 2x^3 - x"), "2x^3-x", True),
    (B("f(t) = t^2"), "t^2", True),
    (B("f^{-1}(x) = 2x"), "f^{-1}(x) = \\frac{x}{2}", False),
    (B("f(x) = x+1"), "x = x+1", False),
    (B("f^{-1}(x) = \\frac{x+1}{2}"), "\\frac{x-1}{2}", False),
    (B("y = 2x + 1"), "f(x) = 2x - 1", False),
    (B("x = 2y + 1"), "f(x) = 2x + 1", False),
    (B("f(3) = 5"), "f(x) = 5", False),  # a value of f is not the function
    # held out: written after the fix, run once as a check
    (B("f^{-1}(x) = \\sqrt[3]{x - 4}"), "\\sqrt[3]{x-4}", True),
    (B("y = 5 - x"), "f(x) = -x + 5", True),
    (B("f^{-1}(x) = x - 4"), "x + 4", False),
]


@pytest.mark.parametrize("completion, gold, expected", FUNCTION_LABELS, ids=ids(FUNCTION_LABELS))
def test_function_labels(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 11. An undefined expression is never equal to a number.
UNDEFINED = [
    (B("\\sqrt[0]{5}"), "1", False),
    (B("\\sqrt[0]{1}"), "1", False),
    (B("\\frac{1}{0}"), "\\infty", False),
    (B("\\frac{1}{0}"), "0", False),
    (B("0^{-1}"), "\\infty", False),
    (B("\\ln 0"), "-\\infty", False),
    (B("\\log_1 10"), "\\infty", False),
    (B("\\log_0 5"), "0", False),
    (B("\\tan 90^\\circ"), "\\infty", False),
    (B("\\frac{0}{0}"), "1", False),
    (B("\\frac{0}{0}"), "0", False),
    (B("\\cot 0"), "\\infty", False),
    (B("\\sqrt[0]{8}"), "8", False),
    (B("\\log_{1} 1"), "0", False),
    (B("0^{-2}"), "0", False),
    (B("\\csc 0"), "0", False),
    (B("\\sec 90^\\circ"), "\\infty", False),
    (B("\\log_{-2} 4"), "2", False),
    (B("\\sqrt[2]{4}"), "2", True),  # defined ones stay equal
    (B("\\frac{0}{5}"), "0", True),
    (B("\\log_2 8"), "3", True),
    (B("\\ln 1"), "0", True),
    # held out: written after the fix, run once as a check
    (B("\\sqrt[0]{2}"), "2", False),
    (B("\\frac{7}{0}"), "0", False),
    (B("\\log_{1} 3"), "0", False),
]


@pytest.mark.parametrize("completion, gold, expected", UNDEFINED, ids=ids(UNDEFINED))
def test_undefined_never_equals_a_number(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 12. Labeled answers, and golds that list alternatives.
LABELED = [
    (B("3:8"), "V_1:V_2=3:8", True),
    (B("1"), "|PQ|=1", True),
    (B("(2,5), (5,2)"), "(5,2) \\text{ or } (2,5)", True),
    (B("(2, 5) \\text{ and } (5, 2)"), "(5,2) \\text{ or } (2,5)", True),
    (B("V_1 : V_2 = 3 : 8"), "3:8", True),
    (B("AB = 5"), "5", True),
    (B("PQ = 1"), "1", True),
    (B("f(2) = 7"), "7", True),
    (B("m\\angle ABC = 60^\\circ"), "60", True),
    (B("x:y:z = 1:2:3"), "1:2:3", True),
    (B("2:3"), "a:b = 2:3", True),
    (B("\\frac{3}{2}"), "\\frac{AB}{CD} = \\frac32", True),
    (B("2:3"), "AB:CD = 2:3", True),
    (B("\\sqrt{2}"), "|z| = \\sqrt 2", True),
    (B("45^\\circ"), "\\angle ABC = 45^\\circ", True),
    (B("S_{10} = 55"), "55", True),
    (B("P(A) = \\frac{1}{2}"), "\\frac12", True),
    (B("\\overline{AB} = 7"), "7", True),
    (B("3:8"), "8:3", False),
    (B("3:8"), "V_1:V_2 = 8:3", False),
    (B("2"), "|PQ| = 1", False),
    (B("1"), "x + y = 1", False),  # an equation, not a label
    (B("3"), "2x = 6", False),
    (B("(2,5)"), "(5,2) \\text{ or } (2,5) \\text{ or } (1, 1)", False),
    # held out: written after the fix, run once as a check
    (B("5:7"), "A:B = 5:7", True),
    (B("3"), "|MN| = 3", True),
    (B("(1,4), (4,1)"), "(4,1) \\text{ or } (1,4)", True),
    (B("7:5"), "A:B = 5:7", False),
]


@pytest.mark.parametrize("completion, gold, expected", LABELED, ids=ids(LABELED))
def test_labeled_answers(completion, gold, expected):
    check_symmetric(completion, gold, expected)


# 13. Ordinal and unit words around a number.
ORDINALS_AND_UNITS = [
    (B("9^{\\mathrm{th}} grade"), "9", True),
    (B("2.5 \\text{ cents}"), "2.5", True),
    (B("9^{th}"), "9", True),
    (B("9th grade"), "9", True),
    (B("21^{\\text{st}}"), "21", True),
    (B("2^{nd}"), "2", True),
    (B("\\text{3rd}"), "3", True),
    (B("5\\text{ hours}"), "5", True),
    (B("12 \\mbox{ inches}"), "12", True),
    (B("45\\,\\mathrm{mph}"), "45", True),
    (B("4 \\text{ m/s}"), "4", True),
    (B("3\\text{ cm}^2"), "3", True),
    (B("\\$2.50"), "2.5", True),
    (B("1^{\\text{st}}"), "1", True),
    (B("100^{\\text{th}}"), "100", True),
    (B("22^{\\rm nd}"), "22", True),
    (B("8^{\\text{th}} \\text{ grade}"), "8", True),
    (B("\\text{9th grade}"), "9", True),
    (B("10 \\text{ cm}^{2}"), "10", True),
    (B("2 \\text{ km/h}"), "2", True),
    (B("9^{th} grade"), "8", False),
    (B("2^{nd}"), "4", False),
    (B("2.5\\text{ cents}"), "25", False),
    (B("10^{th}"), "10^{10}", False),
    # held out: written after the fix, run once as a check
    (B("12^{\\text{th}} \\text{ grade}"), "12", True),
    (B("3.75 \\text{ dollars}"), "3.75", True),
    (B("31^{\\mathrm{st}}"), "31", True),
    (B("12^{th}"), "13", False),
]


@pytest.mark.parametrize("completion, gold, expected", ORDINALS_AND_UNITS, ids=ids(ORDINALS_AND_UNITS))
def test_ordinal_and_unit_words(completion, gold, expected):
    check_symmetric(completion, gold, expected)
