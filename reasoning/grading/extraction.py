"""Finding the final answer in a model's completion.

Design choice: extraction only scans text; it never parses or evaluates math, so it cannot fail on
a malformed formula or be made to run anything. It trusts explicit markers in order of how
deliberately a model writes them: the last closed \\boxed{} (boxes written back to back are one
answer, and a box repeated there counts once); only without a box, the answer after a "the final
answer is" phrase (such phrases after a box are commentary: "the answer is indeed 12"); then the
last math segment or number. A completion cut off inside its last box has no final answer (not the
box before it: the model was replacing that one). Fallbacks look only at the tail of a long
completion, and text after a hallucinated special token (a next turn the model invented) is
ignored. Brace matching lives here because the box is where it is needed first; normalisation and
the value parser reuse it.
"""

from __future__ import annotations

import re

from .lexicon import _is_prose
from .limits import MAX_ANSWER_CHARS

_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_PHRASE = re.compile(r"(?:answer|correct\s+(?:option|choice))\s*(?:is\b\s*:?|:|=)", re.IGNORECASE)
_MATH_SEG = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])"  # not inside a word: "K2A" holds no number
                     r"(?:-?\d+ \d+/\d+|-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+)")
_BOX_JOINER = re.compile(r"(?:[\s$,;.&~]|\\q?quad|\\text\{\s*(?:and|or)\s*\}|\\[][()]|\b(?:and|or)\b)*")
_TAIL = 4000  # fallbacks only look at the end of the completion
_DOLLAR = "\x01"  # an escaped \\$ (currency) while math segments are delimited by $


def _match_brace(text: str, start: int, limit: int = MAX_ANSWER_CHARS) -> int:
    """Index of the `}` closing the `{` at `start`, skipping escaped braces; -1 when the text ends
    first, -2 when it is not closed within `limit` characters."""
    depth, i, end = 0, start, min(len(text), start + limit)
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1 if end == len(text) else -2


def _box_key(content: str) -> str:
    """What two boxes must share to be the same answer written twice: spacing and fraction style aside."""
    return re.sub(r"\s+|\\[,;:! ]|\\left|\\right|(?<=\\)[dt](?=frac)", "", content)


def _last_boxed(text: str) -> tuple[str, int] | None:
    """(content, end) of the last \\boxed{...} or \\fbox{...} (nested braces; also `\\boxed 5`), or None.
    Boxes written back to back at the end ("\\boxed{-2} and \\boxed{1}") are one answer: "-2, 1"; a box
    repeated among them counts once. A last box that the text ends inside is ("", len(text)): no answer."""
    found: list[tuple[int, int, str]] = []  # (start of the command, end of the box, content)
    matches = list(_BOX_CMD.finditer(text))[-20:]
    for m in reversed(matches):
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos < len(text) and text[pos] == "{":
            close = _match_brace(text, pos)
            if close == -2:  # too long to be an answer: hand it on so that it is refused
                return text[pos + 1:pos + 2 + MAX_ANSWER_CHARS], len(text)
            if close == -1:  # cut off inside the box: an earlier box is not what the model ended on
                if found:
                    break
                return "", len(text)
            content, end = text[pos + 1:close], close + 1
        else:
            content = re.match(r"[^\s$]*", text[pos:pos + MAX_ANSWER_CHARS]).group()
            end = pos + len(content)
        if not content.strip():
            continue  # "\\boxed{}" names the format, it is not an answer
        if found and not _BOX_JOINER.fullmatch(text[end:found[-1][0]]):
            break
        found.append((m.start(), end, content.strip()))
    if not found:
        return None
    answers: dict[str, str] = {}
    for _, _, content in reversed(found):
        answers.setdefault(_box_key(content), content)
    return ", ".join(answers.values()), found[0][1]


def _segment(m: re.Match) -> str:
    return next(g for g in m.groups() if g is not None).replace(_DOLLAR, "\\$").strip()


def _phrase_answer(tail: str) -> str | None:
    """The answer after the last 'final answer is' / 'the answer is' / 'Answer:' phrase."""
    matches = list(_PHRASE.finditer(tail))
    if not matches:
        return None
    rest = tail[matches[-1].end():].lstrip()
    seg = _MATH_SEG.match(rest)  # the phrase is directly followed by a math segment
    if seg:
        return _segment(seg)
    line = rest.split("\n", 1)[0]
    line = re.split(r"(?<!\d)\.(?!\d)|\.(?=\s|$)", line, maxsplit=1)[0]  # end of sentence
    if re.search(r"\bis\b", line):
        line = re.split(r"\bis\b", line)[-1]
    segs = list(_MATH_SEG.finditer(line))
    if segs:
        return _segment(segs[-1])
    line = line.replace(_DOLLAR, "\\$").strip().strip("*").strip()
    if re.search(r"[A-Za-z]{3,}(?:\s+[A-Za-z]{2,}){2,}", line):  # prose, not an answer
        nums = _NUMBER.findall(line)
        return nums[-1] if nums else None
    return line or None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: the last closed \\boxed{}/\\fbox{} (None when the text ends
    inside its last box), else the answer after a 'final answer is' phrase, else the last math
    segment or number, whichever comes later."""
    if not isinstance(text, str) or not text.strip():
        return None
    special = _SPECIAL_TOKEN.search(text)
    if special and text[:special.start()].strip():
        text = text[:special.start()]  # a hallucinated next turn is not part of the answer
    boxed = _last_boxed(text)
    if boxed:
        return boxed[0] or None
    after_think = text.rsplit("</think>", 1)[-1]
    short = after_think.strip()
    if 0 < len(short) <= 100 and "\n" not in short and not _is_prose(short) and not _BOX_CMD.search(short):
        return short  # a bare answer such as "11 + 4/9" or "x = 5"
    tail = (after_think if after_think.strip() else text)[-_TAIL:].replace("\\$", _DOLLAR)
    phrase = _phrase_answer(tail)
    if phrase:
        return phrase
    segs, nums = list(_MATH_SEG.finditer(tail)), list(_NUMBER.finditer(tail))
    if segs and (not nums or segs[-1].end() >= nums[-1].end()):
        return _segment(segs[-1]) or None
    return nums[-1].group() if nums else None
