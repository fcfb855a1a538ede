"""Scoring rules of the edge-case generators (exact gold, so exact rules).

- ``score_last_number``: the *last* number in the output must equal the gold number (so citing a
  decoy or a JSON neighbour and then the right value is fine; ending on a wrong one is not).
- ``score_all_values``: the fraction of the gold's comma-separated values found in the output
  (RULER's multi-value rule).
- ``score_absent``: 1 when the output states the answer is absent (``NONE``, or "not mentioned /
  not stated / not in the text / absent") and contains no 7-digit number; a guessed number scores 0.
"""
from __future__ import annotations

import re

from rlm_rig.experiments.datasets.result import ScoreResult

_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_SEVEN = re.compile(r"\b\d{7}\b")
_ABSENT = re.compile(r"\bnone\b|\bnot (?:mentioned|stated|present|given|found|in the text)\b|\babsent\b", re.I)


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def score_last_number(output: str | None, gold: object) -> ScoreResult:
    if output is None:
        return ScoreResult(0.0, None, "none")
    nums = _NUM.findall(output.replace(",", ""))
    if not nums:
        return ScoreResult(0.0, None, "low")
    return ScoreResult(float(_same_number(nums[-1], str(gold).strip())), nums[-1], "high")


def score_all_values(output: str | None, gold: object) -> ScoreResult:
    values = [v.strip() for v in str(gold).split(",") if v.strip()]
    if not values:
        raise ValueError("multi-value gold is empty")
    if output is None:
        return ScoreResult(0.0, None, "none")
    found = [v for v in values if v in output]
    return ScoreResult(len(found) / len(values), found, "high" if found else "low")


def score_absent(output: str | None, gold: object) -> ScoreResult:
    if output is None:
        return ScoreResult(0.0, None, "none")
    says_absent = bool(_ABSENT.search(output))
    guessed = _SEVEN.findall(output)
    return ScoreResult(float(says_absent and not guessed), "absent" if says_absent else (guessed[-1] if guessed else None),
                       "high" if says_absent or guessed else "low")


def score_multi_needle(output: str | None, gold: object) -> ScoreResult:
    """One value: the last-number rule; several (the all-together question): the multi-value rule."""
    return score_all_values(output, gold) if "," in str(gold) else score_last_number(output, gold)
