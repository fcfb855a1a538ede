"""In-kernel last layer: resource limits and a PEP 578 audit hook.

Why both: the OS layers (namespaces, read-only mounts) are not available everywhere, and the
audit hook turns the common hostile or careless calls (fork, kill, sockets, writes outside
scratch, ctypes) into a clear PermissionError the model can read. An audit hook is NOT a
security boundary against deliberate attacks on the interpreter; docs/SANDBOX.md says which
layers hold when it is bypassed.
"""
from __future__ import annotations

import posix
import resource
import signal
import sys

WRITE_FLAGS = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
AT_FDCWD_VALUES = (None, -1, -100)  # the audit events report the default dir_fd as -1

# Matched against EVERY dotted component of the name, so a second copy of an extension loaded
# under another name ("x._posixsubprocess", whose init function is found by the last component)
# is refused too. "posix" and "_signal" are loaded at start-up: an import event for them can
# only be a re-import that would bring back the functions stubbed below.
BLOCKED_IMPORTS = frozenset({
    "ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_xxsubinterpreters",
    "_xxinterpchannels", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase",
    "_testclinic", "_testimportmultiple", "_testsinglephase", "_posixshmem", "posix", "_signal",
    "_xxtestfuzz", "xxsubtype", "xxlimited", "xxlimited_35",
})
EXTENSION_SUFFIXES = (".so", ".pyd", ".dylib")
PROCESS_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.system", "subprocess.Popen",
    "pty.spawn", "os.startfile",
})
SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg"})
NET_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
})
ALWAYS_BLOCKED = frozenset({
    "socket.sethostname", "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "sqlite3.enable_load_extension", "sqlite3.load_extension",
    "syslog.openlog", "syslog.syslog",
    "code.__new__",  # hand-built bytecode can corrupt memory and sidestep this hook
    # a trace function writes frame.f_locals back into fast locals: the kernel keeps its
    # canonical `prompt` in one
    "sys.settrace", "sys.setprofile",
})
# event -> indices of (path, dir_fd) arguments that must stay inside scratch
PATH_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.truncate": ((0, None),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)),
    "os.symlink": ((1, 2),),
    "os.chflags": ((0, None),),
    "os.lchflags": ((0, None),),
    "dbm.open": ((0, None),),
}


def apply_rlimits(memory_mb: int, max_file_mb: int, nproc: int | None) -> None:
    """Lower soft and hard limits together so the kernel cannot raise them back."""
    def cap(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_FSIZE, max_file_mb * 1024 * 1024)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversize write -> OSError(EFBIG), not death
    if nproc is not None:
        cap(resource.RLIMIT_NPROC, nproc)


def _make_resolver(getcwd, lstat, readlink, s_islnk):
    """A realpath built only from captured builtins, so patching os/posixpath cannot fool it."""

    def resolve(path: str) -> str:
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = [p for p in path.split("/") if p and p != "."]
        out: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if out:
                    out.pop()
                continue
            candidate = "/" + "/".join(out + [part])
            try:
                is_link = s_islnk(lstat(candidate).st_mode)
            except OSError:
                is_link = False
            if is_link:
                hops += 1
                if hops > 40:
                    raise PermissionError("sandbox: too many symbolic links")
                target = readlink(candidate)
                if target.startswith("/"):
                    out = []
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            out.append(part)
        return "/" + "/".join(out)

    return resolve


