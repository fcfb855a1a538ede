"""Reading integers out of model answers, and OOLONG's integer partial credit: one place for each.

WHY one module: a count read one way by the scorer, another by the failure taxonomy and a third
by interp makes "the worker said 7" mean three different things. The rules differ on purpose
(the official scorer reads only a boxed integer; a lenient reader takes the last number of a
free-text answer; the counting study also reads number words), so each rule is a named option of
one reader, not a copy. A stdlib-only leaf: scorers, the counting study and interp all import it.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["as_int", "find_int", "int_spans", "partial_credit"]

NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
# an integer not glued to a word or a decimal point: "7 rolls", "(-3)"; not "v2", "1.5"
_INT = re.compile(r"(?<![\w.])-?\d+(?![\w.]\d)")
# the lenient scorer's reading: thousands separators ("1,000") and a leading sign
_INT_THOUSANDS = re.compile(r"(?<![\w.])[-+]?\d{1,3}(?:,\d{3})+(?![\d])|(?<![\w.])[-+]?\d+(?![\d])")
_INT_OR_WORD = re.compile(r"(?<![\w.])-?\d+(?![\w.]\d)|\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)

# 0.75 ** 3000 is already below the smallest float; beyond it, skip the power
# (Python raises OverflowError on 0.75 ** (huge int)).
_MAX_DISTANCE = 3000


def int_spans(text: str | None, *, words: bool = False, prefer_boxed: bool = False,
              thousands: bool = False) -> list[tuple[int, int, int]]:
    """(start, end, value) of every integer the reader sees, in order; with `prefer_boxed` and a
    ``\\boxed{N}`` present, only the boxed ones; with `thousands`, "1,000" is one integer."""
    if not text:
        return []
    if prefer_boxed:
        boxed = [(m.start(1), m.end(1), int(m.group(1))) for m in _BOXED.finditer(text)]
        if boxed:
            return boxed
    if thousands:
        return [(m.start(), m.end(), int(m.group(0).replace(",", ""))) for m in _INT_THOUSANDS.finditer(text)]
    rx = _INT_OR_WORD if words else _INT
    out = []
    for m in rx.finditer(text):
        word = m.group(1) if words else None
        out.append((m.start(), m.end(), NUMBER_WORDS[word.lower()] if word else int(m.group(0))))
    return out


def find_int(text: str | None, *, words: bool = False, prefer_boxed: bool = False, thousands: bool = False,
             last: bool = False) -> int | None:
    """The first (or `last`) integer in a free-text answer; None when there is none.

    `words`: also read "seven" (up to twenty); `prefer_boxed`: a ``\\boxed{N}`` wins over other numbers.
    """
    spans = int_spans(text, words=words, prefer_boxed=prefer_boxed, thousands=thousands)
    if not spans:
        return None
    return spans[-1][2] if last else spans[0][2]


def as_int(value: Any) -> int | None:
    """A value that *is* an integer (an int, or a string holding exactly one); bools are not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def partial_credit(gold: int, pred: int) -> float:
    """OOLONG's integer score: 0.75 ** |gold - pred|."""
    distance = abs(gold - pred)
    if distance > _MAX_DISTANCE:
        return 0.0
    return 0.75**distance
