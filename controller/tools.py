"""Custom tools: trusted functions of the parent that model code calls from the sandbox.

A profile names them (``rlm.tools: {name: "module:function"}``). Each runs HERE, outside the
sandbox, reached over the kernel's protocol pipe like a sub_call (repl/sandbox.py checks the
call's size, the kernel's nonce and JSON); this module imports them, runs one call under a
timeout, turns the result into capped JSON text and records the call in the trajectory.
"""
from __future__ import annotations

import importlib
import inspect
import json
import keyword
import math
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the tool child imports this module: it stays light (no pydantic at boot)
    from rlm_rig.records.trajectory import Trajectory
    from rlm_rig.repl.types import SubCallReply

# The tool child's address-space cap (RLIMIT_AS): a tool fed hostile sizes fails with MemoryError, not the host.
CHILD_MEMORY_BYTES = 8 << 30
BOOT_TIMEOUT_S = 60.0  # starting the child (python and this module): apart from the call's own timeout

# Names the kernel's dialects own: a tool may not shadow them.
RESERVED = frozenset({"prompt", "sub_call", "sub_call_batch", "FINAL", "FINAL_VAR", "SubCallError", "context",
                      "context_0", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched", "SHOW_VARS",
                      "answer", "history", "CHUNK_BUDGET_CHARS", "question"})


class ToolImportError(ValueError):
    """A tool named in the profile cannot be used (bad name, cannot be imported, not callable)."""


