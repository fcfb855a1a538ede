"""The kernel's scratch folder: a size- and inode-capped `noexec` tmpfs, and its removal.

Why a tmpfs in a private mount namespace: `max_file_mb` (RLIMIT_FSIZE) caps one file, not the
total, and a folder on the host disk outlives a killed run. A tiny holder process (`unshare
--mount`, plus a user namespace when not root) mounts a tmpfs with `size=`, `nr_inodes=` and
`noexec,nosuid,nodev` on the scratch path *inside its own mount namespace*; each kernel is
started inside that namespace (nsenter), so files survive kernel restarts, the host never sees
them, nothing written there can be executed or mapped executable (a native extension dropped in
scratch cannot load), and killing the holder frees everything at once, whatever its depth or
permissions. Tmpfs pages are charged to the writer's memory cgroup, so the kernel's memory cap
covers them too.

Where no holder can be made (no `unshare`, no user namespaces), scratch is a plain host folder
and `remove_tree` deletes it however deep and whatever its modes.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path


class ScratchMount:
    """A holder process whose mount namespace has a capped tmpfs on `path`."""

    def __init__(self, path: Path, proc: subprocess.Popen, root: bool, size_mb: int) -> None:
        self.path = path
        self.proc = proc
        self.root = root
        self.size_mb = size_mb

    @classmethod
    def create(cls, path: Path, *, size_mb: int, inodes: int, owner_uid: int | None,
               timeout_s: float = 10.0) -> "ScratchMount | None":
        """Mount it; None (and nothing left running) if this host cannot."""
        if not (shutil.which("unshare") and shutil.which("nsenter")):
            return None
        root = os.geteuid() == 0
        opts = f"size={size_mb}m,nr_inodes={inodes},mode=0700,noexec,nosuid,nodev"
        if owner_uid is not None:
            opts += f",uid={owner_uid},gid={owner_uid}"
        ns = ["unshare", "--mount", "--propagation", "private"]
        if not root:
            ns = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
        # `cat` holds the namespace until our end of its stdin closes (also when we die).
        script = 'mount -t tmpfs -o "$2" rlm-scratch "$1" || exit 3; echo ready; exec cat >/dev/null'
        try:
            proc = subprocess.Popen([*ns, "--", "/bin/sh", "-c", script, "sh", str(path), opts],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True)
        except OSError:
            return None
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            _kill(proc)
            return None
        return cls(path, proc, root, size_mb)

    def enter_prefix(self) -> list[str]:
        """Command prefix that runs the rest inside the holder's namespaces."""
        pid = str(self.proc.pid)
        if self.root:
            return ["nsenter", "-t", pid, "-m", "--"]
        return ["nsenter", "-t", pid, "-U", "-m", "--"]

    def view(self) -> Path:
        """The scratch folder as this (parent) process can read it."""
        return Path(f"/proc/{self.proc.pid}/root") / str(self.path).lstrip("/")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        _kill(self.proc)
        try:
            self.path.rmdir()  # the host-side mount point, always empty
        except OSError:
            remove_tree(self.path)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def remove_tree(path: Path) -> bool:
    """Delete `path` whatever is in it: any depth (no Python recursion), any modes. True if gone."""
    path = Path(path)
    if not os.path.lexists(path):
        return True
    if os.path.islink(path):  # a kernel can swap its scratch for a link: remove the link, never follow it
        os.unlink(path)
        return True
    _rmtree_quiet(path)
    if not os.path.lexists(path):
        return True
    # shutil recurses in Python (RecursionError on deep trees) and cannot enter a mode-000
    # folder as a normal user; GNU chmod/rm walk iteratively and relative to each folder.
    for argv in (["chmod", "-R", "u+rwx", "--", str(path)], ["rm", "-rf", "--one-file-system", "--", str(path)]):
        if os.path.islink(path):  # chmod follows a link named on its command line (coreutils has no -P for it)
            os.unlink(path)
            break
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=600, check=False)
        except (OSError, subprocess.SubprocessError):
            pass
    for _ in range(3):
        if not os.path.lexists(path):
            return True
        time.sleep(0.05)
        _rmtree_quiet(path)
    return not os.path.lexists(path)


def _rmtree_quiet(path: Path) -> None:
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:  # ignore_errors covers OSError only
        pass
