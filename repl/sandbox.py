"""Sandbox: one confined kernel process per run, holding `prompt`, state kept across cells.

The parent side never trusts the kernel: every wait has a deadline, every buffer a cap, every
message is validated, and whatever goes wrong inside a cell comes back as a CellResult (with
`restarted`, `kill_reason` and `notices` for the trajectory) instead of an exception.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from . import cleanup
from .cgroup import CgroupJail
from .channel import KernelGone, KernelProcess
from .launch import KERNEL_DIR, UNPRIVILEGED_UID, LauncherRefused, Plan, choose_plans, kernel_env, kernel_stage_hex, \
    nproc_limit, prepare_scratch, scratch_prefix
from .scratch import ScratchMount, remove_tree
from .uids import UidLease, kill_uid
from .context import ContextError, PackedContext, pack_context
from .text import clean_text, clip, decode_blob
from .types import CellResult, IsolationReport, SandboxError, SandboxLimits, SubCallHandler, SubCallReply, \
    SubCallRequest, ToolHandler

FRAME_OVERHEAD = 1 << 20
JSON_FRAME_BASE = 64 * 1024  # the small JSON part of a kernel message (see _kernel/wire.py)
CGROUP_MEMORY_HEADROOM = 256 * 2**20  # RLIMIT_AS should trip first, as a readable MemoryError
NOTICE_CHARS = 2000


def _ns_id(kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return None


DIALECT_NAMES = {"rig": "`prompt`, sub_call, sub_call_batch, FINAL and FINAL_VAR",
                 "official": "`context`, llm_query, llm_query_batched, rlm_query, rlm_query_batched and SHOW_VARS"}


def _restart_notice(reason: str, dialect: str = "rig") -> str:
    why = {
        "timeout": "the cell ran past its time limit",
        "memory": "the kernel was killed for using too much memory",
        "exit": "the code ended the kernel process (os._exit or similar)",
        "crash": "the kernel crashed (e.g. a segmentation fault)",
        "protocol": "the code broke the kernel's link to the controller",
    }.get(reason, reason)
    return (f"The REPL kernel was restarted because {why}. All variables, imports and functions from "
            f"earlier cells are LOST; {DIALECT_NAMES.get(dialect, DIALECT_NAMES['rig'])} are available "
            "again, and files in the scratch folder were kept.")


def _plans(lim: SandboxLimits) -> tuple[list[Plan], list[str]]:
    cleanup.ensure_started()  # the janitor for this process, and leftovers of dead rigs removed
    try:
        return choose_plans(lim.launcher, network=lim.network, allow_weak=lim.allow_weak_launchers)
    except LauncherRefused as exc:
        raise SandboxError(f"could not start the REPL kernel; {exc}") from None


def _lease(plan: Plan) -> UidLease | None:
    """A uid of its own for a kernel that drops root (uids.py); None where the plan keeps the user's uid."""
    if not plan.drop_uid:
        return None
    try:
        return UidLease.acquire()
    except OSError as exc:
        raise SandboxError(f"could not lease a kernel uid: {exc}") from None


def _uid(lease: UidLease | None) -> int:
    return lease.uid if lease is not None else UNPRIVILEGED_UID


def spawn_kernel(lim: SandboxLimits, plan: Plan, scratch: Path, holder: ScratchMount | None,
                 uid: int = UNPRIVILEGED_UID) -> KernelProcess:
    """Start a confined kernel process; it waits for its config and prompt on the pipe."""
    max_frame = 4 * max(lim.max_output_chars, lim.max_subcall_chars, lim.max_tool_chars) + FRAME_OVERHEAD
    max_message = 4 * (lim.max_subcall_chars + 3 * lim.max_output_chars) + FRAME_OVERHEAD
    jail = CgroupJail.create(lim.max_tasks, lim.memory_mb * 2**20 + CGROUP_MEMORY_HEADROOM) if lim.cgroup else None
    try:
        return KernelProcess(plan=plan, scratch=scratch, network=lim.network, max_frame=max_frame,
                             max_json=JSON_FRAME_BASE + 256 * lim.max_batch, max_blobs=8 * lim.max_batch + 8192,
                             max_message_bytes=max_message, raw_cap=lim.max_output_chars, jail=jail,
                             holder=holder if plan.scratch_tmpfs else None, uid=uid)
    except OSError as exc:
        raise SandboxError(f"cannot spawn: {exc}") from None