# long: the whole audit policy in one closure, so the hook holds private references that model code cannot patch
def install_audit_hook(scratch: str, *, network: bool, protected_fds: frozenset[int],
                       allow_ctypes: bool = False, library_roots: tuple[str, ...] = ()) -> None:
    """Install the hook. All state lives in this closure, none in patchable module globals."""
    import stat as _stat

    import types as _types

    resolve = _make_resolver(posix.getcwd, posix.lstat, posix.readlink, _stat.S_ISLNK)
    # types.coroutine sets one flag on a generator's code with code.replace (asyncio uses it at
    # import); only that caller is let through the code.__new__ refusal: it changes no bytecode.
    coroutine_code, getframe = _types.coroutine.__code__, sys._getframe
    af_unix = 1
    # Events the hook never refuses, raised on every cell (compile, exec) and by the kernel's own
    # self-check (reading a function's __defaults__ is audited): answered first, since each pass
    # through the whole hook costs ~2 us and the self-check alone raised eight per cell.
    passthrough = frozenset({"object.__getattr__", "compile", "exec", "sys._getframe"})
    fspath, fsdecode_err = posix.fspath, "surrogateescape"
    stat_fn, s_isdir, readlink = posix.stat, _stat.S_ISDIR, posix.readlink
    scratch_real = resolve(scratch)
    prefix = scratch_real.rstrip("/") + "/"
    allowed_files = frozenset({"/dev/null"})
    process_events, signal_events = PROCESS_EVENTS, SIGNAL_EVENTS
    net_events = frozenset() if network else NET_EVENTS
    always, path_events = ALWAYS_BLOCKED, PATH_EVENTS
    blocked_imports = BLOCKED_IMPORTS - {"ctypes", "_ctypes"} if allow_ctypes else BLOCKED_IMPORTS
    block_ctypes_events = not allow_ctypes
    write_flags, at_fdcwd = WRITE_FLAGS, AT_FDCWD_VALUES
    _str, _bytes, _int, _isinstance = str, bytes, int, isinstance
    _PermissionError, _ImportError = PermissionError, ImportError
    ext_suffixes = EXTENSION_SUFFIXES
    lib_prefixes = tuple(resolve(r).rstrip("/") + "/" for r in library_roots)

    def trusted_library(path: str) -> bool:
        real = resolve(path)
        return any(real.startswith(p) for p in lib_prefixes)

    def as_text(path) -> str | None:
        if _isinstance(path, _int):
            return None
        path = fspath(path)
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", fsdecode_err)
        return path

    symlinks_made = [False]  # set once model code creates a symbolic link in scratch
    getcwd = posix.getcwd

    def inside(path: str) -> bool:
        if not symlinks_made[0]:
            # Fast path: scratch starts empty and holds no symlink until os.symlink (audited) makes
            # one, so a path that is lexically inside is really inside. Resolving component by
            # component costs O(depth^2) per call, which a deep tree turns into minutes.
            full = path if path.startswith("/") else getcwd() + "/" + path
            out: list[str] = []
            for part in full.split("/"):
                if part == "..":
                    if out:
                        out.pop()
                elif part and part != ".":
                    out.append(part)
            norm = "/" + "/".join(out)
            if norm == scratch_real or norm.startswith(prefix):
                return True
        real = resolve(path)
        return real == scratch_real or real.startswith(prefix) or real in allowed_files

    def check_path(event: str, path, dir_fd) -> None:
        if _isinstance(path, _int):
            if path in protected_fds:
                raise _PermissionError(f"sandbox: {event} on the kernel's protocol pipe is not allowed")
            # fchmod/fchown/futimes/ftruncate/fsetxattr/fchdir: judge the file the fd points at
            try:
                target = readlink(f"/proc/self/fd/{path}")
            except OSError:
                raise _PermissionError(f"sandbox: {event} on an unresolvable file descriptor is not allowed") from None
            if not target.startswith("/") or not inside(target):
                raise _PermissionError(f"sandbox: {event} on a file outside the scratch folder is not allowed")
            return
        text = as_text(path)
        if dir_fd not in at_fdcwd and not text.startswith("/"):
            # Relative to an open directory (shutil.rmtree does this): resolve that directory.
            try:
                base = readlink(f"/proc/self/fd/{int(dir_fd)}")
            except (OSError, TypeError, ValueError):
                raise _PermissionError(f"sandbox: {event} with an unresolvable dir_fd is not allowed") from None
            text = base + "/" + text
        if not inside(text):
            raise _PermissionError(
                f"sandbox: {event} outside the scratch folder is not allowed: {text!r} "
                f"(write only under {scratch_real})")

    # long: one event table read top to bottom; split into module helpers, model code could replace them
    def hook(event: str, args: tuple) -> None:
        if event in passthrough:
            return
        if event == "open":
            path, mode, flags = args
            if _isinstance(path, _int):
                if path in protected_fds:
                    raise _PermissionError("sandbox: opening the kernel's protocol pipe is not allowed")
                return
            if path is None:
                return
            writes = bool(flags & write_flags) if _isinstance(flags, _int) else False
            if _isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode):
                writes = True
            text = as_text(path)
            if writes:
                if not text.startswith("/") and ".." in text.split("/"):
                    # the "open" event does not carry dir_fd: a relative ".." could climb out of any folder
                    raise _PermissionError("sandbox: relative paths with '..' cannot be opened for writing; "
                                           "use a path inside the scratch folder")
                if not inside(text):
                    raise _PermissionError(
                        f"sandbox: writing outside the scratch folder is not allowed: {text!r} "
                        f"(write only under {scratch_real})")
                return
            # A read-only fd on a directory outside scratch could serve as dir_fd for a write
            # that the "open" event cannot see; refuse directories there.
            if not inside(text):
                try:
                    is_dir = s_isdir(stat_fn(text).st_mode)
                except OSError:
                    is_dir = False
                if is_dir:
                    raise _PermissionError(f"sandbox: opening directory {text!r} outside scratch is not allowed")
            return
        if event == "sqlite3.connect":
            db = args[0]
            text = as_text(db) if not _isinstance(db, _int) else ""
            if text in ("", ":memory:"):
                return
            if text.startswith("file:"):
                raise _PermissionError("sandbox: sqlite3 URI filenames are not allowed; pass a plain path")
            check_path(event, db, None)
            return
        if event == "os.symlink":
            src, dst = args[0], args[1]
            target = as_text(src) if not _isinstance(src, _int) else ""
            if target.startswith("/"):
                ok = inside(target)
            else:
                ok = ".." not in target.split("/")
            if not ok:
                raise _PermissionError("sandbox: symbolic links must point inside the scratch folder "
                                       "(absolute, or relative without '..')")
            symlinks_made[0] = True
        if event == "object.__setattr__" and len(args) > 1 and args[1] == "__code__" and \
                getframe(1).f_code is not coroutine_code:
            raise _PermissionError("sandbox: replacing a function's __code__ is not allowed")
        if event in path_events:
            for path_i, fd_i in path_events[event]:
                if path_i < len(args):
                    dir_fd = args[fd_i] if fd_i is not None and fd_i < len(args) else None
                    check_path(event, args[path_i], dir_fd)
            return
        if event == "import":
            name = args[0]
            if _isinstance(name, _str):
                for part in name.split("."):
                    if part in blocked_imports:
                        raise _ImportError(f"sandbox: importing {name!r} is not allowed", name=name)
            filename = args[1] if len(args) > 1 else None
            if _isinstance(filename, (_str, _bytes)):
                text = as_text(filename)
                base = text.rsplit("/", 1)[-1]
                if ".so" in base or base.endswith(ext_suffixes):
                    if not trusted_library(text):
                        raise _ImportError(f"sandbox: extension module {name!r} from {text!r} is outside the "
                                           "interpreter's own folders; refused", name=name)
            return
        if event in process_events:
            raise _PermissionError(f"sandbox: starting processes is not allowed ({event})")
        if event in signal_events:
            raise _PermissionError(f"sandbox: sending signals is not allowed ({event})")
        if event in net_events:
            if event == "socket.__new__" and len(args) > 1 and args[1] == af_unix:
                return  # socketpair() for asyncio's self-pipe; connect/bind/sendto stay refused
            raise _PermissionError(f"sandbox: network access is disabled ({event})")
        if event == "code.__new__" and getframe(1).f_code is coroutine_code:
            return
        if event in always or (block_ctypes_events and event.startswith("ctypes.")):
            raise _PermissionError(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)


