"""How the kernel process is started: the OS confinement wrapper and the scrubbed environment.

Order of preference (`launcher="auto"`): bubblewrap (read-only root, private /tmp, new PID, IPC,
UTS and network namespaces, all capabilities dropped), then util-linux `unshare` (PID and
network namespaces), then a plain child process (in-kernel layers only). Each wrapper is probed
once per parent process, because availability depends on the host (user namespaces, AppArmor).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent / "_kernel"

# Loads the kernel package under a private name without touching sys.path, so model code does
# not see the parent-side modules and `import repl` in the kernel does not resolve to us.
BOOT = (
    "import sys,importlib.util as u\n"
    "d=sys.argv[3]\n"
    "s=u.spec_from_file_location('_rlm_kernel',d+'/__init__.py',submodule_search_locations=[d])\n"
    "m=u.module_from_spec(s);sys.modules['_rlm_kernel']=m;s.loader.exec_module(m)\n"
    "import _rlm_kernel.main as k\n"
    "k.main(int(sys.argv[1]),int(sys.argv[2]))\n"
)

_probe_cache: dict[tuple, bool] = {}
_probe_lock = threading.Lock()


def is_root() -> bool:
    return os.geteuid() == 0


def kernel_env(scratch: Path) -> dict[str, str]:
    """Only what Python needs: no tokens, keys or proxies from the parent's environment."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # glibc reserves 64 MiB of address space per thread arena; under RLIMIT_AS that would
        # make a small thread pool fail with "can't start new thread".
        "MALLOC_ARENA_MAX": "2",
    }


def python_command(fd_in: int, fd_out: int) -> list[str]:
    # -I: ignore PYTHON* variables and user site; -B: no .pyc writes outside scratch.
    return [sys.executable, "-I", "-B", "-c", BOOT, str(fd_in), str(fd_out), str(KERNEL_DIR)]


def _paths_needed() -> list[Path]:
    """Paths the kernel must read even if they live under /tmp (hidden by the private tmpfs)."""
    paths = {KERNEL_DIR, Path(sys.executable).resolve().parent, Path(sys.prefix).resolve(),
             Path(sys.base_prefix).resolve(), Path(sys.executable).parent}
    return sorted(p for p in paths if p.exists())


def bwrap_prefix(scratch: Path, *, network: bool) -> list[str]:
    argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in _paths_needed():
        if str(path).startswith("/tmp/"):
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--bind", str(scratch), str(scratch),
             "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--chdir", str(scratch)]
    if not network:
        argv.append("--unshare-net")
    if is_root():
        argv += ["--cap-drop", "ALL"]
    return argv + ["--"]


def unshare_prefix(scratch: Path, *, network: bool) -> list[str]:
    # A user namespace even as root: the kernel's capabilities then only act inside it.
    argv = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if not network:
        argv.append("--net")
    return argv + ["--"]


def wrapper_prefix(launcher: str, scratch: Path, *, network: bool) -> list[str]:
    if launcher == "bwrap":
        return bwrap_prefix(scratch, network=network)
    if launcher == "unshare":
        return unshare_prefix(scratch, network=network)
    if launcher == "none":
        return []
    raise ValueError(f"unknown launcher {launcher!r}")


def probe(launcher: str, *, network: bool) -> bool:
    """Can this wrapper start Python here? Cached per (launcher, network) for the process."""
    if launcher == "none":
        return True
    key = (launcher, network, is_root())
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
        ok = False
        if shutil.which(launcher):
            with tempfile.TemporaryDirectory(prefix="rlm-repl-probe-") as tmp:
                argv = wrapper_prefix(launcher, Path(tmp), network=network) + [
                    sys.executable, "-I", "-c", "import sys; sys.exit(0)"]
                try:
                    res = subprocess.run(argv, cwd=tmp, env=kernel_env(Path(tmp)), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
                    ok = res.returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
        _probe_cache[key] = ok
        return ok


def choose_launcher(requested: str, *, network: bool) -> list[str]:
    """Launchers to try, best first. An explicit choice is tried alone (so a failure is loud)."""
    if requested != "auto":
        return [requested]
    return [name for name in ("bwrap", "unshare") if probe(name, network=network)] + ["none"]


def count_user_tasks(uid: int) -> int:
    """Tasks (threads) owned by uid: RLIMIT_NPROC counts them all, so the cap must sit above."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                total += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue
    return total


def nproc_limit() -> int | None:
    """RLIMIT_NPROC for the kernel; None as root, where Linux never enforces it."""
    if is_root():
        return None
    return count_user_tasks(os.getuid()) + 256
