"""Nothing of a rig process outlives it: a janitor for when it is killed, a sweep for older leftovers.

Why: a rig killed with SIGKILL (the OOM killer, `kill -9`, a lost session) runs no `finally`.
Its kernels (under `unshare` and `none`, which have no `--die-with-parent`), their cgroup folders
and their scratch folders stayed behind, and nothing removed them later. Everything a rig makes
carries its pid in the name (`rlm-repl-<pid>-...`), so:

- the **janitor**, one tiny shell per rig process started with the first sandbox, waits for EOF
  on a pipe only the rig holds; when the rig is gone it kills what is left in the rig's cgroups
  and under its leased kernel uids, then removes those cgroups and its scratch folders;
- the **sweep**, once per process at the first sandbox, removes what rigs that are no longer
  alive left (say, when their janitor was killed too).
"""
from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from .cgroup import cgroup_parents
from .scratch import remove_tree
from .uids import LEASE_DIR, kill_uid

_NAME = re.compile(r"^rlm-repl-(\d+)-")
_lock = threading.Lock()
_started_for: set[int] = set()  # pids (this process, or a fork of it) whose janitor and sweep ran
_janitor_w: list[int] = []

JANITOR = r'''
rig=$1; tmp=$2; leases=$3; shift 3
cat >/dev/null 2>&1
# EOF: the rig exited or exec'd. Act only if its pid is really gone (or a zombie): a live pid is the same
# rig after an exec, or a new process that reused the pid, maybe a new rig whose names look the same;
# its leftovers are the sweep's, once that pid is gone for good.
if st=$(cat /proc/"$rig"/stat 2>/dev/null); then
  case "${st##*) }" in Z*|X*) ;; *) exit 0 ;; esac
fi
for parent in "$@"; do
  for g in "$parent"/rlm-repl-"$rig"-*; do
    [ -d "$g" ] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      for p in $(cat "$g/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
      rmdir "$g" 2>/dev/null && break
      sleep 0.1
    done
  done
done
for f in "$leases"/*; do
  [ -s "$f" ] || continue  # released leases are empty; shell builtins only: a machine collects thousands
  owner=; IFS= read -r owner < "$f" 2>/dev/null
  [ "$owner" = "$rig" ] || continue
  uid=${f##*/}
  for _ in 1 2 3; do
    for p in $(awk -v u="$uid" '/^Uid:/ && $2 == u { split(FILENAME, a, "/"); print a[3]; nextfile }' \
               /proc/[0-9]*/status 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
done
for s in "$tmp"/rlm-repl-"$rig"-*; do
  [ -e "$s" ] && rm -rf --one-file-system "$s" 2>/dev/null
done
exit 0
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")


def remove_owned_by(uids: "int | set[int]") -> list[str]:
    """Remove what `uid` (a kernel's leased uid) made in the host's world-writable temp folders,
    one level down into world-writable folders there too (`/tmp/.X11-unix`); what was removed.

    Why: under `unshare` and `none` the kernel shares the host's filesystem, and C code (which the
    audit hook does not see) can create files there or move scratch files out with rename(2); a
    leased uid is the kernel's alone, so whatever it owns there is the kernel's. Links are removed,
    never followed (remove_tree)."""
    uids = {uids} if isinstance(uids, int) else set(uids)
    removed: list[str] = []
    if not uids:
        return removed
    tops = dict.fromkeys([tempfile.gettempdir(), *SHARED_TEMP])
    todo = [(top, True) for top in tops]
    while todo:
        folder, descend = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid in uids:
                if remove_tree(Path(entry.path)):
                    removed.append(entry.path)
            elif descend and entry.is_dir(follow_symlinks=False) and st.st_mode & 0o002:
                todo.append((entry.path, False))
    return removed


def sweep() -> list[str]:
    """Remove cgroups and scratch folders of rig processes that are no longer alive; what was removed."""
    removed = []
    tmp = Path(tempfile.gettempdir())
    try:
        entries = list(tmp.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        m = _NAME.match(entry.name)
        if m and not _alive(int(m.group(1))):
            if remove_tree(entry):
                removed.append(str(entry))
    for parent in cgroup_parents():
        try:
            groups = list(parent.iterdir())
        except OSError:
            continue
        for group in groups:
            m = _NAME.match(group.name)
            if not (m and group.is_dir() and not _alive(int(m.group(1)))):
                continue
            for _ in range(20):
                try:
                    pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    pids = []
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    group.rmdir()
                    removed.append(str(group))
                    break
                except OSError:
                    threading.Event().wait(0.02)
    return removed + _sweep_leases()


def _sweep_leases() -> list[str]:
    """Leases whose rig is gone: kill what still runs under the uid, remove what it left in the shared
    temp folders (one scan for all of them), and clear the lease, so the next sweep skips it."""
    try:  # a released lease is an empty file: one stat, not a read (thousands pile up over a machine's life)
        leases = [Path(e.path) for e in os.scandir(LEASE_DIR) if e.name.isdigit() and e.stat().st_size]
    except OSError:
        return []
    held = []
    for lease in leases:
        try:
            owner = lease.read_text().strip()
        except OSError:
            continue
        if not owner.isdigit() or _alive(int(owner)):
            continue
        fd = os.open(lease, os.O_RDWR | os.O_CLOEXEC)
        try:  # only while no one holds it: a new rig may have leased the uid since
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        kill_uid(int(lease.name))
        held.append((int(lease.name), fd))
    try:
        return remove_owned_by({uid for uid, _ in held})
    finally:
        for _, fd in held:
            os.ftruncate(fd, 0)
            os.close(fd)


def ensure_started() -> None:
    """Start this process's janitor and run the sweep, once per process (a fork gets its own)."""
    pid = os.getpid()
    if pid in _started_for:
        return
    with _lock:
        if pid in _started_for:
            return
        _started_for.add(pid)
        try:
            sweep()
        except OSError:
            pass
        r, w = os.pipe()  # both ends close-on-exec: only this process (and its forks) hold `w`
        try:
            subprocess.Popen(["/bin/sh", "-c", JANITOR, "janitor", str(pid), tempfile.gettempdir(), str(LEASE_DIR),
                              *map(str, cgroup_parents())],
                             stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                             start_new_session=True, close_fds=True)
        except OSError:
            os.close(w)
        else:
            _janitor_w.append(w)
        finally:
            os.close(r)