def disarm_posixsubprocess() -> None:
    """Pre-load _posixsubprocess and stub fork_exec (it raises no audit event of its own);
    its re-import is then refused by the hook."""
    import _posixsubprocess

    def fork_exec(*_args, **_kwargs):
        raise PermissionError("sandbox: starting processes is not allowed (_posixsubprocess.fork_exec)")

    _posixsubprocess.fork_exec = fork_exec


def disarm_unaudited() -> None:
    """Stub calls that raise no audit event: device nodes and FIFOs, pidfds. The modules they
    live in cannot be re-imported afterwards (see BLOCKED_IMPORTS); under bubblewrap the
    seccomp filter refuses the system calls themselves."""
    import os
    import signal as _signal_mod

    def refuse(name: str):
        def stub(*_args, **_kwargs):
            raise PermissionError(f"sandbox: {name} is not allowed")
        stub.__name__ = name
        return stub

    for name in ("mkfifo", "mknod", "pidfd_open", "memfd_create"):
        if hasattr(posix, name):
            setattr(posix, name, refuse(f"os.{name}"))
            setattr(os, name, getattr(posix, name))
    if hasattr(_signal_mod, "pidfd_send_signal"):
        _signal_mod.pidfd_send_signal = refuse("signal.pidfd_send_signal")


def install_seccomp(program_hex: str) -> str | None:
    """Load the parent-built seccomp program into this process (no_new_privs first, as any process
    may); every thread the kernel starts inherits it. None on success, else why.

    Why here: under `unshare` and `none` no launcher loads a filter (bubblewrap does under bwrap),
    and without one an owned kernel can `umount2(/proc)` inside its user namespace and see the
    host's processes, start processes that are children of the rig (`CLONE_PARENT`), or reach
    another kernel's abstract unix socket. It runs before any model code, with the real ctypes,
    which is then dropped from sys.modules so that a later import is a new import (refused by the
    hook unless `allow_ctypes`).
    """
    prog = bytes.fromhex(program_hex)
    before = set(sys.modules)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return f"prctl(PR_SET_NO_NEW_PRIVS) failed: errno {ctypes.get_errno()}"
        if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            return f"prctl(PR_SET_SECCOMP) failed: errno {ctypes.get_errno()}"
        return None
    except (ImportError, OSError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def stub_ctypes() -> None:
    """Put an inert `ctypes` in sys.modules: libraries that merely import it (pandas does, for a
    Windows-only message) keep working, while any use fails clearly. The real module cannot be
    loaded afterwards: the hook refuses `ctypes`/`_ctypes`."""
    import types

    class _Disabled(types.ModuleType):
        def __getattr__(self, name: str):
            if name.startswith("__") and name.endswith("__"):
                raise AttributeError(name)
            raise AttributeError(f"sandbox: ctypes is disabled (ctypes.{name} is unavailable)")

    sys.modules["ctypes"] = _Disabled("ctypes", "ctypes is disabled inside the sandbox")


def cap_recursion(limit: int, ceiling: int) -> None:
    """Set the limit and keep later sys.setrecursionlimit calls under a ceiling sized to the C stack."""
    original = sys.setrecursionlimit
    original(limit)

    def setrecursionlimit(new_limit: int) -> None:
        if not isinstance(new_limit, int):
            raise TypeError("recursion limit must be an int")
        if new_limit > ceiling:
            raise ValueError(f"sandbox: recursion limit is capped at {ceiling}")
        original(new_limit)

    sys.setrecursionlimit = setrecursionlimit
