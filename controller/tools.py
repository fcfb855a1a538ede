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
import threading
import time
from typing import Any, Callable

from rlm_rig.records.trajectory import SubCallRecord, Trajectory
from rlm_rig.repl.types import SubCallReply

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
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is the same one line
        raise ToolImportError(f"rlm.tools.{name}: cannot import {ref!r} ({type(exc).__name__}: {exc})") from None
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
    """Runs a run's tool calls: per-call timeout, a result cap, a count cap, one record per call."""

    def __init__(self, tools: dict[str, Callable[..., Any]], traj: Trajectory, *, timeout_s: float,
                 max_result_chars: int, max_calls: int, depth: int) -> None:
        self.tools = tools
        self.traj = traj
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self.max_calls = max_calls
        self.depth = depth
        self.calls = 0
        self.cell = 0

    def __call__(self, name: str, args: list, kwargs: dict) -> SubCallReply:
        rec = SubCallRecord(id=len(self.traj.sub_calls), cell=self.cell, depth=self.depth + 1, kind="tool", tool=name,
                            chunk_chars=0, instruction=_dump(args, kwargs))
        self.traj.sub_calls.append(rec)
        self.calls += 1
        if self.calls > self.max_calls:
            rec.error = f"tool call limit reached ({self.max_calls} per run)"
        else:
            t0 = time.perf_counter()
            rec.response, rec.error, rec.error_kind = self._run(name, args, kwargs)
            rec.latency_s = time.perf_counter() - t0
        if rec.error and rec.error_kind is None:
            rec.error_kind = "tool"
        return SubCallReply(text=rec.response, error=rec.error)

    def _run(self, name: str, args: list, kwargs: dict) -> tuple[str | None, str | None, str | None]:
        """(JSON text of the result, None, None) or (None, the error the cell's ToolError carries, its kind:
        "tool" for the call's own failure, "tool_result" for a result JSON cannot carry: a bug of the tool)."""
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = self.tools[name](*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - the tool's failure is the model's ToolError
                box["error"] = f"{name} raised {type(exc).__name__}: {exc}"

        # a daemon thread: a tool that never returns is abandoned at the timeout (Python cannot kill it)
        worker = threading.Thread(target=call, daemon=True, name=f"tool-{name}")
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            return None, f"{name} did not return within {self.timeout_s:g} s (tool timeout)", "tool"
        if "error" in box:
            return None, box["error"][:2000], "tool"
        try:
            text = json.dumps(box.get("value"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return None, f"tool {name} returned a value that is not JSON-serialisable ({exc})", "tool_result"
        if len(text) > self.max_result_chars:
            return None, (f"tool {name} returned {len(text)} JSON characters, over the cap of "
                          f"{self.max_result_chars}"), "tool_result"
        return text, None, None


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
