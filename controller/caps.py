"""Run caps a long eval needs, kept out of the loop's body: a per-example wall clock, a cap on
consecutive failing cells, and what the run answers when a cap ends it.

WHY a best answer so far: an example that hits a cap after twenty minutes of work should not score
as "no answer" when the controller had already named its answer. The loop first tries the last
``FINAL_VAR`` candidate (a name the controller finished with before the variable existed), then
falls back to one forced answer turn.
"""
from __future__ import annotations

import time
from typing import Any

from rlm_rig.records.trajectory import CapEvent, Trajectory


class RunCaps:
    """Per-run cap state. Every cap that fires lands in ``traj.caps_hit``; the loop then sets
    ``stop_reason = "cap"``."""

    def __init__(self, rlm_cfg: Any, traj: Trajectory, t0: float | None = None):
        self.wall_s: float | None = rlm_cfg.max_example_wall_s
        self.max_cell_errors: int | None = rlm_cfg.max_consecutive_cell_errors
        self.traj = traj
        self.t0 = time.perf_counter() if t0 is None else t0
        self.consecutive_errors = 0
        self.candidate: str | None = None  # last FINAL_VAR name that did not resolve when given

    def _hit(self, cap: str, turn: int, detail: str) -> str:
        self.traj.caps_hit.append(CapEvent(cap=cap, turn=turn, detail=detail))  # type: ignore[arg-type]
        return detail

    def wall_clock(self, turn: int) -> str | None:
        """The reason to stop when the example's wall-clock budget is spent, else None."""
        if self.wall_s is None:
            return None
        used = time.perf_counter() - self.t0
        if used < self.wall_s:
            return None
        return self._hit("wall_clock", turn, f"The time for this question ({self.wall_s:g} s) is used up ({used:.1f} s).")

    def after_cell(self, ok: bool, turn: int) -> str | None:
        """Count failing cells in a row; the reason to stop when the cap is reached, else None."""
        self.consecutive_errors = 0 if ok else self.consecutive_errors + 1
        if self.max_cell_errors is None or self.consecutive_errors < self.max_cell_errors:
            return None
        return self._hit("cell_errors", turn, f"{self.consecutive_errors} code cells in a row failed.")

    def note_final_var(self, name: str) -> None:
        self.candidate = name


def cell_failed(res: Any) -> bool:
    """A cell that counts against the consecutive-errors cap: an error, a timeout or a kernel restart."""
    return bool(res.error or res.timed_out or res.restarted)
