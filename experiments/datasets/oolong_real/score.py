"""OOLONG-real (``dnd``) scoring: the official rules, re-implemented, plus a lenient variant.

Official behaviour (abertsch72/oolong @adbf1cb, ``src/eval/eval_helpers.py``:
``dnd_parse_answer``, ``dnd_parse_response``, ``dnd_process_response``), kept here:

* **Answer span.** The first ``\\boxed{\\text{X}}`` gives ``X``; otherwise the first
  ``\\boxed{X}``. With no box the *whole raw output* is the prediction, unparsed (a
  ``str``), confidence ``"low"``; so it can only ever match a string gold.
* **Parsing** (gold and boxed prediction alike): Python ``int()`` if it succeeds
  (so surrounding whitespace, a sign and ``_`` digit separators are accepted,
  ``"1,000"`` is *not* an int); else, if there is any comma, a list of the
  comma-separated items, each stripped, empty items dropped (``"1,000"`` ->
  ``["1", "000"]``, ``"Vex,"`` -> ``["Vex"]``, ``","`` -> ``[]``); else the string
  unchanged. A one-item answer is therefore a ``str``, not a list.
* **Score.** int vs int: ``0.75 ** |gold - pred|``. str vs str: equal after
  ``strip().lower()``. list vs list: ``|set(gold) & set(pred)| / len(gold)``, case
  sensitive, duplicates in the prediction do not count twice, extra predicted items
  cost nothing. Any other type pairing scores 0.

Our one deviation is in finding the box: braces are matched (see ``boxed.py``);
the official regex stops at the first ``}``. For OOLONG-real's answers this gives
the same spans; it differs for nested LaTeX such as ``\\boxed{\\frac{1}{2}}``.
"""
from __future__ import annotations

import re
from typing import Union

from rlm_rig.records.answers import find_int, partial_credit
from rlm_rig.experiments.datasets.boxed import extract_boxed, find_boxes, unwrap_braces
from rlm_rig.experiments.datasets.result import Confidence, ScoreResult

DndAnswer = Union[int, str, list[str]]


def parse_dnd_answer(answer: str) -> DndAnswer:
    """Official parse of an answer string into ``int``, ``list[str]`` or ``str``."""
    try:
        return int(answer)
    except ValueError:
        pass
    if "," in answer:
        return [item.strip() for item in answer.split(",") if item.strip()]
    return answer


def parse_dnd_response(output: str) -> tuple[DndAnswer, Confidence]:
    """Official parse of a model output: boxed span parsed (``"high"``), or the raw
    output as an unparsed string (``"low"``)."""
    span = extract_boxed(output)
    if span is None:
        return output, "low"
    return parse_dnd_answer(span), "high"


def score_dnd_parsed(gold: DndAnswer, pred: DndAnswer) -> float:
    """The official type-directed comparison of two parsed answers."""
    # bool is an int subclass; neither parser produces one, but guard callers.
    if isinstance(gold, int) and isinstance(pred, int) and not isinstance(gold, bool) and not isinstance(pred, bool):
        return partial_credit(gold, pred)
    if isinstance(gold, str) and isinstance(pred, str):
        return float(gold.strip().lower() == pred.strip().lower())
    if isinstance(gold, list) and isinstance(pred, list):
        if not gold:
            return 0.0
        return len(set(gold) & set(pred)) / len(gold)
    return 0.0


def gold_to_text(gold: object) -> str:
    """Gold as the dataset stores it (a string). JSON ints and lists given to
    ``score_file`` by hand are turned into the dataset's spelling (``"12"``,
    ``"a, b"``)."""
    if isinstance(gold, str):
        return gold
    if isinstance(gold, bool) or gold is None:
        raise ValueError(f"gold must be a string, int or list of strings, got {gold!r}")
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, (list, tuple)):
        return ", ".join(str(g) for g in gold)
    raise ValueError(f"gold must be a string, int or list of strings, got {type(gold).__name__}")


def score_oolong_real(output: str | None, gold: object) -> ScoreResult:
    """Official OOLONG-real score of one model output against the row's ``answer``.

    ``output=None`` (no answer produced) scores 0 with ``parsed=None``.
    """
    gold_parsed = parse_dnd_answer(gold_to_text(gold))
    if output is None:
        return ScoreResult(0.0, None, "none")
    pred, confidence = parse_dnd_response(output)
    return ScoreResult(score_dnd_parsed(gold_parsed, pred), pred, confidence)


# --------------------------------------------------------------------------- lenient

