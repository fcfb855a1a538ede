"""S-NIAH scoring: RULER's single-needle metric, a case-insensitive substring match."""
from __future__ import annotations

from rlm_rig.experiments.datasets.result import ScoreResult


def score_sniah(output: str | None, gold: object) -> ScoreResult:
    """1 when the needle's value occurs anywhere in the output, ignoring case.

    RULER scores ``niah_single`` by whether the reference string is contained in the
    prediction; a verbose but correct answer is therefore full credit.
    """
    needle = str(gold).strip()
    if not needle:
        raise ValueError("S-NIAH gold is empty; a substring test against it would always pass")
    if output is None:
        return ScoreResult(0.0, None, "none")
    found = needle.casefold() in output.casefold()
    return ScoreResult(float(found), needle if found else None, "high" if found else "low")
