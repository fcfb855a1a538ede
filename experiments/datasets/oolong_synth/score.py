"""OOLONG-synth scoring: the official rules, re-implemented, plus a lenient variant.

Official behaviour (abertsch72/oolong @adbf1cb, ``src/eval/eval_helpers.py``:
``synth_attempt_answer_parse`` and ``synth_process_response``), kept here:

* **Gold.** ``answer`` is a Python list literal (``"['entity']"``, ``"[12]"``); the gold
  is its *first* element. If the text contains ``datetime`` it is read with the
  format ``[datetime.date(%Y, %m, %d)]`` instead.
* **Prediction.** With no ``:`` in the output: the output itself if shorter than 20
  characters (not stripped), else its last whitespace-separated token. Otherwise the
  text after the *last* ``:``, stripped, then every ``*``, ``[`` and ``]`` removed (in
  that order: ``"**Answer:** x"`` leaves ``" x"`` with its space, as upstream). A
  candidate of 20+ characters that contains ``more common`` / ``less common`` /
  ``same frequency`` is replaced by that phrase (checked in this order).
* **Score.** 1 if ``str(pred) == str(gold)`` (case sensitive). Else, if the prediction
  is one of the three phrases, 1 when it is a substring of the gold (so ``"more
  common"`` matches ``"more common than"``). Else for ``ANSWER_TYPE.NUMERIC``
  ``0.75 ** |gold - pred|`` when both read as ``int``; for ``ANSWER_TYPE.DATE`` 1 when
  the prediction parses (dateutil) to the gold date. Otherwise 0.

Deviations, all on inputs where upstream crashes or depends on the day it runs:
a whitespace-only output of 20+ characters gives ``""`` (upstream: IndexError);
partial dates are filled from 0001-01-01 rather than from today, so ``"01/05"``
never matches (upstream: matches only if the gold's year is the current year);
a gold that is not a list literal is used as a plain value.
"""
from __future__ import annotations

import ast
import datetime as _dt
import re
from typing import Any

from rlm_rig.records.answers import partial_credit
from rlm_rig.experiments.datasets.result import Confidence, ScoreResult

COMPARISON_PHRASES = ("more common", "less common", "same frequency")
NUMERIC = "ANSWER_TYPE.NUMERIC"
DATE = "ANSWER_TYPE.DATE"
_CONFIDENT_MARKERS = ("User:", "Answer:", "Date:", "Label")
_DATE_DEFAULT = _dt.datetime(1, 1, 1)


def parse_synth_gold(answer: str) -> Any:
    """The gold value of a synth row: first element of the list literal, or a
    ``datetime`` for date answers."""
    if "datetime" in answer:
        return _dt.datetime.strptime(answer, "[datetime.date(%Y, %m, %d)]")
    try:
        value = ast.literal_eval(answer)
    except (ValueError, SyntaxError):
        return answer
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"synth gold {answer!r} is an empty list")
        return value[0]
    return value


def parse_synth_response(output: str) -> tuple[str, Confidence]:
    """Official answer extraction; returns the candidate and its confidence."""
    if ":" not in output:
        if len(output) < 20:
            return output, "low"
        tokens = output.split()
        return (tokens[-1] if tokens else ""), "low"
    candidate = output.split(":")[-1].strip()
    for ch in "*[]":
        candidate = candidate.replace(ch, "")
    confidence: Confidence = "med"
    if any(marker in output for marker in _CONFIDENT_MARKERS):
        confidence = "high"
    if len(candidate) < 20:
        confidence = "vhigh"
    else:
        for phrase in COMPARISON_PHRASES:
            if phrase in candidate:
                candidate = phrase
                break
    return candidate, confidence


def parse_date(text: str) -> _dt.datetime | None:
    """dateutil's reading of a date, with missing fields from 0001-01-01; ``None``
    when it does not parse."""
    from dateutil import parser as date_parser  # a pandas dependency; imported lazily

    try:
        return date_parser.parse(text, default=_DATE_DEFAULT)
    except (ValueError, OverflowError, TypeError):
        return None


def _score_candidate(candidate: str, gold: Any, answer_type: str) -> float:
    if str(candidate) == str(gold):
        return 1.0
    if candidate in COMPARISON_PHRASES:
        return float(candidate in str(gold))
    if answer_type == NUMERIC:
        try:
            return partial_credit(int(gold), int(candidate))
        except (ValueError, TypeError):
            return 0.0
    if answer_type == DATE:
        parsed = parse_date(candidate)
        if parsed is None or not isinstance(gold, _dt.datetime):
            return 0.0
        return float(parsed == gold)
    return 0.0


def score_oolong_synth(output: str | None, gold: str, answer_type: str) -> ScoreResult:
    """Official OOLONG-synth score of one output against the row's ``answer`` string."""
    gold_value = parse_synth_gold(gold)
    if output is None:
        return ScoreResult(0.0, None, "none")
    candidate, confidence = parse_synth_response(output)
    return ScoreResult(_score_candidate(candidate, gold_value, answer_type), candidate, confidence)


def _lenient_candidate(output: str) -> str:
    """Last ``label:`` segment on the last line that has one, formatting removed."""
    text = output.strip()
    lines = [ln for ln in text.splitlines() if ":" in ln]
    if lines:
        text = lines[-1].split(":")[-1]
    elif text:
        text = text.splitlines()[-1]
    text = re.sub(r"[*\[\]`$]", "", text).strip().strip("'\"").strip().rstrip(".").strip()
    return text


def score_oolong_synth_lenient(output: str | None, gold: str, answer_type: str) -> ScoreResult:
    """Forgiving synth score for diagnostics: case-insensitive exact match after
    stripping markdown, quotes and a trailing period; a comparison phrase anywhere in
    the answer; ``"1,234"`` as 1234; dates in a time-stamped answer. Max of this and
    the official score, so ``lenient >= official``."""
    strict = score_oolong_synth(output, gold, answer_type)
    if output is None:
        return strict
    gold_value = parse_synth_gold(gold)
    candidate = _lenient_candidate(output)
    score = 0.0
    gold_text = str(gold_value).casefold()
    if candidate.casefold() == gold_text:
        score = 1.0
    elif any(p in gold_text for p in COMPARISON_PHRASES):
        said = [p for p in COMPARISON_PHRASES if p in candidate.casefold()]
        score = float(len(said) == 1 and said[0] in gold_text)
    elif answer_type == NUMERIC:
        digits = candidate.replace(",", "")
        match = re.search(r"[-+]?\d+", digits)
        if match is not None:
            try:
                score = partial_credit(int(gold_value), int(match.group()))
            except (ValueError, TypeError):
                score = 0.0
    elif answer_type == DATE and isinstance(gold_value, _dt.datetime):
        whole = output.strip().splitlines()[-1] if output.strip() else ""
        for text in (candidate, re.sub(r"^[^:]*:\s*", "", whole)):
            parsed = parse_date(re.sub(r"[*\[\]`$]", "", text))
            if parsed is not None and parsed.date() == gold_value.date():
                score = 1.0
                break
    if strict.score >= score:
        return strict
    return ScoreResult(score, candidate, "low")