_LATEX_WRAPPERS = ("text", "textbf", "textit", "mathrm", "mathbf", "mbox", "emph", "texttt")
_WRAPPER_RE = re.compile(r"\\(?:%s)\s*\{([^{}]*)\}" % "|".join(_LATEX_WRAPPERS))
_FINAL_CALL_RE = re.compile(r"FINAL\((.*?)\)\s*$", re.MULTILINE | re.DOTALL)
_MARKER_RE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+$")


def normalize_lenient(text: str) -> str:
    """Drop formatting a human grader would ignore: ``\\text{}``-style wrappers,
    ``$``, markdown emphasis/backticks, wrapping quotes and a trailing period."""
    prev = None
    while prev != text:  # wrappers can nest: \textbf{\text{X}}
        prev = text
        text = _WRAPPER_RE.sub(r"\1", text)
    text = unwrap_braces(text.strip())
    text = text.replace("$", "").replace("**", "").replace("`", "")
    text = text.strip()
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text.rstrip(".").strip()


def lenient_answer_span(output: str) -> tuple[str, bool]:
    """The text a lenient grader would read as the answer, and whether it came from
    an explicit marker (box, ``FINAL(...)``, ``Answer:``) rather than the whole output.

    Boxes: the *last* non-empty one (models often restate the empty ``\\boxed{{}}``
    template first, and correct themselves before the final box).
    """
    boxes = [normalize_lenient(b.content) for b in find_boxes(output)]
    boxes = [b for b in boxes if b]
    if boxes:
        return boxes[-1], True
    finals = _FINAL_CALL_RE.findall(output)
    if finals:
        return normalize_lenient(finals[-1]), True
    markers = _MARKER_RE.findall(output)
    if markers:
        return normalize_lenient(markers[-1].splitlines()[0]), True
    return normalize_lenient(output), False


def lenient_int(span: str, *, from_marker: bool) -> int | None:
    """An integer read leniently: ``"1,000"``, ``"8%"``, ``"12 rolls"``; for an
    unmarked output, the last integer in it (the usual "... so the answer is 12")."""
    text = span.strip().rstrip("%").strip()
    if _THOUSANDS_RE.match(text):
        return int(text.replace(",", ""))
    try:
        return int(text)
    except ValueError:
        pass
    return find_int(span, thousands=True, last=not from_marker)


def lenient_items(span: str) -> list[str]:
    """Split a list answer on commas, semicolons, newlines or a lone " and "; drop
    bullets and a leading "and"/"or"; case-fold."""
    parts = re.split(r"[,;\n]", span)
    if len(parts) == 1:
        parts = re.split(r"\s+and\s+", span)
    items = []
    for part in parts:
        part = part.strip().lstrip("-*•").strip()
        part = re.sub(r"^(?:and|or)\s+", "", part, flags=re.IGNORECASE)
        part = normalize_lenient(part)
        if part:
            items.append(part.casefold())
    return items


def score_oolong_real_lenient(output: str | None, gold: object) -> ScoreResult:
    """A forgiving OOLONG-real score for diagnostics, never for headline numbers.

    It accepts unboxed answers (``FINAL(...)``, ``Answer: ...``, or the last integer of
    the output when the gold is an int), strips ``\\text{}``/markdown, reads
    ``"1,000"`` as 1000, and compares strings and list items case-insensitively
    (a one-item answer counts as a one-item list and vice versa). It is the max of
    this reading and the official score, so ``lenient >= official`` always.
    """
    strict = score_oolong_real(output, gold)
    if output is None:
        return strict
    gold_parsed = parse_dnd_answer(gold_to_text(gold))
    span, from_marker = lenient_answer_span(output)
    parsed: DndAnswer | None
    score = 0.0
    if isinstance(gold_parsed, int):
        parsed = lenient_int(span, from_marker=from_marker)
        if parsed is not None:
            score = partial_credit(gold_parsed, parsed)
    else:
        gold_items = (
            [g.strip().casefold() for g in gold_parsed] if isinstance(gold_parsed, list) else [gold_parsed.strip().casefold()]
        )
        whole = span.casefold()
        if len(gold_items) == 1 and whole == gold_items[0]:
            parsed, score = span, 1.0
        else:
            items = lenient_items(span)
            parsed = items
            if gold_items:
                score = len(set(gold_items) & set(items)) / len(gold_items)
                if len(gold_items) == 1 and len(set(items)) > 1:
                    score = 0.0  # a one-answer question answered with several: not credited
    if strict.score >= score:
        return strict
    return ScoreResult(score, parsed, "low")
