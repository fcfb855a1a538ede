"""A seccomp-BPF program for the kernel, assembled in pure Python and loaded by bubblewrap
(under `unshare` and `none`, by the kernel itself before model code: `_kernel/guard.py: install_seccomp`).

Why: several system calls raise no audit event (mknod, mkfifo, pidfd signals, keyrings, ptrace,
namespace creation), so only the OS can refuse them. bubblewrap installs a classic BPF program
passed on `--seccomp FD` just before it execs the sandboxed command (with no_new_privs set), so
the filter covers the kernel and everything it starts. Nothing here needs libseccomp.

The program: a wrong architecture (e.g. i386 calls on x86_64, x32) is killed; the calls below
fail with EPERM; `clone3` fails with ENOSYS so glibc falls back to `clone`, whose flag word is
then checked for namespace flags; everything else is allowed.
"""
from __future__ import annotations

import errno
import os
import struct

# classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000


def _ret_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


CLONE_NS_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                  | 0x40000000)  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

# What a Python kernel never needs. Grouped by why.
_BLOCKED_NAMES = (
    # device nodes and FIFOs (mkfifo is mknodat)
    "mknod", "mknodat",
    # other processes' memory and signals through pidfds
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "kcmp",
    # namespaces, mounts, root changes
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    # keyrings
    "keyctl", "add_key", "request_key",
    # host-wide state
    "reboot", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon",
    "swapoff", "acct", "quotactl", "syslog", "vhangup", "settimeofday", "clock_settime", "adjtimex",
    "clock_adjtime",
    # kernel attack surface and noexec bypasses
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "memfd_create", "memfd_secret", "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    # user xattrs on the scratch tmpfs are not counted against its size cap
    "setxattr", "lsetxattr", "fsetxattr", "setxattrat",
    # symbolic links: one in a caller-supplied scratch folder (a host folder) would point the
    # caller, reading it afterwards as root, at any host file; the hook's own check can be
    # switched off from pure Python (docs/SANDBOX.md)
    "symlink", "symlinkat",
)
# No new process by any route, audited or not (libuv's spawn, a C library's fork): bwrap loads the
# filter just before it execs setpriv, which execs Python; none of them forks after that. exec
# stays allowed (those two execs, and the kernel's own re-exec for a bigger stack): a process
# that execs only replaces itself, inside the same confinement.
_NO_PROCESS_NAMES = ("fork", "vfork")
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
CLONE_THREAD = 0x00010000

_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "mknod": 133, "mknodat": 259, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "kcmp": 312, "unshare": 272,
        "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "move_mount": 429,
        "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
        "keyctl": 250, "add_key": 248, "request_key": 249, "reboot": 169, "kexec_load": 246,
        "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176, "swapon": 167,
        "swapoff": 168, "acct": 163, "quotactl": 179, "syslog": 103, "vhangup": 153, "settimeofday": 164,
        "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "memfd_create": 319, "memfd_secret": 447, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "fanotify_init": 300, "clone": 56, "clone3": 435, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190,
        "setxattrat": 463, "socket": 41, "socketpair": 53, "fork": 57, "vfork": 58, "symlink": 88, "symlinkat": 266,
    }),
    "aarch64": (0xC00000B7, {
        "mknodat": 33, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_open": 434,
        "pidfd_send_signal": 424, "pidfd_getfd": 438, "kcmp": 272, "unshare": 97, "setns": 268, "mount": 40,
        "umount2": 39, "pivot_root": 41, "chroot": 51, "move_mount": 429, "open_tree": 428, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "keyctl": 219, "add_key": 217,
        "request_key": 218, "reboot": 142, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60,
        "syslog": 116, "vhangup": 58, "settimeofday": 170, "clock_settime": 112, "adjtimex": 171,
        "clock_adjtime": 266, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "memfd_create": 279, "memfd_secret": 447,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "fanotify_init": 262, "clone": 220, "clone3": 435,
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "setxattrat": 463, "socket": 198, "socketpair": 199,
        "symlinkat": 36,
    }),
}


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k & 0xFFFFFFFF)


def supported() -> bool:
    return os.uname().machine in _ARCHES


