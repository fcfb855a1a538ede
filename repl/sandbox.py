"""Sandbox: one confined kernel process per run, holding `prompt`, state kept across cells.

The parent side never trusts the kernel: every wait has a deadline, every buffer a cap, every
message is validated, and whatever goes wrong inside a cell comes back as a CellResult (with
`restarted`, `kill_reason` and `notices` for the trajectory) instead of an exception.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .cgroup import CgroupJail
from .channel import KernelGone, KernelProcess
from .launch import choose_launcher, kernel_env, nproc_limit
from .types import CellResult, IsolationReport, SandboxError, SandboxLimits, SubCallHandler, SubCallReply, \
    SubCallRequest

FRAME_OVERHEAD = 1 << 20
CGROUP_MEMORY_HEADROOM = 256 * 2**20  # RLIMIT_AS should trip first, as a readable MemoryError


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


def spawn_kernel(lim: SandboxLimits, launcher: str, scratch: Path) -> KernelProcess:
    """Start a confined kernel process; it waits for its config and prompt on the pipe."""
    max_frame = 8 * max(lim.max_output_chars, lim.max_subcall_chars) + FRAME_OVERHEAD
    jail = CgroupJail.create(lim.max_tasks, lim.memory_mb * 2**20 + CGROUP_MEMORY_HEADROOM) if lim.cgroup else None
    try:
        return KernelProcess(launcher=launcher, scratch=scratch, network=lim.network, max_frame=max_frame,
                             raw_cap=lim.max_output_chars, jail=jail)
    except OSError as exc:
        raise SandboxError(f"cannot spawn: {exc}") from None


class PreparedKernel:
    """A kernel spawned ahead of time, idle until a Sandbox hands it a prompt.

    Spawning (namespaces, a fresh interpreter) is most of a kernel's start-up; an eval that prepares
    the next kernel while the current example runs hides it. Unused ones must be discarded.
    """

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits if limits is not None else SandboxLimits()
        self.launcher = choose_launcher(self.limits.launcher, network=self.limits.network)[0]
        self.scratch = Path(tempfile.mkdtemp(prefix="rlm-repl-")).resolve()
        self._lock = threading.Lock()
        try:
            self._kernel: KernelProcess | None = spawn_kernel(self.limits, self.launcher, self.scratch)
        except SandboxError:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise

    def take(self) -> KernelProcess | None:
        """The kernel, once; None if it already died or was taken."""
        with self._lock:
            k, self._kernel = self._kernel, None
        if k is not None and k.proc.poll() is not None:
            k.kill()
            return None
        return k

    def discard(self) -> None:
        k = self.take()
        if k is not None:
            k.kill()
        shutil.rmtree(self.scratch, ignore_errors=True)


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
        if prepared is not None:
            self.scratch = prepared.scratch
        elif scratch_dir is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="rlm-repl-")).resolve()
        else:
            self.scratch = Path(scratch_dir).resolve()
            self.scratch.mkdir(parents=True, exist_ok=True)
        self._prompt_bytes = prompt.encode("utf-8", "surrogatepass")
        self._prompt_chars = len(prompt)
        self._lock = threading.RLock()
        self._kernel: KernelProcess | None = None
        self._cell_seq = 0
        self._closed = False
        self.kernel_starts = 0
        self.isolation: IsolationReport | None = None
        self.startup_s: float | None = None  # wall time of the last kernel start, for bench/
        try:
            if prepared is None or not self._adopt(prepared):
                self._start()
        except BaseException:
            self.close()
            raise

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
        self.isolation = self._report(prepared.launcher, facts, [])
        self.isolation.cgroup = kernel.jail.describe() if kernel.jail is not None else None
        return True

    # ---- kernel lifetime ---------------------------------------------------------------------
    def _start(self) -> None:
        errors = []
        candidates = choose_launcher(self.limits.launcher, network=self.limits.network)
        for launcher in candidates:
            t0 = time.monotonic()
            try:
                kernel, facts = self._start_with(launcher)
            except SandboxError as exc:
                errors.append(f"{launcher}: {exc}")
                continue
            self._kernel = kernel
            self.startup_s = time.monotonic() - t0
            self.kernel_starts += 1
            self.isolation = self._report(launcher, facts, errors)
            self.isolation.cgroup = kernel.jail.describe() if kernel.jail is not None else None
            return
        raise SandboxError("could not start the REPL kernel; tried " + "; ".join(errors))

    def _start_with(self, launcher: str) -> tuple[KernelProcess, dict]:
        kernel = spawn_kernel(self.limits, launcher, self.scratch)
        return kernel, self._handshake(kernel)

    def _handshake(self, kernel: KernelProcess) -> dict:
        """Send the config and the prompt; wait for the kernel's ready message (with its isolation facts)."""
        lim = self.limits
        cfg = {"t": "init", "scratch": str(self.scratch), "memory_mb": lim.memory_mb, "max_file_mb": lim.max_file_mb,
               "nproc": nproc_limit(), "recursion_limit": lim.recursion_limit, "network": lim.network,
               "max_output_chars": lim.max_output_chars, "max_subcall_chars": lim.max_subcall_chars,
               "allow_ctypes": lim.allow_ctypes, "globals": self.extra_globals}
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

    def _report(self, launcher: str, facts: dict, errors: list[str]) -> IsolationReport:
        allowed_env = set(kernel_env(self.scratch))
        env_keys = facts.get("env_keys") or []
        ifaces = facts.get("ifaces") or []
        notes = [f"fell back from {e}" for e in errors]
        return IsolationReport(
            launcher=launcher,
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
            notes=notes,
        )

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
        try:
            while True:
                msg = kernel.next_message(deadline)
                if msg is None:
                    raw, _ = kernel.take_raw()
                    self._restart("timeout", notices)
                    notices.insert(0, f"The cell was stopped after {lim.cell_timeout_s:g}s (time limit).")
                    return CellResult(stdout="", stderr=raw, error=f"TimeoutError: the cell exceeded the "
                                      f"{lim.cell_timeout_s:g}s time limit and was killed\n",
                                      duration_s=time.monotonic() - t0, timed_out=True, restarted=True,
                                      kill_reason="timeout", notices=notices, sub_calls=sub_calls)
                kind = msg.get("t")
                if kind == "sub":
                    h0 = time.monotonic()
                    reply, n = self._handle_sub(msg)
                    sub_calls += n
                    if not lim.timeout_includes_subcalls:
                        deadline += time.monotonic() - h0
                    kernel.queue_json(reply)
                elif kind == "done" and msg.get("cell") == seq:
                    return self._finish(msg, kernel, t0, sub_calls)
                # anything else (stale or forged frames) is ignored
        except KernelGone as gone:
            raw, _ = kernel.take_raw()
            if gone.reason == "protocol":
                reason = "protocol"
            else:
                reason = kernel.exit_reason() or "protocol"
            detail = {"protocol": f"the kernel broke the protocol ({gone.detail})",
                      "exit": "the kernel process exited", "memory": "the kernel was killed (SIGKILL), "
                      "most likely for exceeding the memory limit", "crash": "the kernel crashed"}[reason]
            if reason == "exit" and kernel.proc.returncode is not None:
                detail += f" with status {kernel.proc.returncode}"
            self._restart(reason, notices)
            return CellResult(stdout="", stderr=raw, error=f"KernelDied: {detail}\n",
                              duration_s=time.monotonic() - t0, restarted=True, kill_reason=reason,
                              notices=notices, sub_calls=sub_calls)

    def _handle_sub(self, msg: dict) -> tuple[dict, int]:
        call_id = msg.get("id")
        reqs_raw = msg.get("reqs")
        if not isinstance(reqs_raw, list) or not reqs_raw:
            return {"t": "subr", "id": call_id, "replies": []}, 0
        reqs: list[SubCallRequest] = []
        for r in reqs_raw:
            ok = (isinstance(r, dict) and isinstance(r.get("chunk"), str) and isinstance(r.get("instruction"), str)
                  and (r.get("index") is None or isinstance(r.get("index"), int)))
            if not ok:
                bad = {"text": None, "error": "malformed sub_call request"}
                return {"t": "subr", "id": call_id, "replies": [bad] * len(reqs_raw)}, 0
            reqs.append(SubCallRequest(chunk=r["chunk"], instruction=r["instruction"],
                                       index_in_batch=r.get("index")))
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
        cap = self.limits.max_output_chars

        def text(key: str) -> str:
            value = msg.get(key)
            return value if isinstance(value, str) else ""

        stdout, stderr = text("stdout"), text("stderr")
        raw, raw_dropped = kernel.take_raw()
        if raw:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + raw
        dropped = msg.get("dropped") if isinstance(msg.get("dropped"), int) else 0
        dropped += raw_dropped
        truncated = bool(msg.get("truncated")) or raw_dropped > 0
        if len(stdout) + len(stderr) > cap:  # the kernel's own cap is not trusted
            truncated = True
            dropped += len(stdout) + len(stderr) - cap
            stdout = stdout[:cap]
            stderr = stderr[:max(0, cap - len(stdout))]
        notices = [n for n in (msg.get("notices") or []) if isinstance(n, str)][:20]
        if truncated:
            notices.append(f"Output exceeded max_output_chars={cap}; {max(dropped, 0)} further characters "
                           "were dropped.")
        error = msg.get("error") if isinstance(msg.get("error"), str) else None
        final = msg.get("final") if isinstance(msg.get("final"), str) else None
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
            if self._owns_scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave a kernel behind
        try:
            self.close()
        except Exception:
            pass

