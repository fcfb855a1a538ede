"""Kernel process entry: load `prompt` once, harden the interpreter, then run cells forever.

Runs in the sandboxed child with only the standard library. Everything that model code could
disturb (its stdout, its namespace, the protocol pipes) is re-checked after each cell.
"""
from __future__ import annotations

import ast
import builtins
import io
import linecache
import os
import resource
import sys
import threading
import traceback
import types

from . import guard, integrity
from . import context as ctxmod
from .api import AnswerDict, KernelLink, make_api, make_official_api, make_tools
from .capture import CappedStream, OutputBudget
from .wire import KIND_BYTES, KIND_JSON, decode_json, read_frame

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
STACK_BYTES = 512 * 1024 * 1024
RECURSION_CEILING = 60_000  # ~8 KiB of C stack per level with STACK_BYTES
THREAD_STACK_BYTES = 16 * 1024 * 1024
STACKED_FLAG = "--rlm-stacked"
PROTECTED = ("prompt", "sub_call", "sub_call_batch", "rlm_query", "rlm_query_batched", "FINAL", "FINAL_VAR",
             "SubCallError")
OFFICIAL = ("context", "context_0", "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched", "SHOW_VARS")


def _ensure_big_stack() -> None:
    """Re-exec once with a large RLIMIT_STACK: the main thread's stack is sized at exec time,
    and deep C-level recursion must end in RecursionError, not a segfault."""
    if STACKED_FLAG in sys.argv:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_STACK, (want, hard))
            os.execv(sys.executable, list(sys.orig_argv) + [STACKED_FLAG])
        except OSError:
            pass  # keep the default stack; a segfault would then be contained as a restart


