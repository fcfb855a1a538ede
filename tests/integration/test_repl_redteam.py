"""Red-team probes against the REPL sandbox, run under every launcher this machine offers.

Each probe is model code plus the outcome it must have. `where` names the launchers under which
the outcome is claimed (docs/SANDBOX.md, "What holds under each launcher"); under the others the
probe is skipped with that reason, never silently passed. Probes that need their own limits or a
fresh kernel are separate tests below the table.
"""
from __future__ import annotations

import glob
import os
import resource
import stat
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Callable

import pytest

from rlm_rig.records.trajectory import CellRecord, Trajectory
from rlm_rig.repl.types import CellResult, SandboxLimits, SubCallReply
from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.launch import plan_for

ALL = ("bwrap", "unshare", "none")
OS = ("bwrap",)  # outcomes that rest on the OS layers only bubblewrap gives here
PROJECT = Path(__file__).resolve().parents[2]
GOLD = PROJECT / "experiments" / "data" / "oolong-real" / "toy.jsonl"
LIB_DYNLOAD = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "lib-dynload"


def _launcher_param(name: str):
    ok = plan_for(name, network=False) is not None
    return pytest.param(name, marks=pytest.mark.skipif(not ok, reason=f"launcher {name!r} does not work here"))


LAUNCHERS = [_launcher_param(n) for n in ALL]


def limits(launcher: str, **kw) -> SandboxLimits:
    return SandboxLimits(launcher=launcher, cell_timeout_s=kw.pop("cell_timeout_s", 30), **kw)


def echo(reqs):
    return [SubCallReply(text=r.chunk[:20]) for r in reqs]


def _home_secret() -> str:
    """A file of the parent's home that has nothing to do with the interpreter (a stand-in for ~/.ssh)."""
    home = Path.home()
    needed = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    for entry in sorted(home.iterdir()):
        if entry.is_file() and not any(entry == n or entry in n.parents for n in needed):
            return str(entry)
    return str(home / ".no-such-secret")


@dataclass
class Probe:
    name: str
    code: str
    check: Callable[[CellResult], None]
    where: tuple[str, ...] = ALL


def refused(*needles: str) -> Callable[[CellResult], None]:
    def check(r: CellResult) -> None:
        assert r.error is not None, f"expected a refusal, got {r}"
        assert any(n in r.error for n in needles), r.error
        assert not r.restarted, r
    return check


def prints(expected: str) -> Callable[[CellResult], None]:
    def check(r: CellResult) -> None:
        assert r.error is None, r.error
        assert r.stdout.strip() == expected, r.stdout
    return check


def _subst(code: str, scratch: str) -> str:
    code = "import os as _os\n_os.chdir('$SCRATCH')\n" + textwrap.dedent(code)  # each probe starts in scratch
    return Template(code).substitute(
        SCRATCH=scratch, HOME_SECRET=_home_secret(), GOLD=str(GOLD), PROJECT=str(PROJECT),
        DYNLOAD=str(LIB_DYNLOAD), VENV_FILE=str(Path(sys.prefix) / "pyvenv.cfg"))


