"""Canonical string form of an answer, before any parsing.

Design choice: most answers that match are written the same way up to presentation, so they are
decided here, on strings, cheaply and without a parser: delimiters, sizing and spacing commands,
units, ordinal suffixes, degrees, percent signs, thousands separators and trailing punctuation are
removed, and unicode math is rewritten as LaTeX. Two rewrites keep a meaning instead of dropping a
mark: a number of degrees inside a trigonometric function becomes radians (sin 30 degrees is 1/2,
not sin 30), and "A - \\{a\\}" or "A \\backslash \\{a\\}" becomes the set difference "\\setminus".
The result is still LaTeX-ish text: it is compared as a string first and only then handed to the
value parser, which can rely on one spelling of each construct (one fraction macro, one binomial
macro, a private character for matrix rows and for set braces).
"""

from __future__ import annotations

import re

from .extraction import _BOX_CMD, _last_boxed, _match_brace
from .lexicon import _KNOWN_WORDS

_ROW = "\u2016"  # stands for the matrix row separator (two backslashes) in normalised strings
_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u00b7": "\\cdot ", "\u22c5": "\\cdot ",
            "\u00f7": "\\div ", "\u221a": "\\sqrt", "\u03c0": "\\pi ", "\u221e": "\\infty ",
            "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ", "\u00b0": "^\\circ ",
            "\u2248": "\\approx ", "\u2216": "\\setminus ",
            "\u222a": "\\cup ", "\u2208": "\\in ", "\u00b1": "\\pm ", "\u2205": "\\emptyset ",
            "\u00b2": "^2", "\u00b3": "^3", "\u00bd": "(1/2)", "\u00bc": "(1/4)", "\u00be": "(3/4)",
            "\u2153": "(1/3)", "\u2154": "(2/3)"}
# Prose wrappers (a block of words next to math is a unit) and font wrappers (always unwrapped).
_PROSE_CMDS = ("text", "textbf", "textit", "textrm", "textsf", "texttt", "textnormal", "textup",
               "mbox", "hbox", "emph")
_FONT_CMDS = ("mathrm", "mathbf", "mathit", "mathsf", "mathtt", "operatorname", "boldsymbol", "bm")
_TEXT_CMD = re.compile(r"\\(" + "|".join(_PROSE_CMDS + _FONT_CMDS) + r")\s*\{")
_SIZING = re.compile(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|big|Big|bigg|Bigg)"
                     r"(?![A-Za-z])\s*\.?")
_SPACING = re.compile(r"\\[,;: ]|\\q?quad(?![A-Za-z])|\\enspace|\\thinspace|~")
_TRIG = re.compile(r"(?<![A-Za-z])(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])")
# a number of degrees: 30^\circ, 30^{\circ}, 30\degree, 30 \text{ degrees}, 30 degrees (unicode: ^\circ)
_DEGREES_OF = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])"
                         r"|\\circ(?![A-Za-z])|\\degree(?:s)?(?![A-Za-z])"
                         r"|\\(?:text|mathrm)\s*\{\s*deg(?:ree)?s?\s*\}|deg(?:ree)?s?(?![A-Za-z]))")
_ORD = r"(?:st|nd|rd|th)"
# 9th, 9^{th}, 9^{\text{th}}, 9^\mathrm{th}, 9^{\rm th}, 9\text{th}: the number itself
_ORD_CMD = rf"\\[A-Za-z]+\s*\{{\s*{_ORD}\s*\}}"  # \text{th}
_ORDINAL = re.compile(rf"(?<![\w.\\])(\d+)\s*(?:\^\s*\{{\s*(?:{_ORD_CMD}|\\rm\s*{_ORD}|{_ORD})\s*\}}"
                      rf"|\^?\s*{_ORD_CMD}|{_ORD}(?![A-Za-z]))")
_THOUSANDS = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?![\d,])")
_DEGREE = re.compile(r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ(?![A-Za-z])|\\degree(?:s)?(?![A-Za-z]))"
                     r"(?:\s*(?:\\text\s*\{\s*[CF]\s*\}|[CF](?![A-Za-z])))?")  # 20^\circ C