def build_filter(machine: str | None = None, *, no_new_processes: bool = True, no_sockets: bool = False) -> bytes:
    """The filter as raw `struct sock_filter` records (what bwrap's --seccomp and the kernel read).

    Socket families: only AF_UNIX, AF_INET and AF_INET6, with or without the network: vsock reaches
    past the network namespace, packet and netlink sockets talk to the host kernel (glibc's name
    resolution works without netlink).
    `no_new_processes`: also refuse fork, vfork and any clone without CLONE_THREAD (posix_spawn,
    libuv's spawn), so a process start that raises no audit event fails too.
    `no_sockets`: `socket` fails for every family and `socketpair` is AF_UNIX only (asyncio's
    self-pipe). For a kernel without a network namespace of its own (`unshare`/`none` stages when the
    network is off): seccomp cannot read the address `connect`/`bind` point at, so the only way to keep
    it off another kernel's abstract unix socket, a host unix socket or 127.0.0.1 is to have no socket
    that could connect at all.
    """
    machine = machine or os.uname().machine
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp syscall table for architecture {machine!r}")
    audit_arch, table = _ARCHES[machine]
    eperm = _ret_errno(errno.EPERM)
    prog = [
        _insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ_K, 1, 0, audit_arch),
        _insn(_RET_K, 0, 0, RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # the x32 ABI shares the arch value; refuse it
        prog += [_insn(_JGE_K, 0, 1, 0x40000000), _insn(_RET_K, 0, 0, eperm)]
    names = _BLOCKED_NAMES + (_NO_PROCESS_NAMES if no_new_processes else ())
    for name in names:
        if name in table:
            prog += [_insn(_JEQ_K, 0, 1, table[name]), _insn(_RET_K, 0, 0, eperm)]
    prog += [_insn(_JEQ_K, 0, 1, table["clone3"]), _insn(_RET_K, 0, 0, _ret_errno(errno.ENOSYS))]
    # socket/socketpair: the family is the low 32 bits of args[0] (little-endian offset 16)
    if no_sockets:
        prog += [_insn(_JEQ_K, 0, 1, table["socket"]), _insn(_RET_K, 0, 0, eperm)]
        prog += _family_rule(table["socketpair"], (AF_UNIX,), eperm)
    else:
        prog += _family_rule(table["socket"], (AF_UNIX, AF_INET, AF_INET6), eperm, also=table["socketpair"])
    # clone: no namespace flag; in the kernel's stage, threads only (CLONE_THREAD)
    tail = [_insn(_LD_W_ABS, 0, 0, 16), _insn(_JSET_K, 0, 1, CLONE_NS_FLAGS), _insn(_RET_K, 0, 0, eperm)]
    if no_new_processes:
        tail += [_insn(_JSET_K, 1, 0, CLONE_THREAD), _insn(_RET_K, 0, 0, eperm)]
    tail += [_insn(_RET_K, 0, 0, RET_ALLOW)]
    prog += [_insn(_JEQ_K, 0, len(tail) - 1, table["clone"]), *tail]
    return b"".join(prog)


def _family_rule(nr: int, families: tuple[int, ...], eperm: int, also: int | None = None) -> list[bytes]:
    """Call `nr` (and `also`) only with one of `families` (args[0], low 32 bits at offset 16)."""
    fam = [_insn(_LD_W_ABS, 0, 0, 16)]
    for i, family in enumerate(families):
        fam.append(_insn(_JEQ_K, len(families) - i, 0, family))  # -> the RET_ALLOW below
    fam += [_insn(_RET_K, 0, 0, eperm), _insn(_RET_K, 0, 0, RET_ALLOW)]
    if also is None:
        return [_insn(_JEQ_K, 0, len(fam), nr), *fam]
    return [_insn(_JEQ_K, 1, 0, nr), _insn(_JEQ_K, 0, len(fam), also), *fam]


def filter_fd() -> int:
    """A readable fd holding the program (a pipe: it is far below the pipe buffer size)."""
    data = build_filter()
    r, w = os.pipe()
    try:
        os.write(w, data)
    finally:
        os.close(w)
    return r
