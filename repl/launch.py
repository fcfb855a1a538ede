"""How the kernel process is started: the OS confinement wrapper and the scrubbed environment.

Order of preference (`launcher="auto"`): bubblewrap, then util-linux `unshare`, then a plain child
process. Under bubblewrap the kernel gets least privilege:

- an unprivileged uid: as root, bwrap drops to uid 65534 on the *host* (`setpriv`), so DAC keeps
  it off root-owned files and sysctls even where a mount were writable; as a normal user it runs
  as uid 65534 inside a user namespace;
- a minimal read-only view: the system folders, the interpreter, the site-packages it imports
  and the kernel's own code; no home folder, no project, no datasets, no run folders;
- `/proc` and `/dev` read-only, `/tmp` an empty read-only tmpfs, scratch the only writable place
  (a capped `noexec` tmpfs, see `repl/scratch.py`);
- new PID, IPC, UTS, cgroup and network namespaces, no capabilities, and a seccomp filter
  (`repl/seccomp.py`).

As root, the weaker launchers are refused unless asked for (`allow_weak_launchers`, or naming
the launcher): they leave the kernel root on the host. Each wrapper is probed once per parent
process, because what works depends on the host (user namespaces, AppArmor, paths' modes).
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from . import seccomp
from .scratch import ScratchMount

KERNEL_DIR = Path(__file__).resolve().parent / "_kernel"
UNPRIVILEGED_UID = 65534  # "nobody" on Debian-like systems
SCRATCH_INODES = 200_000

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

INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install "
                "bubblewrap`) and allow user namespaces (sysctl kernel.unprivileged_userns_clone=1, or "
                "an AppArmor profile for bwrap on Ubuntu >= 23.10)")


@dataclass(frozen=True)
class Plan:
    """How one launcher runs here, as found by probing."""

    launcher: str
    drop_uid: bool  # the kernel runs as UNPRIVILEGED_UID on the host (root parents only)
    scratch_tmpfs: bool  # scratch is a capped noexec tmpfs in a holder's mount namespace
    seccomp: bool


_plan_cache: dict[tuple, Plan | None] = {}
_plan_errors: dict[tuple, str] = {}
_probe_lock = threading.Lock()


def scratch_prefix() -> str:
    """Name prefix of this process's scratch folders: the pid lets a later rig remove the leftovers
    of a rig that was killed (see cleanup.py)."""
    return f"rlm-repl-{os.getpid()}-"


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


def interpreter_paths() -> list[Path]:
    """The interpreter's own folders: its prefixes (stdlib, lib-dynload, the venv's site-packages)."""
    paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.exec_prefix).resolve(),
             Path(sys.base_exec_prefix).resolve(), Path(sys.executable).resolve().parent}
    return sorted(p for p in paths if p.exists())


def _read_only_binds() -> list[str]:
    """--ro-bind/--symlink arguments for what the kernel must read, and nothing else."""
    argv: list[str] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    argv += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700: the binds below unreadable
    for etc in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(etc):
            argv += ["--ro-bind", etc, etc]
    roots: list[Path] = []
    for path in [*interpreter_paths(), KERNEL_DIR, Path(sys.executable).parent]:
        if str(path).startswith("/usr/") or not path.exists():
            continue
        if any(path == r or r in path.parents for r in roots):
            continue
        roots = [r for r in roots if path not in r.parents] + [path]
    made: set[Path] = set()
    for path in sorted(roots):
        # bwrap would create the folders above a bind mode 0700 (root's): an unprivileged kernel
        # could not reach the interpreter. Make them 0755 (they are empty but for the binds).
        for parent in reversed(path.parents[:-1]):
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", str(path), str(path)]
    return argv


def bwrap_prefix(scratch: Path, *, network: bool, plan: Plan, seccomp_fd: int | None,
                 uid: int = UNPRIVILEGED_UID) -> list[str]:
    above = [str(p) for p in reversed(scratch.parents[:-1]) if str(p) != "/tmp"]
    # /tmp first: the read-only binds that follow may live under /tmp (a clone and its venv in /tmp/...),
    # and a tmpfs mounted after them would hide them
    argv = ["bwrap", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *_read_only_binds(),
            *[a for p in above for a in ("--perms", "0755", "--dir", p)],
            "--bind", str(scratch), str(scratch),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox",
            "--die-with-parent", "--new-session"]  # no --chdir: scratch may be closed to bwrap itself; the kernel enters it
    if not network:
        argv.append("--unshare-net")
    else:  # name resolution and certificates, only when the profile allows the network
        for etc in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl", "/etc/ca-certificates"):
            if os.path.exists(etc):
                argv += ["--ro-bind", etc, etc]
    # the host's identity: the kernel command line reads empty, the boot id as zeros
    masks = _identity_masks()
    for leak, name in (("/proc/cmdline", "cmdline"), ("/proc/sys/kernel/random/boot_id", "boot_id"),
                       ("/proc/loadavg", "loadavg")):
        if os.path.exists(leak) and masks is not None:
            argv += ["--ro-bind", str(masks / name), leak]
    # after every mount operation: bwrap applies them in order
    argv += ["--remount-ro", "/proc", "--remount-ro", "/dev", "--remount-ro", "/tmp", "--remount-ro", "/"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if plan.drop_uid:
        # bwrap as real root builds the mounts, then setpriv becomes nobody on the host before Python.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                 "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    else:
        argv += ["--unshare-user", "--uid", str(UNPRIVILEGED_UID), "--gid", str(UNPRIVILEGED_UID)]
        if is_root():
            argv += ["--cap-drop", "ALL"]
    return argv + ["--"]


_masks: list[Path | None] = []
_masks_lock = threading.Lock()


def _identity_masks() -> Path | None:
    """Plain files (bound over /proc entries; a device node cannot be opened on /proc's nodev mount),
    made once per process and removed at exit (or by cleanup.py after a crash)."""
    with _masks_lock:
        if not _masks:
            try:
                folder = Path(tempfile.mkdtemp(prefix=f"{scratch_prefix()}masks-"))
                os.chmod(folder, 0o755)
                (folder / "cmdline").write_text("")
                (folder / "boot_id").write_text("00000000-0000-0000-0000-000000000000\n")
                (folder / "loadavg").write_text("0.00 0.00 0.00 1/1 1\n")
                for f in folder.iterdir():
                    os.chmod(f, 0o444)
                atexit.register(shutil.rmtree, folder, True)
                _masks.append(folder)
            except OSError:
                _masks.append(None)
        return _masks[0]


def hide_bwrap_args(argv: list[str]) -> tuple[list[str], int | None]:
    """Move bubblewrap's options into a pipe read with `--args FD`: the sandbox's pid 1 is bwrap,
    and its /proc/1/cmdline would otherwise list every host path it binds. Returns the new argv and
    the fd to pass (the caller closes it after the start)."""
    if "bwrap" not in argv:
        return argv, None
    i = argv.index("bwrap")
    j = argv.index("--", i)
    data = "".join(a + "\0" for a in argv[i + 1:j]).encode()
    r, w = os.pipe()
    try:
        if len(data) >= 65536:  # would not fit the pipe buffer: keep the plain argv
            os.close(r)
            return argv, None
        os.write(w, data)
    finally:
        os.close(w)
    return argv[:i + 1] + ["--args", str(r)] + argv[j:], r


def unshare_prefix(scratch: Path, *, network: bool, plan: Plan, uid: int = UNPRIVILEGED_UID) -> list[str]:
    # A user namespace even as root: the kernel's capabilities then only act inside it.
    argv = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if not network:
        argv.append("--net")
    argv.append("--")
    if plan.drop_uid:
        argv = _setpriv(uid) + argv
    return argv


def _setpriv(uid: int = UNPRIVILEGED_UID) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def wrapper_prefix(plan: Plan, scratch: Path, *, network: bool, holder: ScratchMount | None = None,
                   seccomp_fd: int | None = None, uid: int = UNPRIVILEGED_UID) -> list[str]:
    """`uid`: the kernel's host uid where the plan drops root (a per-kernel lease, see uids.py)."""
    enter = holder.enter_prefix() if holder is not None else []
    if plan.launcher == "bwrap":
        return enter + bwrap_prefix(scratch, network=network, plan=plan, seccomp_fd=seccomp_fd, uid=uid)
    if plan.launcher == "unshare":
        return enter + unshare_prefix(scratch, network=network, plan=plan, uid=uid)
    if plan.launcher == "none":
        return enter + (_setpriv(uid) if plan.drop_uid else [])
    raise ValueError(f"unknown launcher {plan.launcher!r}")


def prepare_scratch(path: Path, plan: Plan, *, size_mb: int, uid: int = UNPRIVILEGED_UID) -> ScratchMount | None:
    """Make `path` usable by the kernel: owned by its uid, and a capped tmpfs where the plan says so."""
    if plan.drop_uid:
        os.chown(path, uid, uid)
        os.chmod(path, 0o700)  # another kernel (another uid) cannot enter it
    if not plan.scratch_tmpfs:
        return None
    return ScratchMount.create(path, size_mb=size_mb, inodes=SCRATCH_INODES,
                               owner_uid=uid if plan.drop_uid else None)


@functools.lru_cache(maxsize=8)
def kernel_stage_hex(launcher: str, network: bool) -> str | None:
    """The seccomp program the kernel loads itself under `unshare` and `none` (bubblewrap loads one
    for the bwrap launcher): no mounts, no new process, no namespaces; with the network off also no
    socket but an AF_UNIX socketpair, since those launchers give the kernel no network namespace of
    its own to keep abstract unix sockets and 127.0.0.1 apart (`none`), nor a private filesystem
    for path sockets (both). None where there is no syscall table for this machine."""
    if launcher == "bwrap" or not seccomp.supported():
        return None
    return seccomp.build_filter(no_new_processes=True, no_sockets=not network).hex()


def _try(plan: Plan, network: bool) -> str | None:
    """None if a kernel-like Python starts under this plan; else why not."""
    if plan.launcher != "none" and not shutil.which(plan.launcher):
        return f"`{plan.launcher}` is not installed"
    if plan.drop_uid and not shutil.which("setpriv"):
        return "`setpriv` (util-linux) is not installed"
    with tempfile.TemporaryDirectory(prefix=f"{scratch_prefix()}probe-") as tmp:
        os.chmod(tmp, 0o711)
        scratch = Path(tmp) / "s"
        scratch.mkdir()
        holder = None
        fd = None
        try:
            holder = prepare_scratch(scratch, plan, size_mb=8)
            if plan.scratch_tmpfs and holder is None:
                return "cannot mount a private tmpfs for scratch (unshare --mount)"
            fd = seccomp.filter_fd() if plan.seccomp else None
            # the same interpreter and environment must start, not just any Python
            check = (f"import os,sys; os.chdir({str(scratch)!r}); open('w','w').write('x'); "
                     f"sys.exit(0 if open('w').read() == 'x' and (sys.prefix, sys.base_prefix, sys.version) == "
                     f"{(sys.prefix, sys.base_prefix, sys.version)!r} else 5)")
            argv = wrapper_prefix(plan, scratch, network=network, holder=holder, seccomp_fd=fd) + [
                sys.executable, "-I", "-c", check]
            res = subprocess.run(argv, cwd="/", env=kernel_env(scratch), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=20,
                                 pass_fds=(fd,) if fd is not None else ())
            if res.returncode != 0:
                tail = res.stderr.decode("utf-8", "replace").strip().splitlines()
                why = f"exit status {res.returncode}: {tail[-1][:300] if tail else 'no message'}"
                if plan.drop_uid and plan.launcher != "bwrap":
                    why += (f"; as root, {plan.launcher!r} must switch to an unprivileged uid before Python starts, "
                            f"and {sys.executable} must then be readable by any user")
                return why
            return None
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            if fd is not None:
                os.close(fd)
            if holder is not None:
                holder.close()


def _candidates(launcher: str) -> list[Plan]:
    """Plans for one launcher, strongest first."""
    root = is_root()
    sc = seccomp.supported()
    drops = [True, False] if root else [False]
    if launcher == "bwrap":
        return [Plan("bwrap", d, t, sc) for d in drops for t in (True, False)]
    # As root, the weak launchers run only if they can drop to an unprivileged uid before Python
    # starts: without bubblewrap's mounts a root kernel could read and write the whole host.
    if launcher == "unshare":
        return [Plan("unshare", True, False, False)] if root else [Plan("unshare", False, False, False)]
    return [Plan("none", True, False, False)] if root else [Plan("none", False, False, False)]


def plan_key(launcher: str, network: bool) -> tuple:
    return (launcher, network, is_root(), sys.executable)


def plan_for(launcher: str, *, network: bool) -> Plan | None:
    """The strongest working plan for this launcher (cached); None if it cannot run here."""
    key = plan_key(launcher, network)
    with _probe_lock:
        if key in _plan_cache:
            return _plan_cache[key]
        found, errors = None, []
        for plan in _candidates(launcher):
            err = _try(plan, network)
            if err is None:
                found = plan
                break
            errors.append(err)
        if found is None:
            _plan_errors[key] = errors[-1] if errors else "unknown"
        _plan_cache[key] = found
        return found


def plan_error(launcher: str, *, network: bool) -> str:
    return _plan_errors.get(plan_key(launcher, network), "")


def probe(launcher: str, *, network: bool) -> bool:
    """Can this wrapper start Python here? Cached per (launcher, network) for the process."""
    return plan_for(launcher, network=network) is not None


class LauncherRefused(RuntimeError):
    """No launcher that the settings allow works here (the message says what to install)."""


def choose_plans(requested: str, *, network: bool, allow_weak: bool) -> tuple[list[Plan], list[str]]:
    """Plans to try, best first, and notes for the isolation report.

    An explicit launcher is tried alone (a failure is loud). "auto" as root refuses to fall back
    below bubblewrap unless `allow_weak`; as a normal user it falls back and says so.
    """
    if requested != "auto":
        plan = plan_for(requested, network=network)
        if plan is None:
            raise LauncherRefused(f"launcher {requested!r} does not work here "
                                  f"({plan_error(requested, network=network)}); " + INSTALL_HINT)
        notes = [] if requested == "bwrap" else [f"launcher {requested!r} was requested explicitly"]
        return [plan], notes
    bw = plan_for("bwrap", network=network)
    if bw is not None:
        return [bw], []
    why = f"bubblewrap is not usable here ({plan_error('bwrap', network=network)})"
    if is_root() and not allow_weak:
        raise LauncherRefused(f"{why}; running as root, the rig refuses the weaker launchers (the kernel would "
                              "be root on the host): " + INSTALL_HINT + ", or set sandbox.allow_weak_launchers: "
                              "true to accept unshare / a plain process (see docs/SANDBOX.md)")
    weak = [p for p in (plan_for("unshare", network=network), plan_for("none", network=network)) if p]
    if not weak:
        raise LauncherRefused(f"{why}; the weaker launchers do not work here either ("
                              f"{plan_error('none', network=network)}): " + INSTALL_HINT)
    return weak, [f"{why}; weaker launcher used: " + INSTALL_HINT]


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


def nproc_limit(plan: Plan | None = None, uid: int = UNPRIVILEGED_UID) -> int | None:
    """RLIMIT_NPROC for the kernel; None where the kernel is root (Linux never enforces it then)."""
    if plan is not None and plan.drop_uid:
        return count_user_tasks(uid) + 256
    if is_root():
        return None
    return count_user_tasks(os.getuid()) + 256
