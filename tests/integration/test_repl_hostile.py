"""Hostile model code: each case must be contained, visible in the CellResult, and later cells must work.

Cases that keep the kernel alive share one module-scoped sandbox; cases that restart it get
their own. Several run twice: with the best OS layers ("auto") and with the in-kernel layers
alone ("none"), so the last layer is tested on its own.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from rlm_rig.repl.types import CellResult, SandboxLimits, SubCallReply
from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.launch import plan_for

# As root, "none" runs only where it can drop to an unprivileged uid (issue 20); elsewhere it is refused.
LAUNCHERS = ["auto", pytest.param("none", marks=pytest.mark.skipif(
    plan_for("none", network=False) is None, reason="launcher 'none' is refused here (root, no uid drop possible)"))]


def echo_handler(reqs):
    return [SubCallReply(text=r.chunk) for r in reqs]


def limits(**kw) -> SandboxLimits:
    base = dict(cell_timeout_s=5.0, memory_mb=768, max_output_chars=20_000)
    base.update(kw)
    return SandboxLimits(**base)


@pytest.fixture(scope="module", params=LAUNCHERS)
def sb(request):
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits(launcher=request.param)) as box:
        yield box


def alive(box: Sandbox) -> None:
    r = box.run_cell("print('alive', len(prompt))")
    assert r.error is None and r.stdout == "alive 11\n", r


def blocked(r: CellResult, needle: str) -> None:
    assert r.error is not None, r
    assert needle in r.error, r.error
    assert not r.restarted


# ---- infinite loop ---------------------------------------------------------------------------
def test_infinite_loop_times_out_and_restarts_with_prompt():
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits(cell_timeout_s=1.5)) as box:
        assert box.run_cell("kept = 1").error is None
        r = box.run_cell("while True:\n    pass")
        assert r.timed_out and r.restarted and r.kill_reason == "timeout"
        assert "TimeoutError" in r.error
        assert any("LOST" in n for n in r.notices)
        assert box.kernel_starts == 2
        alive(box)  # prompt reloaded in the new kernel
        assert "NameError" in box.run_cell("kept").error  # state really was lost


def test_sub_call_wait_does_not_count_against_the_timeout():
    import time

    def slow(reqs):
        time.sleep(2.5)
        return [SubCallReply(text="late") for _ in reqs]

    with Sandbox("p", handler=slow, limits=limits(cell_timeout_s=1.5)) as box:
        r = box.run_cell("print(sub_call('c', 'i'))")
    assert r.error is None and r.stdout == "late\n" and not r.timed_out


# ---- memory ----------------------------------------------------------------------------------
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_memory_blowup_is_contained(launcher):
    # A small cap keeps page-faulting cheap; a generous timeout keeps this about memory, not time.
    with Sandbox("PROMPT-TEXT", handler=echo_handler,
                 limits=limits(memory_mb=320, cell_timeout_s=30, launcher=launcher)) as box:
        r = box.run_cell("big = bytearray(8 * 1024**3)")
        assert "MemoryError" in r.error and any("memory cap" in n for n in r.notices)
        assert not r.restarted
        r = box.run_cell("hog = []\nwhile True:\n    hog.append(bytearray(10**7))")
        if r.restarted:  # the kernel may also die; either way it must be reported
            assert r.kill_reason in ("memory", "crash")
        else:
            assert "MemoryError" in r.error
            assert box.run_cell("del hog").error is None
        alive(box)


def test_cgroup_oom_kill_is_reported_as_memory(monkeypatch):
    """Where a memory cgroup exists, an OOM kill (not just MemoryError) is contained and named."""
    import rlm_rig.repl.sandbox
    from rlm_rig import repl

    # Put the cgroup limit below the address-space cap so the OOM killer, not malloc, stops it.
    monkeypatch.setattr(repl.sandbox, "CGROUP_MEMORY_HEADROOM", -400 * 2**20)
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits(memory_mb=600, cell_timeout_s=60)) as box:
        if box.isolation.cgroup is None:
            pytest.skip("no writable cgroup tree on this host")
        r = box.run_cell("blob = bytearray(500 * 2**20)\nprint('survived')")
        assert r.restarted and r.kill_reason == "memory", r
        assert "KernelDied" in r.error
        alive(box)


# ---- processes -------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nsubprocess.Popen(['sleep', '60'])",
    "import os\nos.system('sleep 60 &')",
    "import os\nos.posix_spawn('/bin/sleep', ['sleep', '60'], {})",
    "import os\nos.execv('/bin/sleep', ['sleep', '60'])",
    "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    "import pty\npty.fork()",
    "import _posixsubprocess\n_posixsubprocess.fork_exec()",
])
def test_process_creation_is_blocked(sb, code):
    r = sb.run_cell(code)
    blocked(r, "sandbox: starting processes is not allowed")


def test_fork_bomb_leaves_no_process_behind():
    box = Sandbox("p", handler=echo_handler, limits=limits())
    try:
        r = box.run_cell("import os\nfor _ in range(100):\n    try:\n        os.fork()\n    except OSError:\n"
                         "        pass\nprint('done')")
        assert r.error is None and r.stdout == "done\n"
        root = box._kernel.proc.pid
        tree = _descendants(root) | {root}
    finally:
        box.close()
    assert all(not Path(f"/proc/{pid}").exists() or _is_zombie(pid) for pid in tree), tree


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for kid in map(int, kids):
        out |= {kid} | _descendants(kid)
    return out


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_task_cap_of_the_cgroup_layer():
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits(max_tasks=40, cell_timeout_s=30)) as box:
        if box.isolation.cgroup is None:
            pytest.skip("no writable cgroup tree on this host")
        assert "pids.max=40" in box.isolation.cgroup
        r = box.run_cell("import threading, time\nthreading.stack_size(256 * 1024)\nstop = threading.Event()\n"
                         "n = 0\ntry:\n    for _ in range(200):\n"
                         "        threading.Thread(target=stop.wait, daemon=True).start()\n        n += 1\n"
                         "except RuntimeError as e:\n    print('capped', n < 40, e)\nfinally:\n    stop.set()")
        assert r.error is None and r.stdout.startswith("capped True"), r
        alive(box)


def test_small_thread_pool_fits_the_memory_cap(sb):
    r = sb.run_cell("from concurrent.futures import ThreadPoolExecutor\nwith ThreadPoolExecutor(16) as ex:\n"
                    "    print(sum(ex.map(lambda i: i, range(100))))")
    assert r.error is None and r.stdout == "4950\n", r


# ---- network ---------------------------------------------------------------------------------
def test_network_access_is_blocked(sb):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        r = sb.run_cell(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)")
        blocked(r, "sandbox: network access is disabled")
        r = sb.run_cell("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)")
        blocked(r, "sandbox: network access is disabled")
        r = sb.run_cell("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:%d/')" % port)
        assert r.error is not None and "sandbox: network access is disabled" in r.error
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()
    if sb.isolation.launcher in ("bwrap", "unshare"):
        assert sb.isolation.network_namespace


def test_network_can_be_enabled():
    with Sandbox("p", handler=echo_handler, limits=limits(network=True)) as box:
        r = box.run_cell("import socket\ns = socket.socket()\ns.close()\nprint('ok')")
        assert r.error is None and r.stdout == "ok\n"
        assert not box.isolation.network_namespace


# ---- filesystem ------------------------------------------------------------------------------
@pytest.fixture(params=LAUNCHERS)
def fs_box(request, tmp_path):
    # Under "none" a root parent runs the kernel as its own uid in the host's view of the files: the
    # scratch folder's parents must let other users through (pytest's own tmp folders are 0700).
    tmp_path.chmod(0o711)
    for parent in tmp_path.parents:
        if parent.name.startswith("pytest-") and os.geteuid() == 0:
            parent.chmod(0o711)
    victim_dir = tmp_path / "outside"
    victim_dir.mkdir()
    victim = victim_dir / "victim.txt"
    victim.write_text("original")
    box = Sandbox("p", handler=echo_handler, limits=limits(launcher=request.param),
                  scratch_dir=tmp_path / "scratch")
    yield box, victim
    box.close()


def test_writes_outside_scratch_are_blocked(fs_box):
    box, victim = fs_box
    d = victim.parent
    attempts = [
        f"open({str(victim)!r}, 'w').write('pwned')",
        f"open({str(victim)!r}, 'a').write('pwned')",
        f"import os\nos.open({str(d / 'new.txt')!r}, os.O_WRONLY | os.O_CREAT)",
        f"import pathlib\npathlib.Path({str(d / 'new.txt')!r}).write_text('x')",
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.rename({str(victim)!r}, 'stolen.txt')",
        f"import os\nos.replace('mine.txt', {str(victim)!r})",
        f"import os\nos.mkdir({str(d / 'newdir')!r})",
        f"import os\nos.rmdir({str(d)!r})",
        f"import os\nos.chmod({str(victim)!r}, 0o777)",
        f"import os\nos.truncate({str(victim)!r}, 0)",
        f"import shutil\nshutil.rmtree({str(d)!r})",
        f"import shutil\nshutil.copy('mine.txt', {str(victim)!r})",
        f"import os\nos.link({str(victim)!r}, 'hardlink.txt')",
        f"import os\nos.symlink({str(victim)!r}, 'link.txt')\nopen('link.txt', 'w').write('pwned')",
        f"import os\nfd = os.open({str(d)!r}, os.O_RDONLY)\nos.open('x', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
        f"import sqlite3\nsqlite3.connect({str(d / 'db.sqlite')!r})",
    ]
    assert box.run_cell("_ = open('mine.txt', 'w').write('mine')").error is None
    for code in attempts:
        r = box.run_cell(code)
        assert r.error is not None, code
        assert "sandbox:" in r.error or "FileNotFoundError" in r.error, (code, r.error)
        assert not r.restarted
    assert victim.read_text() == "original"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


def test_writes_inside_scratch_work(fs_box):
    box, _ = fs_box
    r = box.run_cell("import os, shutil, tempfile\nos.makedirs('a/b')\nopen('a/b/f.txt', 'w').write('x')\n"
                     "shutil.copy('a/b/f.txt', 'g.txt')\nos.rename('g.txt', 'h.txt')\nos.remove('h.txt')\n"
                     "shutil.rmtree('a')\nwith tempfile.NamedTemporaryFile() as t:\n    t.write(b'x')\n"
                     "print(sorted(os.listdir('.')))")
    assert r.error is None, r.error
    assert r.stdout == "[]\n"


# ---- environment -----------------------------------------------------------------------------
def test_environment_is_scrubbed(sb, monkeypatch):
    r = sb.run_cell("import os\nprint(sorted(os.environ))")
    keys = eval(r.stdout)  # noqa: S307 - our own repr of a list of str
    assert "PATH" in keys and "HOME" in keys
    for secret in ("HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK", "PYTHONPATH"):
        assert secret not in keys
    assert set(keys) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                         "MKL_NUM_THREADS", "MALLOC_ARENA_MAX", "PWD", "SHLVL", "_"}


def test_parent_secret_does_not_leak(monkeypatch):
    monkeypatch.setenv("RLM_TEST_SECRET", "s3cr3t-value")
    with Sandbox("p", handler=echo_handler, limits=limits()) as box:
        r = box.run_cell("import os\nprint(os.environ.get('RLM_TEST_SECRET'))\n"
                         "print(open('/proc/self/environ', 'rb').read().count(b's3cr3t'))")
    assert r.stdout == "None\n0\n", r


# ---- exits -----------------------------------------------------------------------------------
def test_sys_exit_and_system_exit_are_contained(sb):
    assert sb.run_cell("survivor = 7").error is None
    for code in ("import sys\nsys.exit(3)", "raise SystemExit('bye')", "exit()", "raise KeyboardInterrupt"):
        r = sb.run_cell(code)
        assert r.error is not None and not r.restarted, code
    assert any("SystemExit was intercepted" in n for n in sb.run_cell("import sys; sys.exit(1)").notices)
    assert sb.run_cell("print(survivor)").stdout == "7\n"


def test_os_exit_restarts_with_notice():
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits()) as box:
        r = box.run_cell("import os\nos._exit(5)")
        assert r.restarted and r.kill_reason == "exit"
        assert "KernelDied" in r.error and any("restarted" in n for n in r.notices)
        alive(box)


def test_segfault_is_contained_as_restart():
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits()) as box:
        r = box.run_cell("import faulthandler\nfaulthandler._sigsegv()")
        assert r.restarted and r.kill_reason == "crash"
        alive(box)


# ---- signals to the parent -------------------------------------------------------------------
@pytest.mark.parametrize("code", [
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    f"import os\nos.kill({os.getpid()}, 9)",
    "import os\nos.kill(-1, 9)",
    "import os\nos.killpg(os.getpgid(0), 9)",
    "import os\nos.killpg(0, 9)",
])
def test_killing_the_parent_fails(sb, code):
    r = sb.run_cell(code)
    blocked(r, "sandbox: sending signals is not allowed")
    alive(sb)  # and we, the parent, are obviously still here


def test_pid_namespace_hides_host_processes(sb):
    if not sb.isolation.pid_namespace:
        pytest.skip("no PID namespace on this host (in-kernel layers only)")
    r = sb.run_cell("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    pids = eval(r.stdout)  # noqa: S307
    assert os.getpid() not in pids or os.getpid() <= 3
    assert len(pids) <= 3


# ---- output ----------------------------------------------------------------------------------
def test_huge_output_is_capped(sb):
    r = sb.run_cell("for _ in range(2000):\n    print('x' * 100_000)")
    assert r.error is None and r.output_truncated
    assert len(r.stdout) + len(r.stderr) <= 20_000
    assert any("max_output_chars" in n for n in r.notices)
    r = sb.run_cell("import os\nfor _ in range(500):\n    os.write(1, b'y' * 65536)")
    assert r.error is None and r.output_truncated
    assert len(r.stdout) + len(r.stderr) <= 20_000
    r = sb.run_cell("print('small')")
    assert r.stdout == "small\n" and not r.output_truncated


def test_closing_or_replacing_stdout_does_not_break_the_protocol(sb):
    r = sb.run_cell("import sys\nsys.stdout.close()\nprint('after close')")
    assert r.error is None and r.stdout == "after close\n"
    r = sb.run_cell("import sys, io\nsys.stdout = io.StringIO()\nsys.stderr = None\nprint('hidden')")
    assert r.error is None
    assert sb.run_cell("print('visible')").stdout == "visible\n"


# ---- recursion -------------------------------------------------------------------------------
def test_deep_recursion_is_a_recursion_error(sb):
    r = sb.run_cell("def down(n):\n    return down(n + 1)\ndown(0)")
    assert "RecursionError" in r.error and not r.restarted
    r = sb.run_cell("import sys\nsys.setrecursionlimit(10**7)")
    assert "recursion limit is capped" in r.error
    r = sb.run_cell("import sys\nsys.setrecursionlimit(50000)\nx = []\nfor _ in range(200000):\n"
                    "    x = [x]\ntry:\n    repr(x)\nfinally:\n    sys.setrecursionlimit(2000)")
    assert "RecursionError" in r.error and not r.restarted
    alive(sb)


# ---- protected names -------------------------------------------------------------------------
def test_overwritten_builtins_of_the_repl_are_restored(sb):
    r = sb.run_cell("prompt = 'fake'\nsub_call = None\ndel FINAL\nFINAL_VAR = print\nsub_call_batch = 1")
    assert r.error is None
    for name in ("prompt", "sub_call", "FINAL", "FINAL_VAR", "sub_call_batch"):
        assert any(f"`{name}`" in n for n in r.notices), (name, r.notices)
    r = sb.run_cell("print(prompt, sub_call('c', 'i'))\nFINAL('x')")
    assert r.stdout == "PROMPT-TEXT c\n" and r.final_answer == "x"


# ---- ctypes and other escapes -----------------------------------------------------------------
@pytest.mark.parametrize("code,needle", [
    ("import _ctypes", "importing '_ctypes' is not allowed"),
    ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit is not allowed"),
    ("import gc\ngc.get_objects()", "gc.get_objects is not allowed"),
    ("import importlib.util\nimportlib.util.module_from_spec(importlib.util.find_spec('_ctypes'))",
     "importing '_ctypes' is not allowed"),
    ("import importlib.util\nimportlib.util.module_from_spec(importlib.util.find_spec('_posixsubprocess'))",
     "importing '_posixsubprocess' is not allowed"),
    ("def f():\n    pass\nf.__code__.replace(co_code=b'')", "code.__new__ is not allowed"),
])
def test_escape_hatches_are_closed(sb, code, needle):
    blocked(sb.run_cell(code), needle)


# ---- the protocol itself ----------------------------------------------------------------------
def test_garbage_on_the_protocol_pipe_restarts_the_kernel():
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits()) as box:
        r = box.run_cell("import os, sys\nos.write(int(sys.argv[2]), b'\\xff' * 64)")
        assert r.restarted and r.kill_reason == "protocol"
        alive(box)
        r = box.run_cell("import os, sys\nos.write(int(sys.argv[2]), b'J' + (2**31).to_bytes(4, 'big'))")
        assert r.restarted and r.kill_reason == "protocol"
        alive(box)


def test_forged_messages_break_the_protocol():
    """A frame without the cell's nonce is never taken as a result: the kernel is replaced (issue 20)."""
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits()) as box:
        r = box.run_cell(
            "import os, sys, json\n"
            "msg = json.dumps({'t': 'done', 'cell': 999, 'stdout': 'FORGED'}).encode()\n"
            "os.write(int(sys.argv[2]), b'J' + len(msg).to_bytes(4, 'big') + msg)\n"
            "print('real')")
        assert r.restarted and r.kill_reason == "protocol" and "nonce" in r.error, r
        assert "FORGED" not in r.stdout
        alive(box)