PROBES = [
    # --- 1. host-global settings ------------------------------------------------------------
    Probe("core_pattern_through_dir_fd_and_dotdot", """
        import os
        for i in range(8):
            os.makedirs('d', exist_ok=True); os.chdir('d')
        fd = os.open('$SCRATCH', os.O_RDONLY)
        os.open('../../proc/sys/kernel/core_pattern', os.O_WRONLY, dir_fd=fd)
        """, refused("PermissionError", "OSError", "Read-only")),
    Probe("sysctl_not_writable_at_os_level",
          "import os; print(os.access('/proc/sys/kernel/core_pattern', os.W_OK), "
          "os.access('/proc/sysrq-trigger', os.W_OK))", prints("False False"), OS),
    Probe("proc_self_mem_not_writable", "open('/proc/self/mem', 'r+b')",
          refused("PermissionError", "Read-only")),
    # --- 2. reads ----------------------------------------------------------------------------
    Probe("home_secret_hidden", "open('$HOME_SECRET').read()", refused("FileNotFoundError", "PermissionError"), OS),
    Probe("gold_answers_hidden", "open('$GOLD').read()", refused("FileNotFoundError"), OS),
    Probe("project_source_hidden", "open('$PROJECT/README.md').read()", refused("FileNotFoundError"), OS),
    Probe("other_processes_hidden",
          "import os; print(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)", prints("True"),
          ("bwrap", "unshare")),
    Probe("no_sysfs_no_cgroupfs", "import os; print(os.path.exists('/sys/fs/cgroup'))", prints("False"), OS),
    # --- 3. hook bypasses ----------------------------------------------------------------------
    Probe("posixsubprocess_second_copy_other_name", """
        import glob, importlib.util
        path = glob.glob('$DYNLOAD/_posixsubprocess*.so')[0]
        spec = importlib.util.spec_from_file_location('evil._posixsubprocess', path)
        importlib.util.module_from_spec(spec)
        """, refused("importing 'evil._posixsubprocess' is not allowed")),
    Probe("ctypes_under_another_name", """
        import glob, importlib.util
        path = glob.glob('$DYNLOAD/_ctypes*.so')[0]
        spec = importlib.util.spec_from_file_location('totally_harmless._ctypes', path)
        importlib.util.module_from_spec(spec)
        """, refused("is not allowed")),
    Probe("native_extension_from_scratch", """
        import glob, importlib.util, os, shutil
        src = glob.glob('$DYNLOAD/_json*.so')[0]
        os.makedirs('pkg', exist_ok=True)
        dst = os.path.join('$SCRATCH', 'pkg', os.path.basename(src))
        shutil.copyfile(src, dst)
        spec = importlib.util.spec_from_file_location('pkg._json', dst)
        importlib.util.module_from_spec(spec)
        """, refused("outside the interpreter's own folders")),
    Probe("scratch_is_noexec_for_mmap", """
        import mmap, os
        with open('blob.bin', 'wb') as fh:
            fh.write(b'\\x00' * 4096)
        fd = os.open('blob.bin', os.O_RDONLY)
        mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)
        """, refused("PermissionError", "Operation not permitted"), OS),
    Probe("mkfifo", "import os; os.mkfifo('fifo')", refused("os.mkfifo is not allowed")),
    Probe("mknod", "import os, stat; os.mknod('node', stat.S_IFIFO | 0o600)", refused("os.mknod is not allowed")),
    Probe("posix_reimport_restores_nothing",
          "import sys; del sys.modules['posix']; import posix", refused("importing 'posix' is not allowed")),
    Probe("posix_shared_memory", """
        from multiprocessing import shared_memory
        shared_memory.SharedMemory(create=True, size=4096)
        """, refused("is not allowed")),
    Probe("pidfd_open", "import os; os.pidfd_open(1)", refused("os.pidfd_open is not allowed")),
    Probe("pidfd_send_signal", "import signal; signal.pidfd_send_signal(0, 9)",
          refused("signal.pidfd_send_signal is not allowed")),
    Probe("memfd_create", "import os; os.memfd_create('x')", refused("os.memfd_create is not allowed")),
    Probe("fchmod_through_fd_on_venv_file", """
        import os
        fd = os.open('$VENV_FILE', os.O_RDONLY)
        os.fchmod(fd, 0o777)
        """, refused("outside the scratch folder", "FileNotFoundError", "Read-only")),
    Probe("ftruncate_through_fd", """
        import os
        fd = os.open('$VENV_FILE', os.O_RDONLY)
        os.truncate(fd, 0)
        """, refused("outside the scratch folder", "FileNotFoundError", "Invalid argument")),
    Probe("append_to_project_source_via_dir_fd", """
        import os
        os.makedirs('x/y/z', exist_ok=True); os.chdir('x/y/z')
        fd = os.open('$SCRATCH', os.O_RDONLY)
        os.open('../../$PROJECT/README.md', os.O_WRONLY | os.O_APPEND, dir_fd=fd)
        """, refused("PermissionError", "FileNotFoundError", "Read-only")),
    Probe("symlink_to_root_then_write", """
        import os
        os.symlink('/', 'rootlink')
        """, refused("symbolic links must point inside the scratch folder")),
    Probe("relative_symlink_climbing_out", "import os; os.symlink('../../../etc', 'up')",
          refused("symbolic links must point inside the scratch folder")),
    Probe("replace_code_of_kernel_function", """
        def f(): return 1
        def g(): return 2
        f.__code__ = g.__code__
        """, refused("replacing a function's __code__ is not allowed")),
    Probe("settrace_to_write_frame_locals", "import sys; sys.settrace(lambda *a: None)",
          refused("sys.settrace is not allowed")),
    Probe("tmp_and_dev_shm_read_only_at_os_level",
          "import os; print(os.access('/tmp', os.W_OK), os.access('/dev/shm', os.W_OK), os.access('/', os.W_OK))",
          prints("False False False"), OS),
    Probe("seccomp_and_no_new_privs_active", """
        status = dict(l.split(':', 1) for l in open('/proc/self/status'))
        print(status['Seccomp'].strip(), status['NoNewPrivs'].strip())
        """, prints("2 1"), OS),
    Probe("unprivileged_host_uid", """
        import os
        print(os.getuid() != 0 or open('/proc/self/uid_map').read().split()[1] != '0')
        """, prints("True"), OS),
    # --- 4. caps the parent enforces -------------------------------------------------------------
    Probe("fifty_mb_exception_message", "raise ValueError('x' * 50_000_000)",
          lambda r: (r.error is not None and len(r.error) <= 20_100 and "characters cut by the sandbox" in r.error)
          or pytest.fail(f"error of {len(r.error or '')} chars")),
    Probe("huge_final_answer_is_capped", "FINAL('y' * 3_000_000)",
          lambda r: (r.final_answer is not None and len(r.final_answer) <= 1_000_000)
          or pytest.fail(f"final of {len(r.final_answer or '')} chars")),
    Probe("lone_surrogate_print", "print('\\ud800 and \\udfff')",
          lambda r: (r.error is None and r.stdout.encode("utf-8") and "\ufffd" in r.stdout) or pytest.fail(repr(r))),
]


