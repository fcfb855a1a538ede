"""The viewer's fork page: a fork (``rlm-rig fork``) beside the run it forks.

A fork folder reads like an ``ask`` run (its one trajectory); its ForkRecord (records/fork.py) says
which run, sample and sub_call it forks. The page puts every step from the fork point on side by
side, original left and fork right, with the changed ones marked, and the two runs' turns in two columns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rlm_rig.records.fork import ForkRecord
from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.trajectory import Trajectory


def _turns(t: Trajectory | None) -> list[dict[str, Any]]:
    if t is None:
        return []
    return [{"index": turn.index, "response": turn.response,
             "cells": [c.model_dump(mode="json") for c in t.cells if c.turn == turn.index]} for turn in t.turns]


def fork_view(run_path: Path) -> dict[str, Any] | None:
    """What the fork page shows, or None when the folder is not a fork."""
    folder = RunFolder(run_path)
    if not folder.fork_path.is_file():
        return None
    rec = ForkRecord.load(folder.fork_path)
    try:
        original = Trajectory.load(rec.original_trajectory)
    except (OSError, ValueError):
        original = None  # moved or deleted: the record's own steps still show what changed
    fork = Trajectory.load(folder.ask_trajectory_path) if folder.ask_trajectory_path.is_file() else None
    return {"rec": rec.model_dump(mode="json"), "score_change": rec.score_change,
            "changed": sum(1 for s in rec.steps if s.changed), "original_found": original is not None,
            "turns": list(zip(_pad(_turns(original), _turns(fork)), _pad(_turns(fork), _turns(original))))}


def _pad(a: list[Any], b: list[Any]) -> list[Any]:
    return a + [None] * (len(b) - len(a))


def write_fork_page(w: Any, run_path: Path, rv: dict[str, Any]) -> str | None:
    """``<base>/fork.html`` for a fork folder; its href (relative to the site's root), else None."""
    view = fork_view(run_path)
    if view is None:
        return None
    w.page(f"{rv['base']}/fork.html", "fork.html", title=f"fork of {view['rec']['sample']}", run=rv, f=view)
    return f"{rv['base']}/fork.html"