def _read_ns(kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return None


# long: one probe per isolation fact, each a few lines; together they are the isolation report
def _facts(scratch: str) -> dict:
    """What the kernel can observe about its own confinement (the parent compares)."""
    cap_eff = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    cap_eff = int(line.split()[1], 16)
    except OSError:
        pass
    root_ro = None
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 5 and fields[4] == "/":
                    root_ro = "ro" in fields[5].split(",")
    except OSError:
        pass
    ifaces = []
    try:
        with open("/proc/self/net/dev") as fh:
            ifaces = [ln.split(":")[0].strip() for ln in fh.readlines()[2:]]
    except OSError:
        pass
    status = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                status[key] = value.strip()
    except OSError:
        pass
    scratch_mount = None
    try:  # the mount holding scratch: the last one whose mount point is a prefix of it
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                f, r = left.split(), right.split()
                point = f[4].replace("\\040", " ") if len(f) > 5 else ""
                if point and (scratch == point or scratch.startswith(point.rstrip("/") + "/")):
                    scratch_mount = {"point": point, "opts": f[5].split(","), "fstype": r[0] if r else "",
                                     "super": r[2].split(",") if len(r) > 2 else []}
    except OSError:
        pass
    limits = {}
    for name in ("RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CORE", "RLIMIT_STACK"):
        soft, _hard = resource.getrlimit(getattr(resource, name))
        limits[name] = soft
    return {"pid": os.getpid(), "uid": os.getuid(), "pid_ns": _read_ns("pid"), "net_ns": _read_ns("net"),
            "user_ns": _read_ns("user"),
            "cap_eff": cap_eff, "root_ro": root_ro, "ifaces": ifaces, "rlimits": limits,
            "env_keys": sorted(os.environ), "recursion_limit": sys.getrecursionlimit(),
            "seccomp": status.get("Seccomp"), "no_new_privs": status.get("NoNewPrivs"),
            "proc_sys_writable": os.access("/proc/sys/kernel/core_pattern", os.W_OK),
            "scratch_mount": scratch_mount}


def _trim_traceback(exc: BaseException) -> str:
    """Format `exc` without the kernel's own frames (the exec call, sub_call internals, the hook)."""
    try:
        tbe = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
        seen: set[int] = set()
        stack_of = [tbe]
        while stack_of:
            cur = stack_of.pop()
            if id(cur) in seen:
                continue
            seen.add(id(cur))
            cur.stack = traceback.StackSummary.from_list(
                [f for f in cur.stack if not (f.filename or "").startswith(KERNEL_DIR)])
            for nxt in (cur.__cause__, cur.__context__):
                if nxt is not None:
                    stack_of.append(nxt)
        text = "".join(tbe.format())
        if "Traceback (most recent call last):\n" in text and not any(
                f for f in tbe.stack):  # no model frames left: drop the empty header
            text = text.replace("Traceback (most recent call last):\n", "", 1)
        return text
    except Exception:  # a hostile __str__ must not take the kernel down
        return f"{type(exc).__name__}: <unprintable exception>\n"


def _ready_text(obj: object) -> "str | None":
    """`answer["content"]` as text when `obj` is a dict whose "ready" is truthy, else None (never raises)."""
    try:
        if isinstance(obj, dict) and dict.get(obj, "ready"):
            return str(dict.get(obj, "content", ""))
    except Exception:  # a hostile __bool__ / __str__ only costs its own answer
        pass
    return None


class Kernel:
    def __init__(self, link: KernelLink, prompt: object, cfg: dict) -> None:
        self.link = link
        self.cfg = cfg
        self.final: str | None = None
        self.final_var: str | None = None
        self.final_truncated = False
        self.ns: dict = {"__name__": "__main__", "__builtins__": builtins}
        self.official = cfg.get("dialect") == "official"
        hidden: set = set()
        if self.official:  # the document is `context` (and `context_0`, as the official package has it)
            api = make_official_api(link, self.ns, lambda: hidden)
            self.doc_names = ("context", "context_0")
        else:
            api = make_api(link, self.ns, self._set_final)
            self.doc_names = ("prompt",)
        tools = make_tools(link, cfg.get("tools") or {})
        api.update({k: v for k, v in tools.items() if k not in api and k not in self.doc_names})
        hidden.update(api)
        self.protected = {**{name: prompt for name in self.doc_names}, **api}
        self.ns.update(self.protected)
        self.ns["answer"] = AnswerDict(self._answer_ready)
        self.ns.update({k: v for k, v in (cfg.get("globals") or {}).items() if k not in self.protected})
        self.cell_no = 0

    def _answer_ready(self, answer: dict) -> None:
        text = _ready_text(answer)
        if text is not None:
            self._set_final(text, None)

    def _check_answer(self, before: object, was_ready: bool) -> None:
        """After a cell: a ready `answer` that this cell made ready (or bound) is the final answer; under the
        official dialect a rebound `answer` is wrapped again so the next cell's assignment is seen."""
        now = self.ns.get("answer")
        if self.final is None and (now is not before or not was_ready):
            text = _ready_text(now)
            if text is not None:
                self._set_final(text, None)
        if self.official and not isinstance(now, AnswerDict):
            fresh = AnswerDict(self._answer_ready)
            if isinstance(now, dict):
                try:
                    dict.update(fresh, now)
                except Exception:
                    pass
            self.ns["answer"] = fresh

    def _set_final(self, answer: str, var: str | None = None) -> None:
        cap = int(self.cfg["max_output_chars"])
        self.final_var = var
        self.final_truncated = len(answer) > cap
        self.final = answer[:cap]

    def run(self, code: str, cell_id: object = None) -> dict:
        self.cell_no += 1
        self.final = None
        self.final_var = None
        self.final_truncated = False
        budget = OutputBudget(int(self.cfg["max_output_chars"]))
        out, err = CappedStream(budget, "<stdout>"), CappedStream(budget, "<stderr>")
        sys.stdout = sys.__stdout__ = out
        sys.stderr = sys.__stderr__ = err
        sys.stdin = sys.__stdin__ = io.StringIO("")
        notices: list[str] = []
        error = None
        subs_before = self.link.sub_calls
        answer_before = self.ns.get("answer")
        was_ready = _ready_text(answer_before) is not None
        filename = f"<cell {cell_id if isinstance(cell_id, int) else self.cell_no}>"
        try:
            tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST)
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            lines = code.splitlines(keepends=True)
            linecache.cache[filename] = (len(code), None, lines, filename)
            exec(compile(tree, filename, "exec"), self.ns)
            if last is not None:
                value = eval(compile(last, filename, "eval"), self.ns)
                if value is not None:
                    out.write(repr(value) + "\n")
        except SyntaxError as exc:
            error = "".join(traceback.format_exception_only(type(exc), exc))
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt are contained too
            error = _trim_traceback(exc)
            if isinstance(exc, SystemExit):
                notices.append("sys.exit()/SystemExit was intercepted: the REPL keeps running and your "
                               "variables are kept.")
            elif isinstance(exc, MemoryError):
                notices.append(f"The cell hit the sandbox memory cap ({self.cfg['memory_mb']} MB).")
            elif isinstance(exc, RecursionError):
                notices.append(f"Recursion went too deep (limit {sys.getrecursionlimit()}).")
            del exc
        self._check_answer(answer_before, was_ready)
        for name, obj in self.protected.items():
            if self.ns.get(name) is not obj:
                self.ns[name] = obj
                notices.append(f"`{name}` was reassigned or deleted; it has been restored.")
        if self.final_truncated:
            notices.append("The final answer was cut to max_output_chars.")
        return {"t": "done", "stdout": out.getvalue(), "stderr": err.getvalue(), "error": error,
                "final": self.final, "final_var": self.final_var, "truncated": budget.truncated, "dropped": budget.dropped,
                "notices": notices, "sub_calls": self.link.sub_calls - subs_before}