_UNITS = {"cm", "mm", "km", "m", "meter", "meters", "metre", "metres", "centimeters", "kilometers",
          "inch", "inches", "in", "ft", "feet", "foot", "yard", "yards", "mile", "miles", "mph",
          "unit", "units", "square", "sq", "cubic", "degree", "degrees", "deg", "radian", "radians",
          "dollar", "dollars", "cent", "cents", "percent", "percentage", "pct", "hour", "hours", "hr",
          "minute", "minutes", "min", "second", "seconds", "sec", "day", "days", "week", "weeks",
          "year", "years", "month", "months", "people", "students", "ways", "points", "kg", "g",
          "gram", "grams", "pounds", "lb", "lbs", "ounces", "oz", "liters", "gallons", "mL", "L"}


def _real_line_words(s: str) -> str:
    """'all real numbers' is R, and 'all real numbers except 0 and 1' is R \\setminus \\{0, 1\\}, rather
    than a prose block dropped as a unit word (which would leave the bare 0)."""
    flat = re.sub(r"\\(?:text|textrm|mbox|mathrm)\s*\{([^{}]*)\}", r" \1 ", s).strip()
    m = re.fullmatch(r"(?:the\s+set\s+of\s+)?(?:all\s+)?real\s+numbers"
                     r"(?:\s+(?:x\s+)?(?:except|but|other\s+than)(?:\s+for)?\s+(.+?))?\.?",
                     flat, re.IGNORECASE)
    if not m:
        return s
    points = re.sub(r"(?<![A-Za-z\\])x\s*=\s*", "", m.group(1) or "")  # "except x = 2 and x = -2"
    return "\\mathbb{R}" + (f" \\setminus \\{{{points}\\}}" if points else "")


