"""Live progress for `interp patch`: pairs and patches done, with an ETA.

Drawn with rich on stderr; silent when stderr is not a terminal (pipes, CI, tests).
"""
from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.text import Text


class LiveLine:
    """A one-line rich display on stderr that is drawn only on a terminal: the base of every live
    progress display of the rig (`ask`'s and `interp patch`'s). Subclasses give `render()`."""

    refresh_per_second = 2

    def __init__(self, *, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal
        self.t0 = time.perf_counter()
        self.live = (Live(get_renderable=self.render, console=self.console, refresh_per_second=self.refresh_per_second)
                     if self.enabled else None)

    def render(self) -> Text:
        raise NotImplementedError

    def __enter__(self) -> "LiveLine":
        self.t0 = time.perf_counter()
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.refresh()
            self.live.stop()


class PairProgress(LiveLine):
    """`interp patch`: pairs and patches done, with an ETA from the mean time per pair so far."""

    def __init__(self, *, console: Console | None = None):
        self.done = self.total = self.patches = 0
        super().__init__(console=console)

    def __call__(self, done: int, total: int, patches: int | None = None) -> None:
        self.done, self.total = done, total
        if patches is not None:
            self.patches = patches

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        if not self.done:
            return f"pairs 0/{self.total or '?'} | patches 0 | {el:.0f} s"
        eta = el / self.done * (self.total - self.done)
        return (f"pairs {self.done}/{self.total} | patches {self.patches:,} | {el:.0f} s elapsed, "
                f"ETA {eta:.0f} s")

    def render(self) -> Text:
        return Text(self.line())