@pytest.fixture(scope="module", params=LAUNCHERS)
def box(request):
    with Sandbox("PROMPT-DOCUMENT", handler=echo, limits=limits(request.param)) as sb:
        sb.launcher_name = request.param
        yield sb


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_probe(box, probe):
    if box.launcher_name not in probe.where:
        pytest.skip(f"not claimed under {box.launcher_name!r} (docs/SANDBOX.md)")
    r = box.run_cell(_subst(probe.code, str(box.scratch)))
    probe.check(r)
    assert box.run_cell("print(len(prompt))").stdout == "15\n"  # the kernel is still serviceable


# ---- probes that need their own limits, a fresh kernel, or a look from the parent ----------

@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_metadata_changes_through_an_fd_leave_the_host_file_alone(tmp_path, launcher):
    victim = tmp_path / "victim.txt"
    victim.write_text("v")
    victim.chmod(0o644)
    os.utime(victim, (1_000_000, 1_000_000))
    open_it = f"import os\nfd = os.open({str(victim)!r}, os.O_RDONLY)\n"
    with Sandbox("p", handler=echo, limits=limits(launcher)) as sb:
        r1 = sb.run_cell(open_it + "os.fchmod(fd, 0o777)")
        r2 = sb.run_cell(open_it + "os.utime(fd, (0, 0))")
    assert r1.error is not None and r2.error is not None
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644 and victim.stat().st_mtime == 1_000_000


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_str_subclass_lying_about_len_never_reaches_the_handler(launcher):
    seen = []

    def handler(reqs):
        seen.extend(reqs)
        return [SubCallReply(text="ok") for _ in reqs]

    code = textwrap.dedent("""
        class Liar(str):
            def __len__(self):
                return 1
        try:
            sub_call(Liar('x' * 5000), Liar('do it'))
        except SubCallError as e:
            print('refused:', e)
        """)
    with Sandbox("p", handler=handler, limits=limits(launcher, max_subcall_chars=1000)) as sb:
        r = sb.run_cell(code)
    assert seen == [], "an oversized chunk reached the handler"
    assert "exceeds the sandbox cap of 1000" in r.stdout, r


