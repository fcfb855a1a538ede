"""The value every scorer returns, so runners and `score_file` treat them alike."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Literal

Confidence = Literal["none", "low", "med", "high", "vhigh"]


@dataclass(frozen=True)
class ScoreResult:
    """A score in [0, 1], the parsed prediction it was computed from, and how the
    prediction was found (the official scorers' ``parse_confidence``; ``"none"``
    when there was no output at all)."""

    score: float
    parsed: Any
    confidence: Confidence

    def parsed_json(self) -> Any:
        """`parsed` as JSON-safe data (dates become ISO strings)."""
        return to_jsonable(self.parsed)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