def _new_scratch(plan: Plan, lim: SandboxLimits, uid: int) -> tuple[Path, ScratchMount | None]:
    """The kernel's folder `<tmp>/rlm-repl-<pid>-XXXX/k`: the parent folder is root's (0711), so a
    kernel that owns `k` still cannot rename it away (in the sticky temp folder it could rename a
    folder it owns, and close() would then miss it). Removed whole with `_owned_root`."""
    root = Path(tempfile.mkdtemp(prefix=scratch_prefix())).resolve()
    os.chmod(root, 0o711)
    scratch = root / "k"
    scratch.mkdir(mode=0o700)
    try:
        return scratch, prepare_scratch(scratch, plan, size_mb=lim.max_scratch_mb, uid=uid)
    except OSError:
        return scratch, None


def _owned_root(scratch: Path) -> Path:
    """The folder to remove for a scratch folder made by `_new_scratch`."""
    return scratch.parent


def _probe_paths(scratch: Path) -> list[str]:
    """A few host files the kernel should NOT see: the home folder's, the project's, the cwd's."""
    out: list[str] = []
    project = KERNEL_DIR.parents[1]
    candidates = [project / "pyproject.toml", project / "README.md", project / "configs"]
    for folder in (Path.home(), Path.cwd()):
        try:
            candidates += sorted(folder.iterdir())[:3]
        except OSError:
            pass
    for path in candidates:
        text = str(path)
        if path.exists() and not text.startswith(str(scratch)) and text not in out:
            out.append(text)
    return out[:12]


def _visible_to_kernel(kernel: KernelProcess, paths: list[str]) -> list[str]:
    """Which of `paths` exist in the kernel's filesystem view, checked by the parent through
    /proc/<pid>/root. Why here: the kernel never learns the names (they were in its start-up
    config once, and model code could read them there), and its answer would be a claim."""
    from .channel import descendants

    pids = [kernel.proc.pid, *descendants(kernel.proc.pid)]
    root = Path(f"/proc/{pids[-1]}/root")
    try:
        os.stat(root / ".")
    except OSError:
        return []  # cannot look (another user's kernel): nothing claimed either way
    return [p for p in paths if os.path.lexists(str(root) + p)]


