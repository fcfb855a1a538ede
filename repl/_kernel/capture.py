"""Capped text streams that replace sys.stdout/sys.stderr during a cell.

Why: model code may print gigabytes. Keeping only the first `budget` characters (shared by both
streams) bounds the kernel's memory and the size of the reply the parent has to read, while
writes beyond the cap stay cheap so a print loop does not stall before its timeout.
"""
from __future__ import annotations

import io


class OutputBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.dropped = 0

    @property
    def truncated(self) -> bool:
        return self.dropped > 0


class CappedStream(io.TextIOBase):
    """A text sink keeping at most the shared budget; close() is ignored so printing keeps working."""

    def __init__(self, budget: OutputBudget, name: str) -> None:
        super().__init__()
        self._budget = budget
        self._parts: list[str] = []
        self._name = name

    @property
    def name(self) -> str:  # some libraries read sys.stdout.name
        return self._name

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s) -> int:  # type: ignore[override]
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        budget = self._budget
        room = budget.limit - budget.used
        if room >= len(s):
            self._parts.append(s)
            budget.used += len(s)
        else:
            if room > 0:
                self._parts.append(s[:room])
                budget.used += room
            budget.dropped += len(s) - max(room, 0)
        return len(s)

    def writelines(self, lines) -> None:  # type: ignore[override]
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:  # model code closing sys.stdout must not break later prints
        pass

    @property
    def closed(self) -> bool:
        return False

    def getvalue(self) -> str:
        return "".join(self._parts)
