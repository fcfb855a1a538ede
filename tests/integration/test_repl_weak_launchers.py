"""The weak launchers (`unshare`, `none`) against an owned kernel, where they run (issue 20).

As root they run only where the kernel can drop to its leased uid before Python starts, which
needs an interpreter any user can read: the project's venv here lives under /root, so these tests
drive the sandbox from the system's python3 (the `repl` package needs only the standard
library). Each case is a fresh-eyes probe that breached before the kernel loaded its own seccomp
stage under these launchers and before scratch sat in a root-owned parent folder:
umount2(/proc) showed the host's processes under `unshare`, clone(CLONE_PARENT) left zombies of
the rig, one kernel reached another's abstract unix socket under `none`, and a kernel renamed its
scratch folder away so that close() left it behind.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import rlm_rig.repl.sandbox

REPO = Path(rlm_rig.repl.sandbox.__file__).resolve().parents[1]


def _world_readable_python() -> str | None:
    """A python3 on the system path that any user can run: every folder on its real
    path searchable by others, the file readable by others (the project's venv may not be)."""
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        real = Path(os.path.realpath(Path(folder) / "python3"))
        if not real.is_file() or not all(os.stat(p).st_mode & 0o001 for p in real.parents):
            continue
        if os.stat(real).st_mode & 0o005 == 0o005:
            return str(real)
    return None


SYSTEM_PY = _world_readable_python()

DRIVER = r'''
import json, os, sys, time
from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.types import SandboxError, SandboxLimits
from rlm_rig.repl.launch import plan_for

launcher = sys.argv[1]
if plan_for(launcher, network=False) is None:
    print(json.dumps({"skip": "launcher does not run here"}))
    sys.exit(0)
lim = SandboxLimits(launcher=launcher, allow_ctypes=True, cell_timeout_s=20)
PRE = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
out = {}

def cell(box, code):
    r = box.run_cell(PRE + code)
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else f"ERROR {r.error}"

a = Sandbox("doc", handler=lambda reqs: [], limits=lim)
b = Sandbox("doc", handler=lambda reqs: [], limits=lim)
try:
    out["seccomp"] = a.isolation.seccomp
    out["umount"] = cell(a, "rc = libc.umount2(b'/proc', 2)\n"
                            "print(rc, ctypes.get_errno(), len([p for p in os.listdir('/proc') if p.isdigit()]))")
    # clone(CLONE_PARENT | SIGCHLD): the child would be the rig's, not the kernel's
    out["clone_parent"] = cell(a, "pid = libc.syscall(56, 0x8000 | 17, 0, 0, 0, 0)\n"
                                  "if pid == 0:\n    libc._exit(0)\nprint(pid, ctypes.get_errno())")
    listen = ("s = libc.socket(1, 1, 0)\nname = b'\\x00rlm-weak-test-' + str(os.getpid()).encode()\n"
              "addr = (ctypes.c_char * 110)(*(b'\\x01\\x00' + name))\n"
              "rc = libc.bind(s, addr, 2 + len(name)) if s >= 0 else -1\n"
              "rc2 = libc.listen(s, 1) if rc == 0 else -1\nprint(s, rc, rc2, os.getpid())")
    out["listen"] = cell(a, listen)
    pid_a = out["listen"].split()[-1]
    out["connect"] = cell(b, f"name = b'\\x00rlm-weak-test-{pid_a}'\n"
                             "addr = (ctypes.c_char * 110)(*(b'\\x01\\x00' + name))\ns = libc.socket(1, 1, 0)\n"
                             "print(libc.connect(s, addr, 2 + len(name)) if s >= 0 else -1, ctypes.get_errno())")
    scratch = str(a.scratch)
    out["rename"] = cell(a, f"print(libc.rename({scratch!r}.encode(), {scratch + '-moved'!r}.encode()), ctypes.get_errno())")
    left = f"/tmp/rlm-weak-left-{os.getpid()}"
    out["move_out"] = cell(a, f"open('f', 'w').write('x')\nprint(libc.rename(b'f', {left!r}.encode()), ctypes.get_errno())")
    out["moved_exists_before_close"] = os.path.lexists(left)
finally:
    a.close()
    b.close()
time.sleep(0.2)
zombies = []
for pid in os.listdir("/proc"):
    try:
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()
    except OSError:
        continue
    if st[0] == "Z" and st[1] == str(os.getpid()):
        zombies.append(pid)
out["zombies"] = zombies
out["scratch_left"] = [p for p in (scratch, scratch + "-moved", os.path.dirname(scratch)) if os.path.lexists(p)]
out["moved_left"] = os.path.lexists(left)
print(json.dumps(out))
'''


def _system_python_usable() -> str | None:
    if SYSTEM_PY is None or not shutil.which("setpriv"):
        return "no world-readable python3 on the system path, or no setpriv"
    if os.geteuid() != 0:
        return "the uid drop of the weak launchers is for a root parent"
    return None


@pytest.fixture(scope="module", params=["unshare", "none"])
def attacked(request):
    why = _system_python_usable()
    if why:
        pytest.skip(why)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
    res = subprocess.run([SYSTEM_PY, "-c", DRIVER, request.param], env=env, cwd="/", capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"{request.param}: {out['skip']}")
    return request.param, out


def test_the_kernel_cannot_unmount_proc_to_see_the_host(attacked):
    launcher, out = attacked
    rc, errno_, _procs = out["umount"].split()
    assert out["seccomp"] is True
    assert rc == "-1" and errno_ == "1", out  # EPERM from the kernel's seccomp stage


def test_no_clone_parent_child_of_the_rig_survives(attacked):
    launcher, out = attacked
    pid, errno_ = out["clone_parent"].split()
    assert pid == "-1" and errno_ == "1", out
    assert out["zombies"] == [], out


def test_one_kernel_cannot_reach_anothers_abstract_unix_socket(attacked):
    launcher, out = attacked
    rc, _errno = out["connect"].split()
    assert rc == "-1", out
    assert out["listen"].split()[0] == "-1", out  # with the network off, no socket at all


def test_the_kernel_cannot_rename_its_scratch_away_and_leaves_nothing_in_tmp(attacked):
    launcher, out = attacked
    rc, errno_ = out["rename"].split()
    assert rc == "-1" and errno_ == "13", out  # EACCES: its parent folder is root's
    assert out["scratch_left"] == [], out
    assert out["moved_exists_before_close"] is True, out  # the move out of scratch itself works ...
    assert out["moved_left"] is False, out  # ... and close() removes what its uid left in /tmp