def check_tool_name(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise ValueError(f"tool name {name!r} is not a plain Python identifier")
    if name in RESERVED:
        raise ValueError(f"tool name {name!r} is a name the REPL already uses")
    return name


def import_tool(name: str, ref: str) -> Callable[..., Any]:
    """``module:function`` (dots allowed on both sides) -> the callable, or ToolImportError (one line)."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ToolImportError(f"rlm.tools.{name}: {ref!r} must look like 'module:function'")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure of the user's module (SystemExit too) is one line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ToolImportError(f"rlm.tools.{name}: cannot import {ref!r} ({type(exc).__name__}: {first})") from None
    if not callable(obj):
        raise ToolImportError(f"rlm.tools.{name}: {ref!r} is not callable")
    return obj


def import_tools(spec: dict[str, str]) -> dict[str, Callable[..., Any]]:
    return {name: import_tool(name, ref) for name, ref in spec.items()}


def tool_docs(tools: dict[str, Callable[..., Any]]) -> dict[str, str]:
    """name -> signature and docstring, as the controller's system prompt and the REPL stubs show them."""
    out = {}
    for name, fn in tools.items():
        try:
            sig = str(inspect.signature(fn, eval_str=True))  # `from __future__ import annotations` shows types
        except Exception:  # noqa: BLE001 - an annotation that does not evaluate: show them as written
            try:
                sig = str(inspect.signature(fn))
            except (TypeError, ValueError):
                sig = "(...)"
        out[name] = f"{name}{sig}: " + (inspect.getdoc(fn) or "no description").strip()
    return out


class ToolRunner:
    """Runs a run's tool calls in a child process: per-call timeout, a result cap, a count cap, bounded records.

    WHY a child process: a tool is trusted code fed hostile arguments; one that spins in C holding the GIL (a
    regex on a pathological pattern) cannot be stopped in a thread and would freeze the whole rig. A child is
    killed at the timeout (SIGKILL) and started again at the next call. Past ``max_calls`` one record tells
    the refusal and counts the rest (a CapEvent "tool_calls" too), so a flood cannot grow the trajectory."""

    def __init__(self, spec: dict[str, str], traj: Trajectory, *, timeout_s: float, max_result_chars: int,
                 max_calls: int, depth: int, memory_bytes: int | None = CHILD_MEMORY_BYTES) -> None:
        self.spec = dict(spec)  # name -> 'module:function': the child imports them by their refs
        self.traj = traj
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self.max_calls = max_calls
        self.depth = depth
        self.calls = 0
        self.cell = 0
        self.refusal: Any = None  # the one SubCallRecord of the calls past max_calls
        self.proc = _ToolProcess(self.spec, max_result_chars=max_result_chars, timeout_s=timeout_s,
                                 memory_bytes=memory_bytes)

    def __call__(self, name: str, args: list, kwargs: dict) -> SubCallReply:
        from rlm_rig.records.trajectory import SubCallRecord
        from rlm_rig.repl.types import SubCallReply

        self.calls += 1
        if self.calls > self.max_calls:
            return self._refuse(name, args, kwargs)
        rec = SubCallRecord(id=len(self.traj.sub_calls), cell=self.cell, depth=self.depth + 1, kind="tool", tool=name,
                            chunk_chars=0, instruction=_dump(args, kwargs))
        self.traj.sub_calls.append(rec)
        t0 = time.perf_counter()
        if name in self.spec:
            rec.response, rec.error, rec.error_kind = self.proc.call(name, args, kwargs)
        else:
            rec.error, rec.error_kind = f"no custom tool named {name!r} in this run", "tool"
        rec.latency_s = time.perf_counter() - t0
        return SubCallReply(text=rec.response, error=rec.error)

    def _refuse(self, name: str, args: list, kwargs: dict) -> SubCallReply:
        """The call past the cap: the first gets a record and a CapEvent, the rest only count on that record."""
        from rlm_rig.records.trajectory import CapEvent, SubCallRecord
        from rlm_rig.repl.types import SubCallReply

        error = f"tool call limit reached ({self.max_calls} per run)"
        refused = self.calls - self.max_calls
        if self.refusal is None:
            self.refusal = SubCallRecord(id=len(self.traj.sub_calls), cell=self.cell, depth=self.depth + 1,
                                         kind="tool", tool=name, chunk_chars=0, instruction=_dump(args, kwargs),
                                         error=error, error_kind="tool")
            self.traj.sub_calls.append(self.refusal)
            self.traj.caps_hit.append(CapEvent(cap="tool_calls", turn=len(self.traj.turns), detail=error))
        else:
            self.refusal.error = f"{error}; {refused} calls refused in all (this record stands for them)"
        return SubCallReply(text=None, error=error)

    def close(self) -> None:
        """Stops the child (if one ever started); the run's end calls it."""
        self.proc.close()


class _ToolProcess:
    """One long-lived child that runs tool calls one at a time, over a socket pair carrying
    multiprocessing Connection frames.

    WHY Popen and not multiprocessing's spawn/forkserver: both re-import the parent's ``__main__`` in the
    child, which re-runs a user's unguarded script (a Rig.ask at top level); fork is out (the parent has
    threads and servers). The child gets the parent's sys.path, so a tool importable here imports there."""

    def __init__(self, spec: dict[str, str], *, max_result_chars: int, timeout_s: float,
                 memory_bytes: int | None) -> None:
        self.setup = {"spec": spec, "max_result_chars": max_result_chars, "cpu_s": math.ceil(timeout_s) + 2,
                      "memory_bytes": memory_bytes or 0}
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        # a result of max_result_chars characters is at most 4 bytes each in UTF-8, plus the reply's tag; an error
        # (cut to 2000 characters in the child, at most 6 bytes each as ASCII JSON) fits even at a small cap
        self.max_reply_bytes = 4 * max(max_result_chars, 4000) + 64
        self.lock = threading.Lock()
        self.child: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.starts = 0

    def call(self, name: str, args: list, kwargs: dict) -> tuple[str | None, str | None, str | None]:
        """(JSON text of the result, None, None) or (None, the error the cell's ToolError carries, its kind:
        "tool" for the call's own failure, "tool_result" for a result JSON cannot carry or over the cap)."""
        with self.lock:
            try:
                conn = self._ready()
                conn.send_bytes(json.dumps({"name": name, "args": args, "kwargs": kwargs},
                                           ensure_ascii=False).encode("utf-8", "surrogatepass"))
            except (OSError, EOFError, ValueError) as exc:
                self._stop()
                return None, f"{name}: the tool process could not start or take the call ({exc})", "tool"
            if not conn.poll(self.timeout_s):
                self._stop()  # the only way to stop a tool that holds the GIL in C, or never returns
                return None, f"{name} did not return within {self.timeout_s:g} s (tool timeout)", "tool"
            try:
                raw = conn.recv_bytes(self.max_reply_bytes)  # a longer frame is refused before it is read
            except EOFError:
                code = self._stop()
                return None, f"{name}: the tool process died during the call (exit code {code})", "tool"
            except OSError:
                self._stop()
                return None, (f"tool {name} returned a result over the cap of {self.max_result_chars} JSON "
                              "characters"), "tool_result"
        return _decode_reply(raw)

    def _ready(self) -> Connection:
        """The running child, started (or started again after a kill) on demand."""
        if self.child is not None and self.child.poll() is None and self.conn is not None:
            return self.conn
        self._stop()
        parent_end, child_end = multiprocessing.Pipe()
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(child_end.fileno())],
                pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            child_end.close()
        self.conn = parent_end
        self.starts += 1
        parent_end.send_bytes(json.dumps(self.setup).encode())
        if not parent_end.poll(BOOT_TIMEOUT_S) or parent_end.recv_bytes(64) != b"ready":
            raise OSError(f"the tool process did not start within {BOOT_TIMEOUT_S:g} s")
        return parent_end

    def _stop(self) -> int | None:
        """SIGKILL and reap the child; its exit code (None when there was none)."""
        code = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.child is not None:
            if self.child.poll() is None:
                self.child.kill()
            code = self.child.wait()
            self.child = None
        return code

    def close(self) -> None:
        with self.lock:
            self._stop()

    def __del__(self) -> None:  # a runner dropped without close(): do not leave its child behind
        try:
            self._stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _decode_reply(raw: bytes) -> tuple[str | None, str | None, str | None]:
    tag, body = raw[:1], raw[1:].decode("utf-8", "surrogatepass")
    if tag == b"R":
        return body, None, None
    err = json.loads(body)
    return None, str(err["error"])[:2000], err["kind"]