BLOB_KEYS = ("stdout", "stderr", "error", "final")


def send_done(link: KernelLink, reply: dict) -> None:
    """Large strings go as attached byte frames (see wire.py); the JSON part stays small."""
    # empty output is the parent's default; an empty final answer is still an answer
    keys = [k for k in BLOB_KEYS if isinstance(reply.get(k), str) and (reply[k] or k in ("error", "final"))]
    head = {k: v for k, v in reply.items() if k not in BLOB_KEYS}
    head["blob_keys"] = keys
    link.finish_cell(head, [reply[k] for k in keys])


# The builtins whose replacement would change what later cells run or report.
LOOP_BUILTINS = ("compile", "exec", "eval", "repr", "isinstance", "len", "str", "dict", "list", "type")


def _names_used(*fns) -> tuple[str, ...]:
    """Global names the given functions (and the functions defined inside them) look up."""
    out: set[str] = set()
    todo = [getattr(f, "__code__", None) for f in fns]
    while todo:
        code = todo.pop()
        if code is None:
            continue
        out.update(code.co_names)
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return tuple(sorted(out))


def _snapshot(kernel: "Kernel", link: KernelLink) -> tuple:
    """What later cells' code paths look up: the globals the kernel's loop functions use, its
    classes, the API functions' closures, a few builtins and the json entry points. Deeper stdlib
    patching (json's encoder internals, traceback) is not covered: the check runs after every cell
    and must stay cheap, and an owned kernel's reply is a claim in any case (docs/SANDBOX.md)."""
    import ast as _ast
    import json

    from . import api, capture, wire
    main_mod = sys.modules[__name__]
    loop = [Kernel.run, Kernel._check_answer, Kernel._answer_ready, Kernel._set_final, _ready_text, send_done,
            _trim_traceback]
    link_fns = [v for v in vars(KernelLink).values() if isinstance(v, types.FunctionType)] + [
        api.make_api, api.make_official_api, api.make_tools]
    wire_fns = [v for v in vars(wire).values() if isinstance(v, types.FunctionType)]
    own = [(main_mod, _names_used(*loop)), (api, _names_used(*link_fns)), (wire, _names_used(*wire_fns))]
    modules = own + [(builtins, LOOP_BUILTINS), (json, ("dumps", "loads", "_default_encoder", "_default_decoder")),
                     (traceback, ("TracebackException", "StackSummary", "format_exception_only")),
                     (os, ("read", "write", "_exit")), (linecache, ("cache",)), (io, ("StringIO",)),
                     (_ast, ("PyCF_ONLY_AST", "Expr", "Expression"))]
    classes = [Kernel, KernelLink, wire.FrameReader, api.SubCallError, api.ToolError, AnswerDict, CappedStream,
               OutputBudget]
    instances = [(kernel, ("link", "cfg", "ns", "protected")),
                 (link, ("fd_in", "fd_out", "lock", "max_request_chars", "max_batch", "max_tool_chars", "reader")),
                 (link.reader, ("fd", "buf"))]
    functions = [v for v in kernel.protected.values() if isinstance(v, types.FunctionType)] + [
        ctxmod.altered, ctxmod.put_back, ctxmod.snapshot]
    del capture
    # strict: no name may be added to the kernel's own modules (it would shadow a builtin they call)
    return integrity.take(modules + [kernel.protected], classes, instances, functions,
                          [main_mod, api, wire, kernel.protected])


