"""Optional per-kernel cgroup: a hard cap on tasks (fork bombs) and on resident memory.

Why: RLIMIT_NPROC is never enforced for root and RLIMIT_AS is per process; a cgroup bounds the
whole kernel tree whatever the uid, and tells an OOM kill apart from other SIGKILLs. It needs a
writable cgroup hierarchy (root, or a delegated cgroup v2 subtree), so it is best effort: when
it cannot be created the sandbox runs without it and the isolation report says so.
"""
from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

_counter = itertools.count()


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) for cgroup mounts."""
    out = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) > 4 and len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
            out.append((fields[4], rfields[0], set(rfields[2].split(","))))
    return out


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
    except (OSError, ValueError):
        pass
    return out


def cgroup_parents() -> list[Path]:
    """The folders under which kernel cgroups are made (v1 pids and memory, or the v2 group)."""
    mounts, own = _mounts(), _own_paths()
    out = []
    for point, fstype, opts in mounts:
        for ctrl in ("pids", "memory"):
            if fstype == "cgroup" and ctrl in opts and ctrl in own:
                out.append(Path(point) / own[ctrl].lstrip("/"))
        if fstype == "cgroup2" and "" in own:
            out.append(Path(point) / own[""].lstrip("/"))
    return out


@dataclass
class CgroupJail:
    """The cgroup directories one kernel joins (one per v1 controller, or one v2 group)."""

    dirs: list[Path]
    version: int
    pids_max: int
    memory_bytes: int
    procs_files: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, pids_max: int, memory_bytes: int) -> "CgroupJail | None":
        name = f"rlm-repl-{os.getpid()}-{next(_counter)}"
        mounts, own = _mounts(), _own_paths()
        v1 = {}
        for point, fstype, opts in mounts:
            for ctrl in ("pids", "memory"):
                if fstype == "cgroup" and ctrl in opts and ctrl in own:
                    v1[ctrl] = Path(point) / own[ctrl].lstrip("/")
        if set(v1) == {"pids", "memory"}:
            jail = cls._make([v1["pids"] / name, v1["memory"] / name], 1, pids_max, memory_bytes)
            if jail is not None:
                return jail
        for point, fstype, _opts in mounts:
            if fstype == "cgroup2" and "" in own:
                parent = Path(point) / own[""].lstrip("/")
                try:
                    enabled = (parent / "cgroup.subtree_control").read_text().split()
                except OSError:
                    continue
                if "pids" in enabled and "memory" in enabled:
                    return cls._make([parent / name], 2, pids_max, memory_bytes)
        return None

    @classmethod
    def _make(cls, dirs: list[Path], version: int, pids_max: int, memory_bytes: int) -> "CgroupJail | None":
        made: list[Path] = []
        try:
            for d in dirs:
                d.mkdir()
                made.append(d)
            if version == 1:
                (dirs[0] / "pids.max").write_text(str(pids_max))
                (dirs[1] / "memory.limit_in_bytes").write_text(str(memory_bytes))
                try:  # no swap either, where the host accounts it
                    (dirs[1] / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                except OSError:
                    pass
            else:
                (dirs[0] / "pids.max").write_text(str(pids_max))
                (dirs[0] / "memory.max").write_text(str(memory_bytes))
                try:
                    (dirs[0] / "memory.swap.max").write_text("0")
                except OSError:
                    pass
        except OSError:
            for d in reversed(made):
                try:
                    d.rmdir()
                except OSError:
                    pass
            return None
        return cls(dirs=dirs, version=version, pids_max=pids_max, memory_bytes=memory_bytes,
                   procs_files=[d / "cgroup.procs" for d in dirs])

    def wrap(self, argv: list[str]) -> list[str]:
        """Prefix argv with a tiny shell that joins the cgroups, then execs: every descendant
        is born inside, with no window before the parent could move it."""
        script = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; '
                  'exec "$@"')
        return ["/bin/sh", "-c", script, "sh", str(len(self.procs_files)),
                *map(str, self.procs_files), *argv]

    def oom_killed(self) -> bool:
        """Did the memory limit kill something in this group?"""
        path = self.dirs[-1] / ("memory.oom_control" if self.version == 1 else "memory.events")
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value or 0) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def describe(self) -> str:
        return f"cgroup v{self.version}: pids.max={self.pids_max}, memory={self.memory_bytes // 2**20} MiB"

    def kill_all(self, rounds: int = 50) -> None:
        """SIGKILL every process in the group until it is empty (bounded)."""
        for _ in range(rounds):
            pids: set[int] = set()
            for f in self.procs_files:
                try:
                    pids.update(int(p) for p in f.read_text().split())
                except (OSError, ValueError):
                    pass
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)

    def remove(self) -> None:
        """Remove the (by then empty) groups; retried briefly while the kernel finishes dying."""
        for d in self.dirs:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
