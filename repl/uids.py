"""One host uid per live kernel, from a reserved range, leased by the parent.

Why: with every kernel running as uid 65534, RLIMIT_NPROC, the per-user pipe-buffer quota,
signal permission and /proc access were shared: two kernels holding threads left a third unable
to start any, and one kernel could read another's /proc entries. A uid of its own makes each of
these per kernel. Only a root parent can switch uids (setpriv); elsewhere the kernel keeps the
user's uid inside its own user namespace and this module is not used.

A lease is an exclusive flock on `<LEASE_DIR>/<uid>`, held for the sandbox's life and released
by the OS if the rig dies, so two rig processes never share a uid. The file holds the holder's
pid; a non-empty file found on lease means the last holder died without releasing it, and any
process still running under that uid is killed first.
"""
from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

UID_BASE = 2_000_000_000  # above the usual user, subuid and container ranges; below 2**31
UID_COUNT = 4096
LEASE_DIR = Path("/run/rlm-repl-uids")


def processes_of(uid: int) -> list[int]:
    """Host pids whose real uid is `uid` (read from /proc)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def kill_uid(uid: int, rounds: int = 20) -> int:
    """SIGKILL every process of `uid` (repeated: a fork between the scan and the kill); how many were seen."""
    seen = 0
    for _ in range(rounds):
        pids = processes_of(uid)
        if not pids:
            break
        seen += len(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return seen


class UidLease:
    """An exclusive uid from the reserved range, until release()."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = uid
        self._fd: int | None = fd

    @classmethod
    def acquire(cls) -> "UidLease":
        LEASE_DIR.mkdir(mode=0o700, exist_ok=True)
        start = os.getpid() % UID_COUNT  # spread concurrent rigs over the range
        for i in range(UID_COUNT):
            uid = UID_BASE + (start + i) % UID_COUNT
            fd = os.open(LEASE_DIR / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            if os.pread(fd, 32, 0).strip():  # the last holder died holding it: clear what it left
                kill_uid(uid)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return cls(uid, fd)
        raise OSError(f"all {UID_COUNT} kernel uids from {UID_BASE} are leased")

    def release(self) -> None:
        """Kill whatever still runs under the uid, then free it."""
        if self._fd is None:
            return
        kill_uid(self.uid)
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
            self._fd = None