LIFT_KERNEL_CAPS = """
import sys
f = sys._getframe()
while f is not None:  # find the kernel's link object and lift its own caps
    for v in list(f.f_locals.values()):
        link = getattr(v, 'link', v)
        if hasattr(link, 'max_request_chars'):
            link.max_request_chars = link.max_batch = 10 ** 12
    f = f.f_back
"""


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_huge_batch_is_refused_by_the_parent(launcher):
    seen = []

    def handler(reqs):
        seen.extend(reqs)
        return [SubCallReply(text="ok") for _ in reqs]

    ask = "try:\n    sub_call_batch(['a'] * 1000, 'i')\nexcept SubCallError as e:\n    print(e)"
    with Sandbox("p", handler=handler, limits=limits(launcher, max_batch=64)) as sb:
        honest = sb.run_cell(ask)
        sb.run_cell(LIFT_KERNEL_CAPS)
        forged = sb.run_cell(ask)
        ok = sb.run_cell("print(len(sub_call_batch(['a'] * 64, 'i')))")
    assert "exceeds the sandbox cap of 64" in honest.stdout, honest
    assert "exceeds the sandbox cap of 64" in forged.stdout, forged
    assert ok.stdout == "64\n" and len(seen) == 64


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_chunk_cap_holds_when_the_kernel_lifts_its_own(launcher):
    seen = []

    def handler(reqs):
        seen.extend(reqs)
        return [SubCallReply(text="ok") for _ in reqs]

    with Sandbox("p", handler=handler, limits=limits(launcher, max_subcall_chars=1000)) as sb:
        sb.run_cell(LIFT_KERNEL_CAPS)
        r = sb.run_cell("try:\n    sub_call('x' * 5000, 'i')\nexcept SubCallError as e:\n    print(e)")
    assert seen == [] and "exceeds the sandbox cap of 1000" in r.stdout, r


