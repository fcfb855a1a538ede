"""Public records of the sandbox: limits, sub_call messages, cell results, isolation report.

Kept free of process logic so the controller can build and log them without starting a kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

Launcher = Literal["auto", "bwrap", "unshare", "none"]
KillReason = Literal["timeout", "memory", "exit", "crash", "protocol", "budget"]
# Who stands behind a fact in a CellResult: the parent checked it from outside the kernel
# ("verified"), only the kernel says so ("claimed"), or the kernel admitted it was broken ("violated").
Integrity = Literal["verified", "claimed", "violated"]


class SandboxError(RuntimeError):
    """The kernel could not be started (or restarted); nothing else escapes `run_cell`."""


@dataclass
class SandboxLimits:
    """Caps applied to every kernel; a profile's ``sandbox:`` section *is* this type (configs composes it).

    The one default of each cap lives here. 120 s per cell: the clock pauses during sub_calls, so this
    bounds the cell's own Python (a regex pass or a pandas groupby over a 5M-char document), with room
    for a slow CPU. 4096 MB: pandas over a multi-MB document plus its copies fits; small profiles set 2048.
    """

    __pydantic_config__ = {"extra": "forbid"}  # a profile's typo is an error (a plain dict: no pydantic import)

    cell_timeout_s: float = 120.0
    memory_mb: int = 4096  # address-space cap of the kernel (RLIMIT_AS)
    max_output_chars: int = 1_000_000  # hard cap on captured stdout+stderr per cell (protects the parent)
    recursion_limit: int = 2000
    network: bool = False
    # --- extensions beyond the first contract draft ---
    startup_timeout_s: float = 30.0  # kernel start + prompt load; failure -> SandboxError
    max_subcall_chars: int = 20_000_000  # chars of chunk+instruction in one sub_call message
    max_file_mb: int = 1024  # RLIMIT_FSIZE: largest file the kernel may write (disk-fill guard)
    # ctypes can rewrite interpreter memory and so defeat the in-kernel audit hook. Off: `import ctypes`
    # yields an inert stub (pandas imports fine; scipy/sklearn do not). On: real ctypes, the hook is then
    # only a tripwire and the OS layers carry the isolation.
    allow_ctypes: bool = False
    # Best effort: a per-kernel cgroup capping tasks and resident memory (needs a writable
    # cgroup tree: root or delegation). Silently skipped where impossible; see Sandbox.isolation.
    cgroup: bool = True
    max_tasks: int = 128  # pids.max of that cgroup (threads count)
    launcher: Launcher = "auto"  # "auto": bwrap if it works, else unshare, else a plain process
    # As root, "auto" refuses to fall back below bubblewrap (the kernel would be root on the host)
    # unless this is set. Naming a launcher explicitly is also accepted as asking for it.
    allow_weak_launchers: bool = False
    max_scratch_mb: int = 1024  # total size of the scratch tmpfs (bwrap; all files together)
    max_batch: int = 1024  # requests in one sub_call_batch, enforced by the parent
    max_error_chars: int = 20_000  # traceback text kept per cell, enforced by the parent
    max_notices: int = 20  # notices kept per cell (each cut to 2000 chars), enforced by the parent
    # The timeout clock pauses while the parent runs the sub_call handler: a cell that waits on a
    # slow worker is not "hung". Set True to count handler time too.
    timeout_includes_subcalls: bool = False
    # Parent-side budgets per cell, whatever the kernel sends: frames decoded, bytes read from the
    # protocol pipe, and parent CPU spent on the kernel's frames (the handler's own time excluded).
    # A kernel over one is killed and restarted (kill_reason="budget").
    max_cell_frames: int = 200_000
    max_cell_read_mb: int = 4096
    max_parent_cpu_s: float = 20.0
    # JSON characters of one custom tool call's arguments, and of its result, enforced by the parent
    max_tool_chars: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.cell_timeout_s > 0:
            raise ValueError(f"SandboxLimits.cell_timeout_s must be > 0, got {self.cell_timeout_s!r}")
        if self.memory_mb < 64:
            raise ValueError(f"SandboxLimits.memory_mb must be >= 64 (Python needs it), got {self.memory_mb!r}")
        if self.max_output_chars < 1:
            raise ValueError(f"SandboxLimits.max_output_chars must be >= 1, got {self.max_output_chars!r}")
        if self.recursion_limit < 50:
            raise ValueError(f"SandboxLimits.recursion_limit must be >= 50, got {self.recursion_limit!r}")
        if self.max_tasks < 8:
            raise ValueError(f"SandboxLimits.max_tasks must be >= 8, got {self.max_tasks!r}")
        if self.max_scratch_mb < 1 or self.max_batch < 1 or self.max_error_chars < 100 or self.max_notices < 1:
            raise ValueError("SandboxLimits: max_scratch_mb and max_batch must be >= 1, max_error_chars >= 100, "
                             "max_notices >= 1")
        if self.max_cell_frames < 100 or self.max_cell_read_mb < 1 or not self.max_parent_cpu_s > 0:
            raise ValueError("SandboxLimits: max_cell_frames must be >= 100, max_cell_read_mb >= 1, "
                             "max_parent_cpu_s > 0")
        if self.max_tool_chars < 100:
            raise ValueError(f"SandboxLimits.max_tool_chars must be >= 100, got {self.max_tool_chars!r}")
        if self.launcher not in ("auto", "bwrap", "unshare", "none"):
            raise ValueError(f"SandboxLimits.launcher must be auto|bwrap|unshare|none, got {self.launcher!r}")


@dataclass
class SubCallRequest:
    chunk: str
    instruction: str
    index_in_batch: int | None  # None for a single sub_call, i for sub_call_batch
    kind: str = "llm"  # "llm": a plain worker call; "rlm": the official dialect's rlm_query (a child RLM)
    model: str | None = None  # the worker the call names (`model=`), None: the default


@dataclass
class SubCallReply:
    text: str | None = None
    error: str | None = None  # the kernel raises SubCallError(error) in model code


# Called in the parent, once per sub_call / sub_call_batch, blocking; the handler runs a batch
# concurrently itself (the sandbox does not).
SubCallHandler = Callable[[list[SubCallRequest]], list[SubCallReply]]
# Called in the parent for one custom tool call: (name, args, kwargs) -> SubCallReply whose text is the
# result's JSON (or whose error the kernel raises as ToolError).
ToolHandler = Callable[[str, list, dict], SubCallReply]


@dataclass
class CellResult:
    stdout: str
    stderr: str
    error: str | None  # trimmed traceback text, or None
    duration_s: float
    timed_out: bool = False
    restarted: bool = False  # kernel was killed and restarted; state lost, prompt reloaded
    kill_reason: str | None = None  # "timeout" | "memory" | "exit" | "crash" | "protocol" | "budget" | None
    notices: list[str] = field(default_factory=list)
    final_answer: str | None = None  # set when code called FINAL(x) or FINAL_VAR("name")
    output_truncated: bool = False  # hard cap hit
    prompt_restored: bool = False  # the kernel's copy of `prompt` had changed and was restored before the cell
    sub_calls: int = 0  # requests sent to the handler during this cell (batch items counted)
    # "verified": the first cell of a kernel the parent just loaded (no model code ran before it);
    # "claimed": the kernel says `prompt` was intact; "violated": the kernel found it altered and
    # restored it. See docs/SANDBOX.md, "What the parent verifies".
    prompt_integrity: str = "claimed"
    # "verified": the answer equals a string literal passed to FINAL(...) in this cell's code, as the
    # parent parsed it; "claimed": any other answer (a variable, FINAL_VAR, an expression) is the
    # kernel's word. None without a final answer.
    final_integrity: str | None = None
    final_var: str | None = None  # the name given to FINAL_VAR, when the answer came from one


@dataclass
class IsolationReport:
    """Which layers are really active, as observed by the kernel itself at start-up."""

    launcher: str  # "bwrap" | "unshare" | "none"
    pid_namespace: bool
    network_namespace: bool
    readonly_root: bool  # filesystem outside scratch (and /tmp tmpfs) mounted read-only
    capabilities_dropped: bool  # no effective capabilities at all
    user_namespace: bool  # any capabilities it has only act inside its own user namespace
    audit_hook: bool
    env_scrubbed: bool
    rlimits: dict[str, int]
    kernel_uid: int
    cgroup: str | None = None  # e.g. "cgroup v1: pids.max=128, memory=2304 MiB", None when unavailable
    notes: list[str] = field(default_factory=list)
    # --- least privilege, as observed by the kernel ---
    host_uid: int | None = None  # the kernel's uid on the host (0 = root there), from /proc/self/uid_map
    seccomp: bool = False  # a seccomp filter is active (/proc/self/status "Seccomp: 2")
    no_new_privs: bool = False
    proc_readonly: bool = False  # /proc/sys cannot be written (read-only mount or no permission)
    scratch_quota_mb: int | None = None  # size cap of the scratch tmpfs; None: plain host folder
    scratch_noexec: bool = False
    hidden_paths: bool = False  # none of the parent's home, project and data folders is visible
    visible_paths: list[str] = field(default_factory=list)  # those of them that the kernel can see

    def as_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)

    def summary(self) -> str:
        flags = ("pid_namespace", "network_namespace", "readonly_root", "capabilities_dropped", "seccomp",
                 "no_new_privs", "proc_readonly", "scratch_noexec", "hidden_paths")
        on = [n for n in (*flags, "user_namespace", "audit_hook", "env_scrubbed") if getattr(self, n)]
        off = [n for n in flags if not getattr(self, n)]
        text = f"launcher={self.launcher}; host uid {self.host_uid}; on: {', '.join(on) or 'none'}"
        if off:
            text += f"; off: {', '.join(off)}"
        text += f"; {self.cgroup or 'no cgroup'}"
        text += f"; scratch quota {self.scratch_quota_mb} MiB" if self.scratch_quota_mb else "; no scratch quota"
        text += "; rlimits: " + ", ".join(f"{k}={v}" for k, v in sorted(self.rlimits.items()))
        return text