# The child's first line: the parent's sys.path, then this module's serve loop on the inherited socket.
_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
         "from rlm_rig.controller.tools import serve_tools; serve_tools(int(sys.argv[2]))")


def serve_tools(fd: int) -> None:
    """The child: limits, then one call at a time until the parent closes the socket (or kills it)."""
    conn = Connection(fd)
    os.dup2(2, 1)  # a tool's print goes to stderr, never into the CLI's own output
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this child
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    setup = json.loads(conn.recv_bytes())
    if setup["memory_bytes"]:
        _set_limit(resource.RLIMIT_AS, setup["memory_bytes"])
    conn.send_bytes(b"ready")
    fns: dict[str, Callable[..., Any]] = {}
    while True:
        try:
            req = json.loads(conn.recv_bytes().decode("utf-8", "surrogatepass"))
        except (EOFError, OSError):  # the parent closed its end, or is gone
            return
        # a CPU backstop per call: the parent kills at the timeout, this also ends a child whose parent is gone
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _set_limit(resource.RLIMIT_CPU, int(usage.ru_utime + usage.ru_stime) + setup["cpu_s"])
        conn.send_bytes(_run_one(fns, setup, req["name"], req["args"], req["kwargs"]))


def _exit_with_parent(ppid: int) -> None:
    """A parent killed mid-call (SIGKILL, OOM) leaves no child behind: a tool that sleeps or waits ends
    here within a second; one spinning in C with the GIL held meets RLIMIT_CPU instead."""
    while os.getppid() == ppid:
        time.sleep(1.0)
    os._exit(1)


def _set_limit(which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _run_one(fns: dict, setup: dict, name: str, args: list, kwargs: dict) -> bytes:
    """One call in the child: b"R" + the result's JSON text, or b"E" + {"error", "kind"}."""
    def fail(error: str, kind: str) -> bytes:
        return b"E" + json.dumps({"error": error[:2000], "kind": kind}).encode("utf-8", "surrogatepass")

    try:
        if name not in fns:
            fns[name] = import_tool(name, setup["spec"][name])
        value = fns[name](*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the tool's failure is the model's ToolError
        return fail(f"{name} raised {type(exc).__name__}: {exc}", "tool")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return fail(f"tool {name} returned a value that is not JSON-serialisable ({exc})", "tool_result")
    if len(text) > setup["max_result_chars"]:
        return fail(f"tool {name} returned {len(text)} JSON characters, over the cap of "
                    f"{setup['max_result_chars']}", "tool_result")
    return b"R" + text.encode("utf-8", "surrogatepass")


def _dump(args: list, kwargs: dict) -> str:
    return json.dumps({"args": args, "kwargs": kwargs}, ensure_ascii=False)[:4000]


def tool_result_error(traj: Trajectory) -> str | None:
    """The first custom tool call, at any depth, whose result JSON could not carry (a bug of the tool itself:
    the CLI reports it as bad input once the run is saved), else None."""
    for t in traj.walk():
        for s in t.sub_calls:
            if s.kind == "tool" and s.error_kind == "tool_result":
                return s.error
    return None