FORGE = """
import os, struct, sys
fd = int(sys.argv[2])  # the kernel's protocol fd, as an attacker finds it
payload = {payload}
os.write(fd, struct.pack('>cI', b'J', len(payload)) + payload[:1 << 16])
"""


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_forged_oversized_frame_costs_the_parent_nothing(launcher):
    """A JSON frame announcing ~100 MB of `[[],[],...]` (about 2 GB once decoded) is refused at its header."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Sandbox("p", handler=echo, limits=limits(launcher, cell_timeout_s=20)) as sb:
        r = sb.run_cell(FORGE.format(payload="b'[' + b'[],' * 33_000_000 + b'[]]'"))
        again = sb.run_cell("print(prompt)")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.restarted and r.kill_reason == "protocol" and not r.timed_out, r
    assert grown_mb < 300, f"the parent grew by {grown_mb:.0f} MB"
    assert again.stdout == "p\n"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_forged_byte_frame_and_notice_flood(launcher):
    with Sandbox("p", handler=echo, limits=limits(launcher)) as sb:
        r1 = sb.run_cell("import os, struct, sys\nos.write(int(sys.argv[2]), struct.pack('>cI', b'B', 3) + b'abc')")
        r2 = sb.run_cell(FORGE.format(payload="b'{\"t\":\"done\",\"cell\":2,\"notices\":[' + b'\"n\",' * 2000 + "
                                              "b'\"n\"]}'"))
    assert r1.restarted and r1.kill_reason == "protocol", r1
    assert len(r2.notices) <= 21 + 2 and all(len(n) <= 2100 for n in r2.notices), r2


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_prompt_replaced_through_the_frame_stack_is_restored(launcher):
    code = textwrap.dedent("""
        import sys
        f = sys._getframe()
        hits = 0
        while f is not None:
            for v in list(f.f_locals.values()):
                if hasattr(v, 'protected') and isinstance(getattr(v, 'protected'), dict):
                    v.protected['prompt'] = 'FORGED DOCUMENT'
                    v.ns['prompt'] = 'FORGED DOCUMENT'
                    hits += 1
            f = f.f_back
        print(hits > 0)
        """)
    with Sandbox("the real document", handler=echo, limits=limits(launcher)) as sb:
        attack = sb.run_cell(code)
        after = sb.run_cell("FINAL(prompt)")
    assert attack.stdout == "True\n", attack
    assert after.final_answer == "the real document"
    assert after.prompt_restored and any("restored" in n for n in after.notices), after


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_deep_unreadable_tree_is_removed_at_close(launcher):
    code = textwrap.dedent("""
        import os
        for i in range(1500):
            os.mkdir('d')
            os.chdir('d')
        open('leaf', 'w').write('x')
        os.chmod('.', 0)
        os.chdir('$SCRATCH')
        os.makedirs('locked/inner')
        os.chmod('locked', 0)
        print('ok')
        """)
    sb = Sandbox("p", handler=echo, limits=limits(launcher))
    scratch = sb.scratch
    r = sb.run_cell(_subst(code, str(scratch)))
    assert r.stdout == "ok\n", r
    sb.close()
    assert not scratch.exists()


@pytest.mark.parametrize("launcher", [p for p in LAUNCHERS if p.values[0] in OS])
def test_total_scratch_size_is_capped(launcher):
    code = textwrap.dedent("""
        written = 0
        try:
            for i in range(200):
                with open(f'f{i}', 'wb') as fh:
                    fh.write(b'x' * (1 << 20))
                written += 1
        except OSError as e:
            print('stopped', written, e.errno)
        """)
    with Sandbox("p", handler=echo, limits=limits(launcher, max_scratch_mb=32)) as sb:
        r = sb.run_cell(code)
        assert sb.isolation.scratch_quota_mb == 32
    assert r.stdout.startswith("stopped"), r
    assert int(r.stdout.split()[1]) <= 32


def test_lone_surrogates_never_break_saving_a_trajectory(tmp_path):
    with Sandbox("p", handler=echo, limits=SandboxLimits(cell_timeout_s=30)) as sb:
        r = sb.run_cell("import sys\nprint('\\ud800')\nsys.stderr.write('\\udc80')\nFINAL('\\ud83d')")
    traj = Trajectory(run_id="x", question="q\ud800", doc_chars=1, doc_sha256="0", config={}, config_hash="0",
                      models={}, versions={}, started_at="now")
    traj.cells.append(CellRecord(index=0, turn=0, code="print('\ud800')", stdout=r.stdout, stderr=r.stderr,
                                 final_answer=r.final_answer))
    traj.final_answer = "answer \udfff"  # even a string that bypassed the sandbox
    path = traj.save(tmp_path / "t.json")
    back = Trajectory.load(path)
    assert "\ufffd" in back.cells[0].stdout and back.final_answer == "answer \ufffd"


def test_isolation_report_under_bwrap_says_what_holds():
    if plan_for("bwrap", network=False) is None:
        pytest.skip("bubblewrap does not work here")
    with Sandbox("p", handler=echo, limits=SandboxLimits(launcher="bwrap", max_scratch_mb=64)) as sb:
        iso = sb.isolation
    assert iso.host_uid not in (0, None) or iso.user_namespace
    assert iso.seccomp and iso.no_new_privs and iso.proc_readonly and iso.readonly_root
    assert iso.scratch_noexec and iso.scratch_quota_mb == 64
    assert iso.hidden_paths and iso.visible_paths == []
    assert "seccomp" in iso.summary()
    assert os.environ.get("HOME", "") not in iso.as_dict()["visible_paths"]


def test_glob_of_dynload_found():
    """Guards the probes above against passing for the wrong reason (no .so to load)."""
    assert glob.glob(str(LIB_DYNLOAD / "_posixsubprocess*.so")) or "_posixsubprocess" in sys.builtin_module_names
    assert glob.glob(str(LIB_DYNLOAD / "_json*.so"))
    assert GOLD.exists()


def test_rig_refuses_before_starting_anything_when_no_allowed_launcher_works(monkeypatch, tmp_path):
    """The CLI path: as root without bubblewrap, Rig.start fails first with what to install (exit 2 in the CLI)."""
    import rlm_rig.repl.launch as launch
    from rlm_rig.configs.load import load_config
    from rlm_rig.controller.rig import Rig
    from rlm_rig.repl.types import SandboxError

    monkeypatch.setattr(launch, "is_root", lambda: True)
    for name in ("bwrap", "unshare"):
        monkeypatch.setitem(launch._plan_cache, launch.plan_key(name, False), None)
        monkeypatch.setitem(launch._plan_errors, launch.plan_key(name, False), "disabled by the test")
    cfg = load_config("cpu-tiny")
    rig = Rig(cfg, run_dir=tmp_path / "run")
    with pytest.raises(SandboxError, match="apt-get install bubblewrap.*allow_weak_launchers"):
        rig.check_sandbox()
    allowed = load_config("cpu-tiny", overrides=["sandbox.allow_weak_launchers=true"])
    if plan_for("none", network=False) is None:  # even asked for, root needs a uid drop (issue 20)
        with pytest.raises(SandboxError, match="must switch to an unprivileged uid"):
            Rig(allowed, run_dir=tmp_path / "run2").check_sandbox()
        return
    Rig(allowed, run_dir=tmp_path / "run2").check_sandbox()  # asked for explicitly: accepted


def test_probe_targets_exist_on_the_host() -> None:
    """A 'hidden' probe is only meaningful if the file is really there outside the sandbox."""
    assert GOLD.is_file() and (PROJECT / "README.md").is_file()


# ---- issue 20: the OS layers against an owned kernel, per-kernel uids, what outlives a rig -------
OWNED_HOOK = """
def _owned_hook():
    # a refused write leaves the audit hook's frame in the traceback; its helper's closure cell
    # holding the scratch prefix is writable: pure Python, no native code
    try:
        open('/owned-hook-probe', 'w')
    except PermissionError as exc:
        tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == 'hook':
            helper = tb.tb_frame.f_locals['inside']
            helper.__closure__[helper.__code__.co_freevars.index('prefix')].cell_contents = '/'
            return True
        tb = tb.tb_next
    return False