def _host_uid_of_kernel(kernel: KernelProcess) -> int | None:
    """The deepest live descendant is the Python kernel: its real uid as the host sees it."""
    from .channel import descendants

    pids = [kernel.proc.pid, *descendants(kernel.proc.pid)]
    for pid in reversed(pids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Uid:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


class PreparedKernel:
    """A kernel spawned ahead of time, idle until a Sandbox hands it a prompt.

    Spawning (namespaces, a fresh interpreter) is most of a kernel's start-up; an eval that prepares
    the next kernel while the current example runs hides it. Unused ones must be discarded.
    """

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits if limits is not None else SandboxLimits()
        plans, self.notes = _plans(self.limits)
        self.plan = plans[0]
        self.launcher = self.plan.launcher
        self.lease = _lease(self.plan)
        self.scratch, self.holder = _new_scratch(self.plan, self.limits, _uid(self.lease))
        self._lock = threading.Lock()
        try:
            self._kernel: KernelProcess | None = spawn_kernel(self.limits, self.plan, self.scratch, self.holder,
                                                              _uid(self.lease))
        except SandboxError:
            self._drop_scratch()
            raise

    def take(self) -> KernelProcess | None:
        """The kernel, once; None if it already died or was taken."""
        with self._lock:
            k, self._kernel = self._kernel, None
        if k is not None and k.proc.poll() is not None:
            k.kill()
            return None
        return k

    def _drop_scratch(self) -> None:
        if self.holder is not None:
            self.holder.close()
        remove_tree(_owned_root(self.scratch))
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def discard(self) -> None:
        k = self.take()
        if k is not None:
            k.kill()
        self._drop_scratch()


class Sandbox:
    """A confined Python REPL for model-written code. Use as a context manager or call close()."""

    # long: argument checks, then the scratch folder chosen three ways, each rolled back on failure
    def __init__(self, prompt: "str | list | dict | PackedContext", *, handler: SubCallHandler,
                 limits: SandboxLimits | None = None, scratch_dir: Path | str | None = None,
                 extra_globals: dict | None = None, prepared: "PreparedKernel | None" = None, dialect: str = "rig",
                 tools: dict[str, str] | None = None, tool_handler: ToolHandler | None = None) -> None:
        """``prompt``: the document, a str or a list / dict (repl/context.py), or one packed already.
        ``dialect``: "rig" or "official" (which names the kernel offers). ``tools``: name -> docstring of
        the custom tools, each call going to ``tool_handler`` in this process."""
        try:
            packed = prompt if isinstance(prompt, PackedContext) else pack_context(prompt)
        except ContextError as exc:
            raise TypeError(f"Sandbox: prompt must be a str, or a list / dict context: {exc}") from None
        if dialect not in DIALECT_NAMES:
            raise ValueError(f"Sandbox: dialect must be one of {sorted(DIALECT_NAMES)}, got {dialect!r}")
        if tools and not callable(tool_handler):
            raise TypeError("Sandbox: tools need a tool_handler ((name, args, kwargs) -> SubCallReply)")
        self.dialect = dialect
        self.tools = dict(tools or {})
        self.tool_handler = tool_handler
        self.packed = packed
        if not callable(handler):
            raise TypeError("Sandbox: handler must be callable (list[SubCallRequest] -> list[SubCallReply])")
        self.limits = limits if limits is not None else SandboxLimits()
        if not isinstance(self.limits, SandboxLimits):
            raise TypeError(f"Sandbox: limits must be a SandboxLimits, got {type(self.limits).__name__}")
        self.handler = handler
        # JSON-able names set next to `prompt` at every kernel start (e.g. the chunk budget), so a
        # restart after a timeout brings them back too.
        self.extra_globals = dict(extra_globals or {})
        if prepared is not None and (prepared.limits != self.limits or scratch_dir is not None):
            prepared.discard()  # spawned for other limits: not usable here
            prepared = None
        self._owns_scratch = scratch_dir is None
        self._holder: ScratchMount | None = None
        self._lease: UidLease | None = None
        self._lock = threading.RLock()
        self._kernel: KernelProcess | None = None
        self._closed = False
        self.scratch = Path(tempfile.gettempdir())  # replaced below; close() needs it set
        self._owns_scratch = False
        try:
            self._plans, self._plan_notes = _plans(self.limits)
            if prepared is not None:
                self.scratch, self._holder = prepared.scratch, prepared.holder
                self._lease, prepared.lease = prepared.lease, None
                self._owns_scratch = True
            elif scratch_dir is None:
                self._lease = _lease(self._plans[0])
                self.scratch, self._holder = _new_scratch(self._plans[0], self.limits, _uid(self._lease))
                self._owns_scratch = True
            else:  # a caller's folder stays on the host, so the caller can read it afterwards (no quota)
                self._lease = _lease(self._plans[0])
                self.scratch = Path(scratch_dir).resolve()
                self.scratch.mkdir(parents=True, exist_ok=True)
                prepare_scratch(self.scratch, dataclasses.replace(self._plans[0], scratch_tmpfs=False), size_mb=1,
                                uid=_uid(self._lease))
        except BaseException:
            self._closed = True
            if self._lease is not None:
                self._lease.release()
            raise
        self._prompt = packed.flat  # the caller's str: bytes are made only while they are sent (no second copy)
        self._prompt_chars = len(packed.flat)
        self._fresh_kernel = False  # no model code has run in the current kernel yet
        self._cell_seq = 0
        self._nonces: list[str] = []
        self.kernel_starts = 0
        self.isolation: IsolationReport | None = None
        self.startup_s: float | None = None  # wall time of the last kernel start, for bench/
        try:
            if prepared is None or not self._adopt(prepared):
                self._start()
        except BaseException:
            self.close()
            raise

    def _next_nonce(self) -> str:
        """128 random bits per cell from the OS, drawn 64 cells at a time (one getrandom call); not a
        seeded Mersenne Twister, whose state a kernel that reads 312 nonces could rebuild."""
        if not self._nonces:
            pool = os.urandom(16 * 64).hex()
            self._nonces = [pool[i:i + 32] for i in range(0, len(pool), 32)]
        return self._nonces.pop()

    @property
    def _prompt_bytes(self) -> bytes:
        return self._prompt.encode("utf-8", "surrogatepass")

    def scratch_view(self) -> Path:
        """Where the parent can read the scratch folder (inside the holder's namespace when there is one)."""
        return self._holder.view() if self._holder is not None else self.scratch

    def _adopt(self, prepared: "PreparedKernel") -> bool:
        """Finish a kernel spawned ahead of time: only the prompt hand-over is left to wait for."""
        t0 = time.monotonic()
        kernel = prepared.take()
        if kernel is None:
            return False
        try:
            facts = self._handshake(kernel)
        except SandboxError:
            return False
        self._kernel = kernel
        self.startup_s = time.monotonic() - t0
        self.kernel_starts += 1
        self._fresh_kernel = True
        self.isolation = self._report(kernel, facts, prepared.notes)
        return True

    # ---- kernel lifetime ---------------------------------------------------------------------
    def _start(self) -> None:
        errors = []
        for plan in self._plans:
            t0 = time.monotonic()
            try:
                kernel, facts = self._start_with(plan)
            except SandboxError as exc:
                errors.append(f"{plan.launcher}: {exc}")
                continue
            self._kernel = kernel
            self.startup_s = time.monotonic() - t0
            self.kernel_starts += 1
            self._fresh_kernel = True
            self.isolation = self._report(kernel, facts, self._plan_notes + [f"fell back from {e}" for e in errors])
            return
        raise SandboxError("could not start the REPL kernel; tried " + "; ".join(errors))

    def _start_with(self, plan: Plan) -> tuple[KernelProcess, dict]:
        if self._holder is not None and plan.scratch_tmpfs and not self._holder.alive():
            raise SandboxError("the scratch holder process is gone")
        kernel = spawn_kernel(self.limits, plan, self.scratch, self._holder, _uid(self._lease))
        return kernel, self._handshake(kernel)

    def _handshake(self, kernel: KernelProcess) -> dict:
        """Send the config and the prompt; wait for the kernel's ready message (with its isolation facts)."""
        lim = self.limits
        cfg = {"t": "init", "scratch": str(self.scratch), "memory_mb": lim.memory_mb, "max_file_mb": lim.max_file_mb,
               "nproc": nproc_limit(kernel.plan, _uid(self._lease)), "recursion_limit": lim.recursion_limit, "network": lim.network,
               "max_output_chars": lim.max_output_chars, "max_subcall_chars": lim.max_subcall_chars,
               "max_batch": lim.max_batch, "allow_ctypes": lim.allow_ctypes, "globals": self.extra_globals,
               "dialect": self.dialect, "tools": self.tools, "layout": self.packed.layout(),
               "max_tool_chars": lim.max_tool_chars, "seccomp": kernel_stage_hex(kernel.plan.launcher, lim.network)}
        deadline = time.monotonic() + lim.startup_timeout_s
        try:
            kernel.queue_json(cfg)
            kernel.queue_bytes(self._prompt_bytes)
            if not kernel.flush(deadline):
                raise KernelGone("timeout", "loading the prompt took too long")
            msg = kernel.next_message(deadline)
            if msg is None:
                raise KernelGone("timeout", f"no ready message within {lim.startup_timeout_s}s")
            if msg.get("t") != "ready" or msg.get("prompt_chars") != self._prompt_chars:
                raise KernelGone("protocol", f"unexpected first message {str(msg)[:200]}")
        except KernelGone as exc:
            kernel.kill()
            tail = bytes(kernel.raw_tail).decode("utf-8", "replace").strip()
            raise SandboxError(f"{exc}; kernel output: {tail[-2000:] or '<none>'}") from None
        kernel.take_raw()
        return msg.get("facts") if isinstance(msg.get("facts"), dict) else {}

    def _report(self, kernel: KernelProcess, facts: dict, notes: list[str]) -> IsolationReport:
        """The isolation report; a malformed fact (a forged `ready`) gives a report that claims nothing."""
        try:
            return self._report_from(kernel, facts, notes)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            return IsolationReport(
                launcher=kernel.plan.launcher, pid_namespace=False, network_namespace=False, readonly_root=False,
                capabilities_dropped=False, user_namespace=False, audit_hook=True, env_scrubbed=False, rlimits={},
                kernel_uid=-1, host_uid=_host_uid_of_kernel(kernel),
                notes=list(notes) + [f"the kernel's start-up facts were malformed ({type(exc).__name__}); "
                                     "nothing is claimed about its isolation"])

    def _report_from(self, kernel: KernelProcess, facts: dict, notes: list[str]) -> IsolationReport:
        allowed_env = set(kernel_env(self.scratch))
        env_keys = facts.get("env_keys") or []
        ifaces = facts.get("ifaces") or []
        mount = facts.get("scratch_mount") if isinstance(facts.get("scratch_mount"), dict) else {}
        quota = None
        if mount.get("fstype") == "tmpfs" and mount.get("point") == str(self.scratch):
            for opt in mount.get("super") or []:
                if isinstance(opt, str) and opt.startswith("size="):
                    value = opt[5:]
                    mult = {"k": 1 / 1024, "m": 1, "g": 1024}.get(value[-1:].lower(), 1 / 2**20)
                    try:
                        quota = int(float(value.rstrip("kKmMgG")) * mult)
                    except ValueError:
                        quota = None
        visible = _visible_to_kernel(kernel, _probe_paths(self.scratch))
        notes = list(notes)
        if self._owns_scratch and kernel.plan.scratch_tmpfs and self._holder is None:
            notes.append("the scratch tmpfs could not be mounted: scratch is a host folder without a total quota")
        report = IsolationReport(
            launcher=kernel.plan.launcher,
            pid_namespace=bool(facts.get("pid_ns")) and facts.get("pid_ns") != _ns_id("pid"),
            network_namespace=(bool(facts.get("net_ns")) and facts.get("net_ns") != _ns_id("net")
                               and set(ifaces) <= {"lo"}),
            readonly_root=facts.get("root_ro") is True,
            capabilities_dropped=facts.get("cap_eff") == 0,
            user_namespace=bool(facts.get("user_ns")) and facts.get("user_ns") != _ns_id("user"),
            audit_hook=True,
            env_scrubbed=set(env_keys) <= allowed_env | {"PWD", "SHLVL", "_"},
            rlimits={k: int(v) for k, v in (facts.get("rlimits") or {}).items() if isinstance(v, int)},
            kernel_uid=facts["uid"] if type(facts.get("uid")) is int else -1,
            cgroup=kernel.jail.describe() if kernel.jail is not None else None,
            notes=notes,
            host_uid=_host_uid_of_kernel(kernel),
            seccomp=facts.get("seccomp") == "2",
            no_new_privs=facts.get("no_new_privs") == "1",
            proc_readonly=facts.get("proc_sys_writable") is False,
            scratch_quota_mb=quota,
            scratch_noexec="noexec" in (mount.get("opts") or []),
            hidden_paths=not visible,
            visible_paths=visible,
        )
        if report.host_uid == 0:
            report.notes.append("the kernel runs as root on the host (uid 0): only the layers above protect "
                                "root-owned files")
        return report

    def _restart(self, reason: str, notices: list[str]) -> None:
        if self._kernel is not None:
            self._kernel.kill()
            self._kernel = None
        if self._lease is not None:  # nothing of the old kernel may wait for the new one's pipes
            kill_uid(self._lease.uid)
        notices.append(_restart_notice(reason, self.dialect))
        self._start()  # SandboxError propagates: the kernel cannot even be started

    # ---- cells -------------------------------------------------------------------------------
    def run_cell(self, code: str) -> CellResult:
        """Run one cell. Never raises for anything the code does; SandboxError only if no kernel can start."""
        if not isinstance(code, str):
            raise TypeError(f"run_cell: code must be a str, got {type(code).__name__}")
        with self._lock:
            if self._closed:
                raise SandboxError("run_cell on a closed Sandbox")
            t0 = time.monotonic()
            try:
                result = self._run_cell(code, t0)
            except SandboxError:
                raise
            except (KeyboardInterrupt, SystemExit):
                # Raised by the handler or the user mid-cell: the kernel may be waiting for a
                # reply that will never come, so it is dropped; the next cell gets a fresh one.
                if self._kernel is not None:
                    self._kernel.kill()
                    self._kernel = None
                raise
            except Exception as exc:  # a bug of ours: still contain it, and say so
                notices: list[str] = []
                self._restart("crash", notices)
                result = CellResult(stdout="", stderr="", error=f"internal sandbox error: "
                                    f"{type(exc).__name__}: {exc}\n", duration_s=time.monotonic() - t0,
                                    restarted=True, kill_reason="crash", notices=notices)
            return result

    # long: the cell's message loop, one branch per message kind (sub_call, tool call, done), each bounded
    def _run_cell(self, code: str, t0: float) -> CellResult:
        if self._kernel is None:
            self._start()
        kernel = self._kernel
        assert kernel is not None
        lim = self.limits
        self._cell_seq += 1
        seq = self._cell_seq
        # A fresh nonce per cell: a frame that does not carry it (a thread of an earlier cell, bytes
        # written between cells, a forgery) is a protocol violation, never this cell's result.
        nonce = self._next_nonce()
        fresh = self._fresh_kernel
        self._fresh_kernel = False
        kernel.take_raw()  # output left by background threads between cells is not this cell's
        kernel.begin_cell(lim.max_cell_frames, lim.max_cell_read_mb * 2**20)
        kernel.queue_json({"t": "run", "cell": seq, "n": nonce, "code": code})
        deadline = t0 + lim.cell_timeout_s
        # Parent CPU is counted from the cell's second request on and checked from its third: one or two
        # messages are bounded by their size caps anyway, and a cell with no or one sub_call then never
        # reads the CPU clock (a system call, not a vDSO read like the deadline's monotonic clock).
        requests = 0
        cpu0 = None
        handler_cpu = 0.0
        sub_calls = 0
        notices: list[str] = []
        try:
            while True:
                msg = kernel.next_message(deadline)
                if msg is None or time.monotonic() > deadline:  # decoding counts against the deadline too
                    return self._timed_out(kernel, t0, notices, sub_calls)
                if msg.get("n") != nonce:
                    raise KernelGone("protocol", f"a {clean_text(str(msg.get('t')))[:40]!r} frame without this "
                                     "cell's nonce (a thread of an earlier cell, or a forgery)")
                kind = msg.get("t")
                if kind == "done" and msg.get("cell") == seq:
                    return self._finish(msg, kernel, t0, sub_calls, code, fresh)
                if kind not in ("sub", "tool"):
                    raise KernelGone("protocol", f"unexpected {clean_text(str(kind))[:40]!r} frame")
                requests += 1
                if cpu0 is not None and time.thread_time() - cpu0 - handler_cpu > lim.max_parent_cpu_s:
                    raise KernelGone("budget", f"the kernel's frames cost the parent more than "
                                     f"{lim.max_parent_cpu_s:g}s of CPU in one cell")
                if requests == 2:
                    cpu0 = time.thread_time()
                if kernel.unsent_bytes:  # legit code reads each reply before it asks again
                    raise KernelGone("protocol", f"a new {kind} request before the last reply was read")
                if kind == "sub":
                    reply, n, spent, spent_cpu = self._handle_sub(msg, deadline, count_cpu=cpu0 is not None)
                else:
                    (reply, spent, spent_cpu), n = self._handle_tool(msg, deadline), 0
                if cpu0 is not None:
                    handler_cpu += spent_cpu
                if not lim.timeout_includes_subcalls:
                    deadline += spent  # only the handler's own time, never the parent's decoding
                if reply is None or time.monotonic() > deadline:
                    return self._timed_out(kernel, t0, notices, sub_calls)
                sub_calls += n
                reply["n"] = nonce
                kernel.queue_json(reply)
        except KernelGone as gone:
            return self._kernel_gone(kernel, gone, t0, notices, sub_calls, fresh)

    def _kernel_gone(self, kernel: KernelProcess, gone: KernelGone, t0: float, notices: list[str], sub_calls: int,
                     fresh: bool) -> CellResult:
        """The kernel died or broke the protocol or a budget: replace it, and say why in the cell."""
        raw, _ = kernel.take_raw()
        if gone.reason in ("protocol", "budget"):
            reason = gone.reason
        else:
            reason = kernel.exit_reason() or "protocol"
        detail = {"protocol": f"the kernel broke the protocol ({clean_text(gone.detail)[:300]})",
                  "budget": f"the kernel exceeded a parent-side budget ({clean_text(gone.detail)[:300]})",
                  "exit": "the kernel process exited", "memory": "the kernel was killed (SIGKILL), "
                  "most likely for exceeding the memory limit", "crash": "the kernel crashed"}[reason]
        if reason == "exit" and kernel.proc.returncode is not None:
            detail += f" with status {kernel.proc.returncode}"
        self._restart(reason, notices)
        return CellResult(stdout="", stderr=raw, error=f"KernelDied: {detail}\n",
                          duration_s=time.monotonic() - t0, restarted=True, kill_reason=reason,
                          notices=notices, sub_calls=sub_calls,
                          prompt_integrity="verified" if fresh else "claimed")

    def _timed_out(self, kernel: KernelProcess, t0: float, notices: list[str], sub_calls: int) -> CellResult:
        lim = self.limits
        raw, _ = kernel.take_raw()
        self._restart("timeout", notices)
        notices.insert(0, f"The cell was stopped after {lim.cell_timeout_s:g}s (time limit).")
        return CellResult(stdout="", stderr=raw, error=f"TimeoutError: the cell exceeded the "
                          f"{lim.cell_timeout_s:g}s time limit and was killed\n",
                          duration_s=time.monotonic() - t0, timed_out=True, restarted=True,
                          kill_reason="timeout", notices=notices, sub_calls=sub_calls)

    def _handle_sub(self, msg: dict, deadline: float, count_cpu: bool = True) -> tuple[dict | None, int, float, float]:
        """Validate and cap a sub_call message by the parent's own count, then run the handler.

        Returns (reply, requests sent to the handler, handler wall time, handler CPU time); the
        reply is None when decoding the request ran past the cell's deadline. Only the handler's
        own time may be credited back to the cell: refusing a request is the kernel's cost.
        """
        lim = self.limits
        call_id = msg.get("id") if type(msg.get("id")) is int else None
        reqs_raw = msg.get("reqs")
        blobs = msg.get("_blobs") or []

        def refuse(text: str, _n: int) -> tuple[dict, int, float, float]:
            # one error for the whole request, whatever its size: a refusal must cost the parent no
            # more than the request did (an error per request was a 60x amplifier)
            return {"t": "subr", "id": call_id, "refused": text}, 0, 0.0, 0.0

        if not isinstance(reqs_raw, list) or not reqs_raw:
            return {"t": "subr", "id": call_id, "replies": []}, 0, 0.0, 0.0
        kind, model = msg.get("kind", "llm"), msg.get("model")
        if kind not in ("llm", "rlm") or not (model is None or (isinstance(model, str) and len(model) <= 200)):
            return refuse("malformed sub_call request (kind or model)", len(reqs_raw))
        if len(reqs_raw) > lim.max_batch:
            return refuse(f"sub_call_batch of {len(reqs_raw)} requests exceeds the sandbox cap of {lim.max_batch} "
                          "per batch; split it into smaller batches", len(reqs_raw))
        if len(blobs) != 2 * len(reqs_raw):
            return refuse("malformed sub_call request", len(reqs_raw))
        if sum(len(b) for b in blobs) > 4 * lim.max_subcall_chars:  # more bytes than the cap's chars can take
            return refuse(f"sub_call payload exceeds the sandbox cap of {lim.max_subcall_chars} chars; "
                          "send smaller chunks", len(reqs_raw))
        # the parent's own count of the characters it received, not the kernel's len()
        texts = [decode_blob(b) for b in blobs]
        if time.monotonic() > deadline:
            return None, 0, 0.0, 0.0
        total = sum(len(t) for t in texts)
        if total > lim.max_subcall_chars:
            return refuse(f"sub_call payload of {total} chars exceeds the sandbox cap of {lim.max_subcall_chars}; "
                          "send smaller chunks", len(reqs_raw))
        reqs: list[SubCallRequest] = []
        for i, r in enumerate(reqs_raw):
            index = r.get("index") if isinstance(r, dict) else "bad"
            if not (index is None or type(index) is int):
                return refuse("malformed sub_call request", len(reqs_raw))
            reqs.append(SubCallRequest(chunk=texts[2 * i], instruction=texts[2 * i + 1], index_in_batch=index,
                                       kind=kind, model=clean_text(model) if model is not None else None))
        del texts, blobs
        msg.pop("_blobs", None)
        out, spent, spent_cpu = self._call_handler(reqs, count_cpu)
        return {"t": "subr", "id": call_id, "replies": out}, len(reqs), spent, spent_cpu

    def _handle_tool(self, msg: dict, deadline: float) -> tuple[dict | None, float, float]:
        """Validate one custom tool call by the parent's own count and run it: (reply, wall time, CPU time).

        The arguments arrive as one attached blob of JSON text (capped before it is decoded, as a
        sub_call's chunk is); the result goes back as JSON text, capped by the same limit."""
        lim = self.limits
        call_id = msg.get("id") if type(msg.get("id")) is int else None
        name = msg.get("name")
        blobs = msg.get("_blobs") or []
        msg.pop("_blobs", None)

        def refuse(text: str) -> tuple[dict, float, float]:
            return {"t": "toolr", "id": call_id, "error": text}, 0.0, 0.0

        if not isinstance(name, str) or name not in self.tools or self.tool_handler is None:
            return refuse(f"no custom tool named {clean_text(str(name))[:60]!r} in this run")
        if len(blobs) != 1 or len(blobs[0]) > 4 * lim.max_tool_chars:
            return refuse(f"{name}: malformed call, or arguments over the sandbox cap of {lim.max_tool_chars} chars")
        text = decode_blob(blobs[0])
        if len(text) > lim.max_tool_chars:
            return refuse(f"{name}: arguments of {len(text)} JSON characters exceed the cap of {lim.max_tool_chars}")
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            return refuse(f"{name}: the arguments are not valid JSON")
        if time.monotonic() > deadline:
            return None, 0.0, 0.0
        args, kwargs = (payload.get("args"), payload.get("kwargs")) if isinstance(payload, dict) else (None, None)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return refuse(f"{name}: malformed call (args must be a list, kwargs a dict)")
        h0, c0 = time.monotonic(), time.thread_time()
        try:
            rep = self.tool_handler(name, args, kwargs)
            result, err = getattr(rep, "text", None), getattr(rep, "error", None)
        except Exception as exc:  # the handler's failure is the model's ToolError, not ours
            result, err = None, f"{type(exc).__name__}: {exc}"
        spent, spent_cpu = time.monotonic() - h0, time.thread_time() - c0
        if err is None and (not isinstance(result, str) or len(result) > lim.max_tool_chars):
            err = f"{name}: the result is over the cap of {lim.max_tool_chars} JSON characters"
        if err is not None:
            return {"t": "toolr", "id": call_id, "error": str(err)[:lim.max_error_chars]}, spent, spent_cpu
        return {"t": "toolr", "id": call_id, "result": result}, spent, spent_cpu

    def _call_handler(self, reqs: list[SubCallRequest], count_cpu: bool = True) -> tuple[list[dict], float, float]:
        """The controller's handler on validated requests: replies, its wall time and its CPU time
        (0 unless `count_cpu`: the cell's CPU budget is not counting yet)."""
        h0, c0 = time.monotonic(), time.thread_time() if count_cpu else 0.0
        try:
            replies = self.handler(reqs)
            if not isinstance(replies, list) or len(replies) != len(reqs):
                raise TypeError(f"the sub_call handler returned {type(replies).__name__} of the wrong length "
                                f"(expected a list of {len(reqs)} SubCallReply)")
            out = []
            for rep in replies:
                text, err = getattr(rep, "text", None), getattr(rep, "error", None)
                if not isinstance(rep, SubCallReply) and not (hasattr(rep, "text") and hasattr(rep, "error")):
                    err = f"handler returned {type(rep).__name__}, not SubCallReply"
                    text = None
                out.append({"text": text if isinstance(text, str) else None,
                            "error": None if err is None else str(err)})
        except Exception as exc:  # the handler's failure is the model's SubCallError, not ours
            out = [{"text": None, "error": f"{type(exc).__name__}: {exc}"}] * len(reqs)
        return out, time.monotonic() - h0, time.thread_time() - c0 if count_cpu else 0.0

    def _finish(self, msg: dict, kernel: KernelProcess, t0: float, sub_calls: int, code: str,
                fresh: bool) -> CellResult:
        """Build the CellResult, enforcing every cap here: the kernel's own caps are not trusted."""
        lim = self.limits
        cap = lim.max_output_chars
        keys = msg.get("blob_keys")
        blobs = msg.get("_blobs") or []
        fields: dict[str, str] = {}
        if isinstance(keys, list) and len(keys) == len(blobs):
            for key, data in zip(keys, blobs):
                if key in ("stdout", "stderr", "error", "final") and key not in fields:
                    # a character is at most 4 bytes: never decode more than the cap can keep (a
                    # forged 90 MB of invalid bytes would otherwise become a 4-byte-per-char str)
                    limit = 4 * (lim.max_error_chars if key == "error" else cap)
                    if len(data) > 2 * limit and key == "error":  # the head and the tail are kept
                        text = decode_blob(data[:limit]) + "\n[...]\n" + decode_blob(data[-limit:])
                    else:
                        text = decode_blob(data[:limit] if len(data) > limit else data)
                    fields[key] = text
        stdout, stderr = fields.get("stdout", ""), fields.get("stderr", "")
        raw, raw_dropped = kernel.take_raw()
        if raw:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + raw
        dropped = msg.get("dropped") if type(msg.get("dropped")) is int else 0
        dropped = min(max(dropped, 0), 1 << 62)  # a claim: a huge int must not break str() below
        dropped += raw_dropped
        truncated = bool(msg.get("truncated")) or raw_dropped > 0
        if len(stdout) + len(stderr) > cap:
            truncated = True
            dropped += len(stdout) + len(stderr) - cap
            stdout = stdout[:cap]
            stderr = stderr[:max(0, cap - len(stdout))]
        raw_notices = msg.get("notices") if isinstance(msg.get("notices"), list) else []
        notices = [clip(clean_text(n), NOTICE_CHARS)[0] for n in raw_notices[:lim.max_notices] if isinstance(n, str)]
        if len(raw_notices) > lim.max_notices:
            notices.append(f"{len(raw_notices) - lim.max_notices} further notices were dropped by the sandbox.")
        if truncated:
            notices.append(f"Output exceeded max_output_chars={cap}; {max(dropped, 0)} further characters "
                           "were dropped.")
        error = fields.get("error")
        if error is not None:
            error, cut = clip(error, lim.max_error_chars)
            if cut:
                notices.append(f"The error message was cut to max_error_chars={lim.max_error_chars} "
                               f"({cut} characters dropped).")
        final = fields.get("final")
        if final is not None and len(final) > cap:
            final = final[:cap]
        restored = msg.get("prompt_restored") is True
        final_var = msg.get("final_var") if isinstance(msg.get("final_var"), str) else None
        return CellResult(stdout=stdout, stderr=stderr, error=error, duration_s=time.monotonic() - t0,
                          notices=notices, final_answer=final, output_truncated=truncated,
                          sub_calls=sub_calls, prompt_restored=restored,
                          prompt_integrity="violated" if restored else (
                              "verified" if fresh else "claimed"),
                          # a FINAL the kernel executed is what the kernel chose to report: even a literal of the
                          # cell's code is picked by code the kernel may have rewritten (probe: a patched decoder)
                          final_integrity=None if final is None else "claimed",
                          final_var=clean_text(final_var)[:200] if final is not None and final_var else None)

    # ---- misc --------------------------------------------------------------------------------
    def restart(self) -> None:
        """Drop all state and reload `prompt` (for a controller that wants a clean REPL)."""
        with self._lock:
            self._restart("a restart was requested", [])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._kernel is not None:
                self._kernel.kill()
                self._kernel = None
            if self._lease is not None:  # every process of the kernel's uid: setsid'd, double-forked, ...
                if self._plans[0].launcher != "bwrap":  # it shared the host's temp folders: what it left there
                    kill_uid(self._lease.uid)
                    cleanup.remove_owned_by(self._lease.uid)
                self._lease.release()
                self._lease = None
            if self._holder is not None:
                self._holder.close()  # the tmpfs goes with its namespace, whatever is in it
                self._holder = None
            if self._owns_scratch:
                remove_tree(_owned_root(self.scratch))

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave a kernel behind
        try:
            self.close()
        except Exception:
            pass