# long: the kernel's request loop; every branch is one message kind of the protocol, read top to bottom
def main(fd_in: int, fd_out: int) -> None:
    _ensure_big_stack()
    kind, payload = read_frame(fd_in)
    if kind != KIND_JSON:
        os._exit(90)
    cfg = decode_json(payload)
    kind, raw = read_frame(fd_in)
    if kind != KIND_BYTES:
        os._exit(91)
    flat = raw.decode("utf-8", "surrogatepass")
    del raw, payload
    prompt = ctxmod.unpack(flat, cfg.get("layout"))  # a str, or the list / dict of a structured context
    os.chdir(cfg["scratch"])
    guard.apply_rlimits(int(cfg["memory_mb"]), int(cfg["max_file_mb"]), cfg.get("nproc"))
    guard.cap_recursion(int(cfg["recursion_limit"]), max(RECURSION_CEILING, int(cfg["recursion_limit"])))
    if cfg.get("seccomp"):  # the launcher loaded none (unshare, none): the kernel's own stage, or no kernel
        why = guard.install_seccomp(cfg["seccomp"])
        if why is not None:
            os.write(2, f"sandbox: cannot load the kernel's seccomp stage: {why}\n".encode())
            os._exit(92)
    guard.disarm_posixsubprocess()
    guard.disarm_unaudited()
    if not cfg.get("allow_ctypes"):
        guard.stub_ctypes()
    # glibc sizes new threads' stacks from RLIMIT_STACK (raised above for the main thread);
    # keep model threads modest so a thread pool fits in the address-space cap.
    threading.stack_size(THREAD_STACK_BYTES)
    link = KernelLink(fd_in, fd_out, int(cfg["max_subcall_chars"]), int(cfg.get("max_batch") or 1024),
                      int(cfg.get("max_tool_chars") or 1_000_000))
    kernel = Kernel(link, prompt, cfg)
    facts = _facts(cfg["scratch"])
    guard.install_audit_hook(cfg["scratch"], network=bool(cfg["network"]),
                             protected_fds=frozenset({fd_in, fd_out}), allow_ctypes=bool(cfg.get("allow_ctypes")),
                             library_roots=tuple(sorted({sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                         sys.base_exec_prefix})))
    link.send({"t": "ready", "facts": facts, "prompt_chars": len(flat)})
    del flat
    # `canonical` is a fast local of this frame: model code can read it through the frame stack
    # but cannot rebind it (frame.f_locals is a snapshot; sys.settrace, which would write it
    # back, is refused by the hook). Before each cell the kernel's `prompt` is put back to it if
    # it changed. The parent never sends the document again: that is a claim of this kernel
    # (see CellResult.prompt_integrity), and a kernel that lies is no cheaper to the parent.
    canonical = prompt
    canonical_items = ctxmod.snapshot(prompt)  # a list/dict's items: in-place changes are put back too
    doc_names = kernel.doc_names
    altered, put_back = ctxmod.altered, ctxmod.put_back
    del prompt
    # Everything the loop calls is bound here, before model code runs, and the bindings it relies
    # on are checked against a snapshot before each cell and before each reply (integrity.py).
    snap = _snapshot(kernel, link)
    flat = integrity.flatten(snap)
    run_cell, finish, next_cell = Kernel.run, send_done, link.next_cell
    intact, restore = integrity.intact, integrity.restore
    check_tools, fix_tools = integrity.CHECK_TOOLS, integrity.FIX_TOOLS  # tuples: model code cannot change them
    _isinstance, _str, _exit = isinstance, str, os._exit
    tampered = False
    while True:
        try:
            msg = next_cell()
        except (EOFError, OSError):
            _exit(0)  # parent gone
        if msg.get("t") == "exit":
            _exit(0)
        if msg.get("t") != "run" or not _isinstance(msg.get("code"), _str):
            continue
        restored = tampered
        tampered = False
        for name in doc_names:
            if kernel.protected.get(name) is not canonical or kernel.ns.get(name) is not canonical:
                restored = True
                kernel.protected[name] = canonical
                kernel.ns[name] = canonical
        if altered(canonical, canonical_items):
            restored = True
            put_back(canonical, canonical_items)
        reply = run_cell(kernel, msg["code"], msg.get("cell"))
        reply["cell"] = msg.get("cell")
        if restored:
            reply["prompt_restored"] = True
            reply["notices"].insert(0, f"`{doc_names[0]}` or the kernel's own functions had been altered inside the kernel; "
                                       "they were restored before this cell.")
        try:
            finish(link, reply)
        except MemoryError:
            try:
                finish(link, {"t": "done", "cell": msg.get("cell"), "stdout": "", "stderr": "",
                                 "error": "MemoryError: the cell's output could not be sent (memory cap)\n",
                                 "final": None, "truncated": True, "dropped": 0, "notices": [], "sub_calls": 0})
            except BaseException:
                _exit(70)
        except (EOFError, OSError):
            _exit(0)
        # After the reply, while the parent works on it: whatever this cell (or a thread) patched
        # is put back before the next cell runs, and that cell's reply says so. A cell that patches
        # the reply path can only misreport its own result.
        if not intact(flat, *check_tools):
            restore(snap, *fix_tools)
            tampered = True