def _unwrap_text_blocks(s: str) -> str:
    """Unwrap \\text{...}-like blocks; a block of words next to math is a unit and is dropped."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    for _ in range(200):
        m = _TEXT_CMD.search(s, pos)
        if not m:
            break
        close = _match_brace(s, m.end() - 1)
        if close < 0:
            break
        pieces.append((False, s[pos:m.start()]))
        pieces.append((m.group(1) in _PROSE_CMDS, s[m.end():close]))
        pos = close + 1
    pieces.append((False, s[pos:]))
    math_part = "".join(p for is_text, p in pieces if not is_text)
    has_math = bool(re.search(r"[0-9]|\\[A-Za-z]", math_part))
    out = []
    skip_power = False
    for is_text, p in pieces:
        if skip_power:  # the ^2 of a dropped "cm}^2"
            p = re.sub(r"^\s*\^\s*(?:\{\s*[23]\s*\}|[23])", "", p)
            skip_power = False
        if is_text and p.strip().lower() in ("and", "or", ","):
            out.append(",")
        elif is_text and has_math and re.fullmatch(r"[\sA-Za-z.()/]*", p) \
                and re.search(r"[A-Za-z]{2}|[A-Za-z]/[A-Za-z]", p):  # a word or a rate (m/s), not a variable
            out.append(" ")
            skip_power = True
        else:
            out.append(p)
    return "".join(out)


def _strip_trailing_units(s: str) -> str:
    """Drop trailing unit words after a number: '20 square units', '15 cm^2', '28 percent'."""
    words = s.split(" ")
    while len(words) > 1:
        w = re.sub(r"\^\{?[23]\}?$", "", words[-1]).rstrip(".")
        if w in _UNITS or (len(w) >= 3 and w.isalpha() and w.lower() not in _KNOWN_WORDS):
            words.pop()
        else:
            break
    if len(words) < len(s.split(" ")) and re.search(r"[0-9}]\s*$|\\pi\s*$", " ".join(words)):
        return " ".join(words)
    return s


def _is_factor(s: str, open_at: int) -> bool:
    """Whether the bracket opened at `open_at` is multiplied or raised, not a tuple: 2(1,000), (1,000)^2."""
    before = s[max(0, open_at - 20):open_at].rstrip()
    if re.search(r"(?:[\d)}\]]|(?<![\\A-Za-z])[A-Za-z])$", before):  # 2( x( f( but not \in( \cup(
        return True
    close = _match_bracket(s, open_at)
    return close > 0 and s[close + 1:].lstrip().startswith("^")


def _match_bracket(s: str, start: int) -> int:
    depth = 0
    for i in range(start, len(s)):
        if s[i] in "([{\u2983":
            depth += 1
        elif s[i] in ")]}\u2984":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _drop_thousands(s: str) -> str:
    """Remove thousands separators (1,000 -> 1000) at the top level, inside brace groups, which are
    LaTeX arguments (\\frac{1,000}{3}, \\sqrt{}, ^{}) and cannot hold a list, and inside brackets that
    are a factor (2(1,000), (1,000)^2). Elsewhere inside parentheses, square brackets and set braces a
    comma separates items ((100,200) is a pair, [1,500] an interval) and is kept."""
    out, last, stack, pos = [], 0, [], 0
    factor: dict[int, bool] = {}  # each bracket is looked at once, however many numbers it holds
    for m in _THOUSANDS.finditer(s):
        for i in range(pos, m.start()):  # the brackets open at the match: (bracket, its index)
            if s[i] in "([{\u2983":
                stack.append((s[i], i))
            elif s[i] in ")]}\u2984" and stack:
                stack.pop()
        pos = m.start()
        if stack and stack[-1][0] in "([" and stack[-1][1] not in factor:
            factor[stack[-1][1]] = _is_factor(s, stack[-1][1])
        if not stack or stack[-1][0] == "{" or factor.get(stack[-1][1], False):
            out += [s[last:m.start()], m.group().replace(",", "")]
            last = m.end()
    return "".join(out) + s[last:]


def _normalize(s: str) -> str:
    """Canonical string form of an answer (still LaTeX-ish): delimiters, spacing, units, degrees,
    percent, thousands separators and trailing punctuation removed."""
    s = s.strip()
    if _BOX_CMD.search(s):
        s = (_last_boxed(s) or (s,))[0]
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = s.replace("\\\\", _ROW)  # matrix row separator, before any single-backslash rule
    if "real numbers" in s.lower():
        s = _real_line_words(s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", " ", s)
    s = s.replace("\\displaystyle", " ")
    s = re.sub(r"(?<=\d)(?:,\\!\s*|\{,\})(?=\d{3})", "", s)  # explicit thousands separators
    s = s.replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"\\left\s*\\\{", "\\{", s)
    s = re.sub(r"\\right\s*\\\}", "\\}", s)
    s = _SIZING.sub("", s)
    s = s.replace("\\{", " \u2983 ").replace("\\}", " \u2984 ")
    s = s.replace("\\lbrace", " \u2983 ").replace("\\rbrace", " \u2984 ")
    s = re.sub(r"\\backslash(?![A-Za-z])|(?<=[)\]}\u2984])\s*-\s*(?=\u2983)", r" \\setminus ", s)  # R - {0}
    s = s.replace("\\langle", "(").replace("\\rangle", ")")
    s = re.sub(r"\\mathbb\s*\{?\s*R\s*\}?", "(-\\\\infty,\\\\infty)", s)  # all reals
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    if _TRIG.search(s):  # sin 30^\circ is sin(pi/6): degrees inside a trigonometric function are an angle
        s = _DEGREES_OF.sub(lambda m: f"({m.group(1)}\\pi/180)", s)
    s = _DEGREE.sub("", s)
    s = _ORDINAL.sub(r"\1", s)  # 9^{\text{th}} grade -> 9 grade, before \text{} blocks are read as units
    s = s.replace("\\%", "").replace("%", "")
    s = _unwrap_text_blocks(s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<=\S) (?:and|or) (?=\S)", ",", s)
    s = re.sub(r",(?:\s*,)+", ",", s)  # the Oxford comma: "2, 3, and 5" is "2, 3, 5"
    s = _strip_trailing_units(s)
    s = _drop_thousands(s)
    if re.fullmatch(r"\d{1,3}(?: \d{3})+", s):
        s = s.replace(" ", "")
    mixed = re.fullmatch(r"([+-]?)(\d+) (\d+)/(\d+)", s)  # plain-text mixed number 4 4/9
    if mixed and int(mixed.group(3)) < int(mixed.group(4)):
        s = f"{mixed.group(1)}({mixed.group(2)}+{mixed.group(3)}/{mixed.group(4)})"
    while s and s[-1] in ".,;:" and not s.endswith(".."):  # an ellipsis is part of the answer
        s = s[:-1].rstrip()
    return s


def _key(s: str) -> str:
    """The string compared for a string match: whitespace never matters."""
    return re.sub(r"\s+", "", s)
