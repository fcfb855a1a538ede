"""Bootstrap CIs, span coverage / context utilization and the failure taxonomy, on hand-made records."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

from rlm_rig.controller import prompts
from rlm_rig.records.trajectory import CapEvent, CellRecord, ControllerTurn, SampleRow, SubCallRecord, Trajectory
from rlm_rig.experiments.analysis.failures import FAILURE_PRECEDENCE, FORMAT_ERROR_PREFIX, classify_failure
from rlm_rig.experiments.analysis.metrics import (
    bootstrap_ci,
    covered_chars,
    leaf_utilization,
    length_bucket,
    utilization,
)

NOW = datetime.now(timezone.utc).isoformat()


def traj(doc_chars: int = 100, **kw: Any) -> Trajectory:
    return Trajectory(run_id="t", question="q", doc_chars=doc_chars, doc_sha256="0" * 64, config={}, config_hash="h",
                      models={}, versions={}, started_at=NOW, **kw)


def sc(i: int, start: int | None, end: int | None, *, response: str | None = "ok", error: str | None = None,
       nested: Trajectory | None = None, instruction: str = "i") -> SubCallRecord:
    return SubCallRecord(id=i, cell=0, depth=1, chunk_start=start, chunk_end=end,
                         chunk_chars=(end - start) if start is not None and end is not None else 5,
                         instruction=instruction, response=response, error=error,
                         nested_trajectory=nested.model_dump(mode="json") if nested else None)


def row(score: float, answer: str | None = "\\boxed{3}", dataset: str = "oolong-real", **kw: Any) -> SampleRow:
    return SampleRow(id="s", dataset=dataset, method="rlm", question="q", context_chars=100, gold="3",
                     answer=answer, score=score, **kw)


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_brackets_mean_and_is_deterministic() -> None:
    x = [1.0, 0.75, 0.0]
    assert np.mean(x) == pytest.approx(0.583333, abs=1e-6)
    lo, hi = bootstrap_ci(x, seed=7)
    assert 0.0 <= lo <= np.mean(x) <= hi <= 1.0
    assert lo < hi
    assert bootstrap_ci(x, seed=7) == (lo, hi)
    # the resample means of 3 values lie on a grid of twelfths: the bounds must be among them
    assert round(lo * 12, 6) == pytest.approx(round(lo * 12)) and round(hi * 12, 6) == pytest.approx(round(hi * 12))


def test_bootstrap_width_matches_the_normal_approximation() -> None:
    x = np.array([0.0, 1.0] * 50)  # mean 0.5, standard error 0.05
    lo, hi = bootstrap_ci(x, seed=0)
    assert lo == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02)
    assert hi == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)
    y = np.linspace(0.0, 1.0, 37) ** 2  # continuous values: another seed gives other bounds
    assert bootstrap_ci(y, seed=1) != bootstrap_ci(y, seed=2)
    assert bootstrap_ci(y, seed=1) == bootstrap_ci(y, seed=1)


def test_bootstrap_degenerate_cases() -> None:
    assert bootstrap_ci([0.75]) == (0.75, 0.75)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    lo, hi = bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([0.0, 1.0], level=95)


# ----------------------------------------------------------------------------- coverage
def test_covered_chars_union_and_clipping() -> None:
    assert covered_chars([(0, 10), (5, 20), (30, 40)], 100) == 30
    assert covered_chars([(30, 40), (0, 10), (10, 15)], 100) == 25  # adjacent spans merge, order does not matter
    assert covered_chars([(-5, 3), (95, 120)], 100) == 8
    assert covered_chars([(50, 50), (60, 55)], 100) == 0
    assert covered_chars([], 100) == 0


def test_utilization_with_overlap_missing_spans_and_nesting() -> None:
    child = traj(doc_chars=50, depth=1, sub_calls=[sc(0, 0, 10), sc(1, 20, 30), sc(2, 45, 70)])
    lost = traj(doc_chars=5, depth=1, sub_calls=[sc(0, 0, 5)])
    t = traj(
        doc_chars=100,
        sub_calls=[
            sc(0, 0, 40), sc(1, 30, 60), sc(2, None, None),  # overlap; a chunk with no span
            sc(3, 50, 100, nested=child),  # nested spans are relative to this chunk
            sc(4, None, None, nested=lost),  # a nested run that cannot be placed
        ],
    )
    # root: [0,40) U [30,60) U [50,100) = 100 chars
    assert utilization(t) == pytest.approx(1.0)
    # worker-read: [0,60) U [50,60) U [70,80) U [95,100) (45..70 shifted by 50, clipped to the chunk) = 75 chars
    assert leaf_utilization(t) == pytest.approx(0.75)
    assert utilization(traj(doc_chars=100)) == 0.0
    assert math.isnan(utilization(None)) and math.isnan(utilization(traj(doc_chars=0)))


def test_length_buckets() -> None:
    assert length_bucket(5_000, "tokens") == "4K-8K"
    assert length_bucket(5_000, "chars") == "0-16K"
    assert length_bucket(100_000, "tokens") == "64K-128K"
    assert length_bucket(2_000_000, "tokens") == ">=1.024M"
    assert length_bucket(math.nan) == "unknown"


# ----------------------------------------------------------------------------- failures
def test_format_error_prefix_tracks_the_controller_prompt() -> None:
    assert prompts.FORMAT_ERROR.startswith(FORMAT_ERROR_PREFIX)


def test_no_failure_for_a_perfect_score() -> None:
    res = classify_failure(row(1.0), traj(caps_hit=[CapEvent(cap="sub_calls", turn=0, detail="d")]))
    assert res.labels == () and res.primary is None


def test_an_unscored_run_is_no_wrong_answer_but_keeps_its_errors() -> None:
    """No gold (an `ask` folder, an imported log): a NaN score is not a wrong answer; errors are still named."""
    assert classify_failure(row(float("nan")), traj()).labels == ()
    assert classify_failure(row(float("nan"), answer=None), traj(stop_reason="error", error="x")).labels == \
        ("run_error", "no_final")


def fmt_turn() -> ControllerTurn:
    return ControllerTurn(index=1, messages_in=[{"role": "user", "content": prompts.FORMAT_ERROR}], response="FINAL(1)")


CASES = [
    # (name, row, trajectory, expected labels in precedence order)
    ("row error", row(0.0, answer=None, error="RuntimeError: boom"), None, ("run_error", "no_final")),
    ("trajectory error", row(0.0), traj(stop_reason="error", error="x"), ("run_error",)),
    ("timeout", row(0.0, answer=None),
     traj(cells=[CellRecord(index=0, turn=0, code="x", timed_out=True, error="timeout")],
          caps_hit=[CapEvent(cap="cell_timeout", turn=0, detail="d")]),
     ("sandbox_error", "cap_hit", "no_final")),
    ("kernel killed", row(0.5), traj(cells=[CellRecord(index=0, turn=0, code="x", restarted=True, kill_reason="memory")]),
     ("sandbox_error",)),
    ("worker error", row(0.0), traj(sub_calls=[sc(0, 0, 5), sc(1, 5, 9, response=None, error="ReadTimeout")]),
     ("worker_error",)),
    ("max iterations", row(0.0, answer=None), traj(caps_hit=[CapEvent(cap="max_iterations", turn=8, detail="d")]),
     ("cap_hit", "no_final")),
    ("format error", row(0.0), traj(turns=[ControllerTurn(index=0, messages_in=[], response="hm"), fmt_turn()]),
     ("format_error",)),
    ("nested format error", row(0.0),
     traj(sub_calls=[sc(0, 0, 50, nested=traj(doc_chars=50, depth=1, turns=[fmt_turn()]))]), ("format_error",)),
    ("no final", row(0.0, answer=None), traj(), ("no_final",)),
    ("blank final", row(0.0, answer="  "), traj(), ("no_final",)),
    ("no box", row(0.0, answer="The answer is 3 rolls"), traj(), ("parse_failure",)),
    ("synth, no colon", row(0.0, answer="12", dataset="oolong-synth"), None, ("parse_failure",)),
    ("map then wrong sum", row(0.5625, parsed=5), traj(sub_calls=[sc(0, 0, 50, response="1"), sc(1, 50, 100, response="2")]),
     ("wrong_aggregation",)),
    ("map, faithful sum, wrong counts", row(0.5625, parsed=5),
     traj(sub_calls=[sc(0, 0, 50, response="There are 2."), sc(1, 50, 100, response="3")]), ("worker_miscount",)),
    ("map with unparseable replies", row(0.5625, parsed=5), traj(sub_calls=[sc(0, 0, 50), sc(1, 50, 100)]),
     ("wrong_answer",)),
    ("one call", row(0.0), traj(sub_calls=[sc(0, 0, 100)]), ("wrong_answer",)),
    ("bm25: one call plus retrieved spans", row(0.0),
     traj(sub_calls=[sc(0, None, None), *[sc(i, 10 * i, 10 * i + 5, response=None, instruction="(retrieved)") for i in (1, 2, 3)]]),
     ("wrong_answer",)),
    ("baseline without trajectory", row(0.75), None, ("wrong_answer",)),
    ("sniah needs no box", row(0.0, answer="no idea", dataset="sniah"), None, ("wrong_answer",)),
    ("nested worker error", row(0.0),
     traj(sub_calls=[sc(0, 0, 50, nested=traj(doc_chars=50, depth=1, sub_calls=[sc(0, 0, 9, response=None, error="e")])),
                     sc(1, 50, 100)]),
     ("worker_error",)),
]


@pytest.mark.parametrize("name,r,t,expected", CASES, ids=[c[0] for c in CASES])
def test_failure_modes(name: str, r: SampleRow, t: Trajectory | None, expected: tuple[str, ...]) -> None:
    res = classify_failure(r, t)
    assert res.labels == expected
    assert res.primary == expected[0]
    assert res.labels == tuple(sorted(res.labels, key=FAILURE_PRECEDENCE.index))