def test_closing_the_protocol_pipe_restarts_the_kernel():
    with Sandbox("PROMPT-TEXT", handler=echo_handler, limits=limits()) as box:
        r = box.run_cell("import os, sys\nos.close(int(sys.argv[2]))")
        assert r.restarted and r.kill_reason in ("exit", "protocol")
        alive(box)


def test_background_thread_output_does_not_wedge_the_kernel(sb):
    r = sb.run_cell("import threading, os\ndef spam():\n    for _ in range(2000):\n"
                    "        os.write(2, b'z' * 4096)\nthreading.Thread(target=spam, daemon=True).start()")
    assert r.error is None
    for _ in range(3):
        alive(sb)


def test_ctypes_is_an_inert_stub_by_default(sb):
    r = sb.run_cell("import ctypes\nctypes.CDLL(None)")
    blocked(r, "sandbox: ctypes is disabled")
    blocked(sb.run_cell("import sys\ndel sys.modules['ctypes']\nimport ctypes"), "importing 'ctypes' is not allowed")


def test_ctypes_can_be_allowed_explicitly():
    with Sandbox("p", handler=echo_handler, limits=limits(allow_ctypes=True)) as box:
        r = box.run_cell("import ctypes\nprint(ctypes.sizeof(ctypes.c_int))")
    assert r.error is None and r.stdout == "4\n"
