"""Live progress in the terminal for `ask` (eval's is in runner.py, interp patch's in interp/progress.py).

It draws with rich on stderr and stay silent when stderr is not a terminal (pipes, CI, tests), so
scripts that read stdout see exactly what they saw before.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.text import Text

from rlm_rig.controller.subcalls import ChatMany
from rlm_rig.interp.progress import LiveLine


def _console() -> Console:
    return Console(stderr=True)


class AskProgress(LiveLine):
    """`ask`: the current turn, the cell running, sub_calls in flight and done, worker tok/s.

    Fed by the RLM loop's ``on_event(kind, trajectory)`` hook; the figures are read from the live
    trajectory and the worker client each refresh, so nothing is counted twice.
    """

    refresh_per_second = 4

    def __init__(self, worker: ChatMany | None, max_iterations: int, *, console: Console | None = None):
        self.worker = worker
        self.max_iterations = max_iterations
        self.traj: Any = None
        self.cell_started: float | None = None
        self.lock = threading.Lock()
        super().__init__(console=console or _console())

    def on_event(self, kind: str, traj: Any) -> None:
        with self.lock:
            self.traj = traj
            if kind == "cell":
                self.cell_started = time.perf_counter()
            elif kind in ("cell_done", "turn", "done"):
                self.cell_started = None

    def line(self) -> str:
        with self.lock:
            t = self.traj
            running = self.cell_started
        if t is None:
            return "starting…"
        subs = list(t.sub_calls)
        el = max(1e-6, time.perf_counter() - self.t0)
        out_tokens = sum(s.completion_tokens for s in subs)
        turn = f"turn {len(t.turns)}/{self.max_iterations}"
        cell = (f"cell {len(t.cells)} running {time.perf_counter() - running:.1f} s" if running is not None
                else f"{len(t.cells)} cells run")
        in_flight = self.worker.in_flight if self.worker is not None else 0
        return (f"{turn} | {cell} | sub_calls {in_flight} in flight, {len(subs)} done | "
                f"worker {out_tokens / el:.1f} tok/s")

    def render(self) -> Text:
        return Text(self.line())
