"""Sandbox: one confined kernel process per run, holding `prompt`, state kept across cells.

The parent side never trusts the kernel: every wait has a deadline, every buffer a cap, every
message is validated, and whatever goes wrong inside a cell comes back as a CellResult (with
`restarted`, `kill_reason` and `notices` for the trajectory) instead of an exception.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path

from .cgroup import CgroupJail
from .channel import KernelGone, KernelProcess
from .launch import KERNEL_DIR, LauncherRefused, Plan, choose_plans, kernel_env, nproc_limit, prepare_scratch
from .scratch import ScratchMount, remove_tree
from .text import clean_text, clip, decode_blob
from .types import CellResult, IsolationReport, SandboxError, SandboxLimits, SubCallHandler, SubCallReply, \
    SubCallRequest

FRAME_OVERHEAD = 1 << 20
JSON_FRAME_BASE = 64 * 1024  # the small JSON part of a kernel message (see _kernel/wire.py)
CGROUP_MEMORY_HEADROOM = 256 * 2**20  # RLIMIT_AS should trip first, as a readable MemoryError
NOTICE_CHARS = 2000


def _ns_id(kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return None


def _restart_notice(reason: str) -> str:
    why = {
        "timeout": "the cell ran past its time limit",
        "memory": "the kernel was killed for using too much memory",
        "exit": "the code ended the kernel process (os._exit or similar)",
        "crash": "the kernel crashed (e.g. a segmentation fault)",
        "protocol": "the code broke the kernel's link to the controller",
    }.get(reason, reason)
    return (f"The REPL kernel was restarted because {why}. All variables, imports and functions from "
            "earlier cells are LOST; `prompt`, sub_call, sub_call_batch, FINAL and FINAL_VAR are available "
            "again, and files in the scratch folder were kept.")


def _plans(lim: SandboxLimits) -> tuple[list[Plan], list[str]]:
    try:
        return choose_plans(lim.launcher, network=lim.network, allow_weak=lim.allow_weak_launchers)
    except LauncherRefused as exc:
        raise SandboxError(f"could not start the REPL kernel; {exc}") from None


def spawn_kernel(lim: SandboxLimits, plan: Plan, scratch: Path, holder: ScratchMount | None) -> KernelProcess:
    """Start a confined kernel process; it waits for its config and prompt on the pipe."""
    max_frame = 4 * max(lim.max_output_chars, lim.max_subcall_chars) + FRAME_OVERHEAD
    max_message = 4 * (lim.max_subcall_chars + 3 * lim.max_output_chars) + FRAME_OVERHEAD
    jail = CgroupJail.create(lim.max_tasks, lim.memory_mb * 2**20 + CGROUP_MEMORY_HEADROOM) if lim.cgroup else None
    try:
        return KernelProcess(plan=plan, scratch=scratch, network=lim.network, max_frame=max_frame,
                             max_json=JSON_FRAME_BASE + 256 * lim.max_batch, max_blobs=8 * lim.max_batch + 8192,
                             max_message_bytes=max_message, raw_cap=lim.max_output_chars, jail=jail,
                             holder=holder if plan.scratch_tmpfs else None)
    except OSError as exc:
        raise SandboxError(f"cannot spawn: {exc}") from None


def _new_scratch(plan: Plan, lim: SandboxLimits) -> tuple[Path, ScratchMount | None]:
    scratch = Path(tempfile.mkdtemp(prefix="rlm-repl-")).resolve()
    try:
        return scratch, prepare_scratch(scratch, plan, size_mb=lim.max_scratch_mb)
    except OSError:
        return scratch, None


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
        self.scratch, self.holder = _new_scratch(self.plan, self.limits)
        self._lock = threading.Lock()
        try:
            self._kernel: KernelProcess | None = spawn_kernel(self.limits, self.plan, self.scratch, self.holder)
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
        remove_tree(self.scratch)

    def discard(self) -> None:
        k = self.take()
        if k is not None:
            k.kill()
        self._drop_scratch()


class Sandbox:
    """A confined Python REPL for model-written code. Use as a context manager or call close()."""

    def __init__(self, prompt: str, *, handler: SubCallHandler, limits: SandboxLimits | None = None,
                 scratch_dir: Path | str | None = None, extra_globals: dict | None = None,
                 prepared: "PreparedKernel | None" = None) -> None:
        if not isinstance(prompt, str):
            raise TypeError(f"Sandbox: prompt must be a str, got {type(prompt).__name__}")
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
        self._lock = threading.RLock()
        self._kernel: KernelProcess | None = None
        self._closed = False
        self.scratch = Path(tempfile.gettempdir())  # replaced below; close() needs it set
        self._owns_scratch = False
        try:
            self._plans, self._plan_notes = _plans(self.limits)
            if prepared is not None:
                self.scratch, self._holder = prepared.scratch, prepared.holder
                self._owns_scratch = True
            elif scratch_dir is None:
                self.scratch, self._holder = _new_scratch(self._plans[0], self.limits)
                self._owns_scratch = True
            else:  # a caller's folder stays on the host, so the caller can read it afterwards (no quota)
                self.scratch = Path(scratch_dir).resolve()
                self.scratch.mkdir(parents=True, exist_ok=True)
                prepare_scratch(self.scratch, dataclasses.replace(self._plans[0], scratch_tmpfs=False), size_mb=1)
        except BaseException:
            self._closed = True
            raise
        self._prompt = prompt  # the caller's str: bytes are made only while they are sent (no second copy)
        self._prompt_chars = len(prompt)
        self._prompt_sha: str | None = None  # computed the first time the kernel's copy differs
        self._cell_seq = 0
        self.kernel_starts = 0
        self.isolation: IsolationReport | None = None
        self.startup_s: float | None = None  # wall time of the last kernel start, for bench/
        try:
            if prepared is None or not self._adopt(prepared):
                self._start()
        except BaseException:
            self.close()
            raise

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
            self.isolation = self._report(kernel, facts, self._plan_notes + [f"fell back from {e}" for e in errors])
            return
        raise SandboxError("could not start the REPL kernel; tried " + "; ".join(errors))

    def _start_with(self, plan: Plan) -> tuple[KernelProcess, dict]:
        if self._holder is not None and plan.scratch_tmpfs and not self._holder.alive():
            raise SandboxError("the scratch holder process is gone")
        kernel = spawn_kernel(self.limits, plan, self.scratch, self._holder)
        return kernel, self._handshake(kernel)

    def _handshake(self, kernel: KernelProcess) -> dict:
        """Send the config and the prompt; wait for the kernel's ready message (with its isolation facts)."""
        lim = self.limits
        cfg = {"t": "init", "scratch": str(self.scratch), "memory_mb": lim.memory_mb, "max_file_mb": lim.max_file_mb,
               "nproc": nproc_limit(kernel.plan), "recursion_limit": lim.recursion_limit, "network": lim.network,
               "max_output_chars": lim.max_output_chars, "max_subcall_chars": lim.max_subcall_chars,
               "max_batch": lim.max_batch, "allow_ctypes": lim.allow_ctypes, "globals": self.extra_globals,
               "probe_paths": _probe_paths(self.scratch)}
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
        visible = [p for p in (facts.get("visible") or []) if isinstance(p, str)]
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
            kernel_uid=int(facts.get("uid", -1)),
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
        notices.append(_restart_notice(reason))
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

    def _run_cell(self, code: str, t0: float) -> CellResult:
        if self._kernel is None:
            self._start()
        kernel = self._kernel
        assert kernel is not None
        lim = self.limits
        self._cell_seq += 1
        seq = self._cell_seq
        kernel.take_raw()  # output left by background threads between cells is not this cell's
        kernel.queue_json({"t": "run", "cell": seq, "code": code})
        deadline = t0 + lim.cell_timeout_s
        sub_calls = 0
        notices: list[str] = []
        restored = False
        try:
            while True:
                msg = kernel.next_message(deadline)
                if msg is None or time.monotonic() > deadline:  # decoding counts against the deadline too
                    return self._timed_out(kernel, t0, notices, sub_calls)
                kind = msg.get("t")
                if kind == "sub":
                    h0 = time.monotonic()
                    reply, n = self._handle_sub(msg, deadline)
                    if reply is None:
                        return self._timed_out(kernel, t0, notices, sub_calls)
                    sub_calls += n
                    if not lim.timeout_includes_subcalls:
                        deadline += time.monotonic() - h0
                    kernel.queue_json(reply)
                elif kind == "pcheck":
                    if self._prompt_intact(msg):
                        kernel.queue_json({"t": "pok"})
                    else:
                        kernel.queue_bytes(self._prompt_bytes)
                        restored = True
                elif kind == "done" and msg.get("cell") == seq:
                    result = self._finish(msg, kernel, t0, sub_calls)
                    result.prompt_restored = restored or msg.get("prompt_restored") is True
                    return result
                # anything else (stale or forged frames) is ignored
        except KernelGone as gone:
            raw, _ = kernel.take_raw()
            if gone.reason == "protocol":
                reason = "protocol"
            else:
                reason = kernel.exit_reason() or "protocol"
            detail = {"protocol": f"the kernel broke the protocol ({clean_text(gone.detail)[:300]})",
                      "exit": "the kernel process exited", "memory": "the kernel was killed (SIGKILL), "
                      "most likely for exceeding the memory limit", "crash": "the kernel crashed"}[reason]
            if reason == "exit" and kernel.proc.returncode is not None:
                detail += f" with status {kernel.proc.returncode}"
            self._restart(reason, notices)
            return CellResult(stdout="", stderr=raw, error=f"KernelDied: {detail}\n",
                              duration_s=time.monotonic() - t0, restarted=True, kill_reason=reason,
                              notices=notices, sub_calls=sub_calls, prompt_restored=restored)

    def _timed_out(self, kernel: KernelProcess, t0: float, notices: list[str], sub_calls: int) -> CellResult:
        lim = self.limits
        raw, _ = kernel.take_raw()
        self._restart("timeout", notices)
        notices.insert(0, f"The cell was stopped after {lim.cell_timeout_s:g}s (time limit).")
        return CellResult(stdout="", stderr=raw, error=f"TimeoutError: the cell exceeded the "
                          f"{lim.cell_timeout_s:g}s time limit and was killed\n",
                          duration_s=time.monotonic() - t0, timed_out=True, restarted=True,
                          kill_reason="timeout", notices=notices, sub_calls=sub_calls)

    def _prompt_intact(self, msg: dict) -> bool:
        """The kernel's copy of `prompt` (its length and SHA-256, as reported) against the parent's document."""
        if self._prompt_sha is None:
            self._prompt_sha = hashlib.sha256(self._prompt_bytes).hexdigest()
        return msg.get("plen") == self._prompt_chars and msg.get("psha") == self._prompt_sha

    def _handle_sub(self, msg: dict, deadline: float) -> tuple[dict | None, int]:
        """Validate and cap a sub_call message by the parent's own count, then run the handler.

        Returns (None, 0) when decoding the request ran past the cell's deadline.
        """
        lim = self.limits
        call_id = msg.get("id") if type(msg.get("id")) is int else None
        reqs_raw = msg.get("reqs")
        blobs = msg.get("_blobs") or []

        def refuse(text: str, n: int) -> tuple[dict, int]:
            return {"t": "subr", "id": call_id, "replies": [{"text": None, "error": text}] * n}, 0

        if not isinstance(reqs_raw, list) or not reqs_raw:
            return {"t": "subr", "id": call_id, "replies": []}, 0
        if len(reqs_raw) > lim.max_batch:
            return refuse(f"sub_call_batch of {len(reqs_raw)} requests exceeds the sandbox cap of {lim.max_batch} "
                          "per batch; split it into smaller batches", len(reqs_raw))
        if len(blobs) != 2 * len(reqs_raw):
            return refuse("malformed sub_call request", len(reqs_raw))
        # the parent's own count of the characters it received, not the kernel's len()
        texts = [decode_blob(b) for b in blobs]
        if time.monotonic() > deadline:
            return None, 0
        total = sum(len(t) for t in texts)
        if total > lim.max_subcall_chars:
            return refuse(f"sub_call payload of {total} chars exceeds the sandbox cap of {lim.max_subcall_chars}; "
                          "send smaller chunks", len(reqs_raw))
        reqs: list[SubCallRequest] = []
        for i, r in enumerate(reqs_raw):
            index = r.get("index") if isinstance(r, dict) else "bad"
            if not (index is None or type(index) is int):
                return refuse("malformed sub_call request", len(reqs_raw))
            reqs.append(SubCallRequest(chunk=texts[2 * i], instruction=texts[2 * i + 1], index_in_batch=index))
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
        return {"t": "subr", "id": call_id, "replies": out}, len(reqs)

    def _finish(self, msg: dict, kernel: KernelProcess, t0: float, sub_calls: int) -> CellResult:
        """Build the CellResult, enforcing every cap here: the kernel's own caps are not trusted."""
        lim = self.limits
        cap = lim.max_output_chars
        keys = msg.get("blob_keys")
        blobs = msg.get("_blobs") or []
        fields: dict[str, str] = {}
        if isinstance(keys, list) and len(keys) == len(blobs):
            for key, data in zip(keys, blobs):
                if key in ("stdout", "stderr", "error", "final") and key not in fields:
                    fields[key] = decode_blob(data)
        stdout, stderr = fields.get("stdout", ""), fields.get("stderr", "")
        raw, raw_dropped = kernel.take_raw()
        if raw:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + raw
        dropped = msg.get("dropped") if type(msg.get("dropped")) is int else 0
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
        return CellResult(stdout=stdout, stderr=stderr, error=error, duration_s=time.monotonic() - t0,
                          notices=notices, final_answer=final, output_truncated=truncated,
                          sub_calls=sub_calls)

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
            if self._holder is not None:
                self._holder.close()  # the tmpfs goes with its namespace, whatever is in it
                self._holder = None
            if self._owns_scratch:
                remove_tree(self.scratch)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave a kernel behind
        try:
            self.close()
        except Exception:
            pass

