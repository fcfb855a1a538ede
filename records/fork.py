"""The fork record: one counterfactual run of a recorded trajectory, and how it differs from the original.

A fork folder (``rlm-rig fork``) holds the forked run's trajectory (``RunFolder.ask_trajectory_path``, so
reports and the viewer read it like an ``ask`` run) and this record (``RunFolder.fork_path``), which
links back to the original run, sample and trajectory. :class:`ForkRecord` is the file's one reader and writer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from rlm_rig.records.trajectory import Trajectory, atomic_write_text


class StepChange(BaseModel):
    """One step after the fork point, side by side: a sub_call's reply, a cell's output, a controller turn."""

    kind: Literal["sub_call", "cell", "turn"]
    index: int
    original: str | None = Field(description="the original run's text of this step (None: it has no such step)")
    fork: str | None = Field(description="the fork's text (None: the fork has no such step)")
    changed: bool
    source: str | None = Field(None, description="sub_calls: who answered in the fork (tape | model | fork)")


class ForkRecord(BaseModel):
    """What was forked, how, and what changed."""

    original_run: str = Field(description="the run folder forked")
    sample: str = Field(description="the sample id in that run (an ask folder: 'ask')")
    original_trajectory: str = Field(description="the original trajectory file")
    at: int = Field(description="the sub_call whose reply was replaced (its id in the trajectory)")
    fork_turn: int = Field(description="the controller turn whose cell made that sub_call: turns up to it are replayed")
    controller: Literal["live", "replay"]
    reply_original: str | None
    reply_fork: str
    answer_original: str | None
    answer_fork: str | None
    answer_changed: bool
    gold: str | None = None
    score_original: float | None = None
    score_fork: float | None = None
    worker_calls: int = Field(0, description="sub_calls the fork sent to the worker (the rest came from the tape)")
    stop_reason: str | None = None
    steps: list[StepChange] = Field(default_factory=list)

    @property
    def score_change(self) -> float | None:
        if self.score_original is None or self.score_fork is None:
            return None
        return self.score_fork - self.score_original

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "ForkRecord":
        return cls.model_validate_json(Path(path).read_text())


def _cell_text(c: object) -> str:
    return "".join(x for x in (getattr(c, "stdout", ""), getattr(c, "stderr", ""), getattr(c, "error", None) or ""))


def step_changes(original: Trajectory, fork: Trajectory, *, at: int, fork_turn: int) -> list[StepChange]:
    """Every step from the fork point on: sub_calls from ``at``, cells and turns from ``fork_turn``."""
    out: list[StepChange] = []
    pairs = (("sub_call", at, [s.response for s in original.sub_calls], [s.response for s in fork.sub_calls]),
             ("cell", _first_cell(original, fork_turn), [_cell_text(c) for c in original.cells],
              [_cell_text(c) for c in fork.cells]),
             ("turn", fork_turn + 1, [t.response for t in original.turns], [t.response for t in fork.turns]))
    for kind, start, a, b in pairs:
        for i in range(start, max(len(a), len(b))):
            x = a[i] if i < len(a) else None
            y = b[i] if i < len(b) else None
            src = fork.sub_calls[i].source if kind == "sub_call" and i < len(fork.sub_calls) else None
            out.append(StepChange(kind=kind, index=i, original=x, fork=y, changed=x != y, source=src))  # type: ignore[arg-type]
    return out


def _first_cell(t: Trajectory, turn: int) -> int:
    return next((c.index for c in t.cells if c.turn >= turn), len(t.cells))