"""


@pytest.mark.parametrize("launcher", [p for p in LAUNCHERS if p.values[0] in OS])
def test_a_hook_bypassed_in_pure_python_still_cannot_write_the_host(launcher, tmp_path):
    target = tmp_path / "written-by-the-kernel"
    tmp_path.chmod(0o777)
    with Sandbox("doc", handler=echo, limits=limits(launcher)) as sb:
        r = sb.run_cell(OWNED_HOOK + f"print(_owned_hook())\nopen({str(target)!r}, 'w').write('x')")
    assert r.stdout.startswith("True"), r  # the hook is not a boundary ...
    assert r.error is not None and not target.exists(), r  # ... the mounts are


@pytest.mark.parametrize("launcher", [p for p in LAUNCHERS if p.values[0] in OS])
def test_socket_families_outside_the_network_namespace_are_refused_by_the_os(launcher):
    code = textwrap.dedent("""
        import socket
        out = []
        for fam, kind in ((socket.AF_VSOCK, socket.SOCK_STREAM), (socket.AF_PACKET, socket.SOCK_RAW),
                          (socket.AF_NETLINK, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_STREAM)):
            try:
                socket.socket(fam, kind).close(); out.append('ok')
            except OSError as exc:
                out.append(exc.errno)
        print(out)
        """)
    # network=True: the hook lets sockets through, so only seccomp stands in the way
    with Sandbox("doc", handler=echo, limits=limits(launcher, network=True)) as sb:
        r = sb.run_cell(code)
    assert r.stdout.strip() == "[1, 1, 1, 'ok']", r  # EPERM for vsock, packet, netlink


@pytest.mark.parametrize("launcher", [p for p in LAUNCHERS if p.values[0] in OS])
def test_a_process_start_without_audit_event_is_refused_by_the_os(launcher):
    pytest.importorskip("uvloop")
    code = textwrap.dedent("""
        import threading, types
        types.coroutine = lambda f: f
        import asyncio, uvloop
        result = []
        def run():
            loop = uvloop.new_event_loop()
            async def go():
                proc = await asyncio.create_subprocess_exec('/bin/true')  # libuv's spawn: no audit event
                return await proc.wait()
            try:
                result.append(loop.run_until_complete(go()))
            except BaseException as exc:
                result.append(f'{type(exc).__name__}: {exc}')
        th = threading.Thread(target=run); th.start(); th.join()
        print(result)
        """)
    with Sandbox("doc", handler=echo, limits=limits(launcher)) as sb:
        r = sb.run_cell(code)
    if "No module named 'uvloop'" in (r.error or ""):
        pytest.skip("uvloop is not importable by the kernel's interpreter")
    assert "Operation not permitted" in r.stdout + (r.error or ""), r


@pytest.mark.parametrize("launcher", [p for p in LAUNCHERS if p.values[0] in OS])
def test_user_xattrs_cannot_grow_scratch_past_its_cap(launcher):
    with Sandbox("doc", handler=echo, limits=limits(launcher)) as sb:
        r = sb.run_cell("import os\nopen('f', 'w').close()\nos.setxattr('f', 'user.pad', b'x' * 60000)")
    assert r.error is not None and "Operation not permitted" in r.error, r


@pytest.mark.parametrize("launcher", [p for p in LAUNCHERS if p.values[0] in OS])
def test_host_identity_is_not_readable(launcher):
    code = textwrap.dedent("""
        import os
        def rd(p):
            with open(p) as f: return f.read()
        print(os.uname().nodename, repr(rd('/proc/cmdline')), rd('/proc/sys/kernel/random/boot_id').strip(),
              rd('/proc/loadavg').split()[0], '--ro-bind' in rd('/proc/1/cmdline'), oct(os.stat('/etc').st_mode)[-3:],
              len(rd('/etc/ld.so.cache')) > 0 if False else os.access('/etc/localtime', os.R_OK))
        """)
    with Sandbox("doc", handler=echo, limits=limits(launcher)) as sb:
        r = sb.run_cell(code)
    assert r.stdout.split() == ["sandbox", "''", "00000000-0000-0000-0000-000000000000", "0.00", "False", "755",
                                "True"], r


@pytest.mark.skipif(os.geteuid() != 0, reason="a uid per kernel needs a root parent")
def test_each_kernel_runs_under_its_own_uid_and_cannot_reach_anothers_scratch():
    lim = limits("bwrap")
    hold = ("import threading\nev = threading.Event()\nts = [threading.Thread(target=ev.wait) for _ in range(100)]\n"
            "[t.start() for t in ts]\nprint(len(ts))")
    with Sandbox("a", handler=echo, limits=lim) as a, Sandbox("b", handler=echo, limits=lim) as b, \
            Sandbox("c", handler=echo, limits=lim) as c:
        uids = {a.isolation.host_uid, b.isolation.host_uid, c.isolation.host_uid}
        assert len(uids) == 3 and uids.isdisjoint({0, 65534}), uids
        a.run_cell("open('note.txt', 'w').write('private to a')")
        r = b.run_cell(f"import os\nprint(os.path.exists({str(a.scratch / 'note.txt')!r}))")
        assert r.stdout == "False\n", r
        # RLIMIT_NPROC counts the tasks of a uid: two kernels holding threads must not starve a third
        assert a.run_cell(hold).stdout == "100\n" and b.run_cell(hold).stdout == "100\n"
        r = c.run_cell("import threading\nts = [threading.Thread(target=lambda: None) for _ in range(70)]\n"
                       "[t.start() for t in ts]; [t.join() for t in ts]; print('ok')")
        assert r.stdout == "ok\n", r
        a.run_cell("ev.set()")
        b.run_cell("ev.set()")


def _owner(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


RIG = textwrap.dedent("""
    import json, sys
    from rlm_rig.repl.sandbox import Sandbox
    from rlm_rig.repl.types import SandboxLimits
    sb = Sandbox('doc', handler=lambda r: [], limits=SandboxLimits(launcher=sys.argv[1], cell_timeout_s=120))
    k = sb._kernel
    print(json.dumps({'scratch': str(sb.scratch), 'jail': [str(d) for d in (k.jail.dirs if k.jail else [])],
                      'pid': k.proc.pid}), flush=True)
    sb.run_cell('import time\\nwhile True: time.sleep(0.05)')
    """)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_nothing_outlives_a_rig_killed_with_sigkill(launcher):
    import json
    import signal
    import subprocess
    import time

    def processes_of(uid: int) -> list[str]:
        return [e for e in os.listdir("/proc") if e.isdigit() and _owner(f"/proc/{e}") == uid]

    rig = subprocess.Popen([sys.executable, "-c", RIG, launcher], stdout=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONPATH=str(PROJECT)))
    info = json.loads(rig.stdout.readline())
    uid = int(Path(f"/proc/{info['pid']}/status").read_text().split("Uid:")[1].split()[0])
    time.sleep(0.5)
    rig.send_signal(signal.SIGKILL)
    rig.wait()
    left = []
    for _ in range(100):  # the janitor acts within moments; 10 s is generous
        left = [p for p in (info["scratch"], *info["jail"]) if os.path.lexists(p)]
        if not left and not (uid != 0 and processes_of(uid)):
            break
        time.sleep(0.1)
    assert not left, left
    assert uid == 0 or not processes_of(uid)


@pytest.mark.parametrize("launcher", [p for p in LAUNCHERS if p.values[0] in OS])
def test_no_symlink_in_a_callers_scratch_folder_even_with_the_hook_bypassed(launcher, tmp_path):
    """A caller-supplied scratch folder is a host folder the caller reads afterwards: a link in it to a
    root-only file would hand that file to the caller's reads."""
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    scratch = tmp_path / "scratch"
    with Sandbox("doc", handler=echo, limits=limits(launcher), scratch_dir=scratch) as sb:
        r = sb.run_cell(OWNED_HOOK + f"print(_owned_hook())\nimport os\nos.symlink({str(secret)!r}, 'link')")
    assert r.stdout.startswith("True") and "Operation not permitted" in (r.error or ""), r
    assert not os.path.lexists(scratch / "link")
