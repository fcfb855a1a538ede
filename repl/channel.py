"""Parent end of one kernel process: non-blocking pipes with deadlines, bounded buffers.

Why non-blocking everywhere: the kernel is untrusted. It may stop reading, flood its stdout,
send garbage or die at any byte; the parent must never block past a deadline or buffer
without bound.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

from . import seccomp
from ._kernel.wire import KIND_BYTES, KIND_JSON, FrameDecoder, ProtocolError, decode_json, encode_bytes, encode_json
from .cgroup import CgroupJail
from .launch import UNPRIVILEGED_UID, Plan, hide_bwrap_args, kernel_env, python_command, wrapper_prefix
from .scratch import ScratchMount

RAW_TAIL_BYTES = 16_384
READ_CHUNK = 1 << 20  # one read from the protocol pipe
RAW_READS_PER_CALL = 16  # 64 KiB each: fd-level output read per wake-up


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (host PIDs, read from /proc), so none outlives close()."""
    out: list[int] = []
    todo = [pid]
    while todo:
        cur = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{cur}/task/{cur}/children").read_text().split()]
        except (OSError, ValueError):
            continue
        out += kids
        todo += kids
    return out


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    """Wait (bounded) until killed non-child processes have left the process table or are zombies."""
    end = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < end:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.005)


class KernelGone(Exception):
    """The kernel closed its pipe, died, or broke the protocol."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KernelProcess:
    """Starts one kernel and moves frames to and from it."""

    def __init__(self, *, plan: Plan, scratch: Path, network: bool, max_frame: int, max_json: int,
                 max_blobs: int, max_message_bytes: int, raw_cap: int, jail: CgroupJail | None = None,
                 holder: ScratchMount | None = None, uid: int = UNPRIVILEGED_UID) -> None:
        self.launcher = plan.launcher
        self.plan = plan
        self.jail = jail
        self.killed_by_us = False
        self.max_blobs = max_blobs
        self.max_message_bytes = max_message_bytes
        to_kernel_r, self._to_kernel_w = os.pipe()
        self._from_kernel_r, from_kernel_w = os.pipe()
        filter_fd = seccomp.filter_fd() if plan.seccomp else None
        argv = wrapper_prefix(plan, scratch, network=network, holder=holder, seccomp_fd=filter_fd, uid=uid) + python_command(
            to_kernel_r, from_kernel_w)
        argv, args_fd = hide_bwrap_args(argv)
        if jail is not None:
            argv = jail.wrap(argv)
        keep = (to_kernel_r, from_kernel_w) + tuple(fd for fd in (filter_fd, args_fd) if fd is not None)
        try:
            self.proc = subprocess.Popen(
                argv, cwd="/", env=kernel_env(scratch), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=keep,
                start_new_session=True, close_fds=True)
        except OSError:
            for fd in (*keep, self._to_kernel_w, self._from_kernel_r):
                os.close(fd)
            if jail is not None:
                jail.remove()
            raise
        for fd in keep:
            os.close(fd)
        assert self.proc.stdout is not None
        self._raw_r = self.proc.stdout.fileno()
        for fd in (self._to_kernel_w, self._from_kernel_r, self._raw_r):
            os.set_blocking(fd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._from_kernel_r, selectors.EVENT_READ, "proto")
        self._sel.register(self._raw_r, selectors.EVENT_READ, "raw")
        self._out = bytearray()
        self._write_registered = False
        self._decoder = FrameDecoder(max_frame, max_json)
        self._pending: dict | None = None  # a J frame still waiting for its attached B frames
        self._pending_bytes = 0
        self._eof = False
        self._raw_eof = False
        self.raw_cap = raw_cap
        self.raw = bytearray()  # fd-level output since the last take_raw(), capped
        self.raw_dropped = 0
        self.raw_tail = bytearray()  # last bytes ever written, for crash diagnostics
        self.closed = False
        self._read_buf = bytearray(READ_CHUNK)
        self._read_view = memoryview(self._read_buf)
        self.begin_cell(max_frames=1 << 16, max_bytes=max_message_bytes + max_frame)  # start-up budget

    # ---- output side -------------------------------------------------------------------------
    def queue_json(self, obj: dict) -> None:
        self._queue(encode_json(obj))

    def queue_bytes(self, data: bytes) -> None:
        self._queue(encode_bytes(data))

    def _queue(self, data: bytes) -> None:
        self._out += data
        self._try_write()

    def _try_write(self) -> None:
        while self._out:
            try:
                n = os.write(self._to_kernel_w, self._out[:1 << 20])
            except BlockingIOError:
                break
            except (BrokenPipeError, OSError):
                self._out.clear()
                self._eof = True
                break
            del self._out[:n]
        want = bool(self._out)
        if want != self._write_registered:
            if want:
                self._sel.register(self._to_kernel_w, selectors.EVENT_WRITE, "write")
            else:
                self._sel.unregister(self._to_kernel_w)
            self._write_registered = want

    # ---- input side --------------------------------------------------------------------------
    # Why one read at a time and one message at a time: a kernel that floods the pipe must not
    # keep the parent reading (and buffering) past the cell's deadline. The parent only reads
    # more when the bytes it holds do not yet make a whole message, so what it holds stays under
    # one message's cap, and the caller checks the deadline and the budgets after every message.
    def begin_cell(self, max_frames: int, max_bytes: int) -> None:
        """Reset the per-cell budgets: frames decoded and bytes read from the protocol pipe."""
        self.frames_read = 0
        self.bytes_read = 0
        self.max_cell_frames = max_frames
        self.max_cell_bytes = max_bytes

    def _read_once(self) -> None:
        """One bounded read from the protocol pipe into the decoder."""
        try:  # into a buffer kept for the kernel's life: a fresh 1 MiB bytes per read costs ~20 us
            n = os.readv(self._from_kernel_r, [self._read_buf])
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            self._eof = True
            return
        self.bytes_read += n
        if self.bytes_read > self.max_cell_bytes:
            raise KernelGone("budget", f"the kernel sent more than {self.max_cell_bytes} bytes in one cell")
        self._decoder.feed(self._read_view[:n])

    def _message_from_buffer(self) -> dict | None:
        """Decode frames already read until one message is whole; None if more bytes are needed."""
        while True:
            try:
                frame = self._decoder.next_frame()  # raises ProtocolError on garbage
                if frame is None:
                    return None
                self.frames_read += 1
                if self.frames_read > self.max_cell_frames:
                    raise KernelGone("budget", f"the kernel sent more than {self.max_cell_frames} frames in one cell")
                msg = self._take_frame(*frame)
            except ProtocolError as exc:
                raise KernelGone("protocol", str(exc)) from None
            if msg is not None:
                return msg

    def _take_frame(self, kind: bytes, payload: bytes) -> dict | None:
        """Assemble messages: a J frame plus the B frames it announces (kept raw in "_blobs")."""
        if self._pending is not None:
            if kind != KIND_BYTES:
                raise ProtocolError("expected an attached byte frame")
            self._pending_bytes += len(payload)
            if self._pending_bytes > self.max_message_bytes:
                raise ProtocolError(f"message attachments exceed {self.max_message_bytes} bytes")
            self._pending["_blobs"].append(payload)
            if len(self._pending["_blobs"]) == self._pending["n_blobs"]:
                msg, self._pending = self._pending, None
                return msg
            return None
        if kind != KIND_JSON:
            raise ProtocolError("a byte frame without a message announcing it")
        msg = decode_json(payload)
        n = msg.get("n_blobs", 0)
        if type(n) is not int or not 0 <= n <= self.max_blobs:
            raise ProtocolError(f"bad attachment count {str(n)[:50]}")
        msg["_blobs"] = []
        if n == 0:
            return msg
        msg["n_blobs"] = n
        self._pending, self._pending_bytes = msg, 0
        return None

    def _read_raw(self) -> None:
        for _ in range(RAW_READS_PER_CALL):  # bounded: a writer that never stops cannot pin us here
            if self._raw_eof:
                return
            try:
                data = os.read(self._raw_r, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._raw_eof = True
                self._sel.unregister(self._raw_r)
                return
            room = self.raw_cap - len(self.raw)
            if room > 0:
                self.raw += data[:room]
            self.raw_dropped += max(0, len(data) - max(room, 0))
            self.raw_tail += data[-RAW_TAIL_BYTES:]
            del self.raw_tail[:-RAW_TAIL_BYTES]

    def take_raw(self) -> tuple[str, int]:
        """Fd-level output (os.write(1, ...), C libraries) gathered so far, and bytes dropped."""
        self._read_raw()
        text = self.raw.decode("utf-8", "replace")
        dropped = self.raw_dropped
        self.raw.clear()
        self.raw_dropped = 0
        return text, dropped

    def next_message(self, deadline: float) -> dict | None:
        """The next message from the kernel, or None at the deadline. Raises KernelGone."""
        while True:
            msg = self._message_from_buffer()
            if msg is not None:
                return msg
            if self._eof:
                raise KernelGone("eof", "the kernel closed its protocol pipe")
            now = time.monotonic()
            if now >= deadline:
                return None
            # Wake up regularly to notice a dead kernel whose pipe is held open elsewhere.
            try:
                events = self._sel.select(timeout=min(deadline - now, 0.25))
            except InterruptedError:
                continue
            for key, _mask in events:
                if key.data == "proto":
                    self._read_once()
                elif key.data == "raw":
                    self._read_raw()
                elif key.data == "write":
                    self._try_write()
            if not events and self.proc.poll() is not None:
                self._read_once()
                msg = self._message_from_buffer()
                if msg is not None:
                    return msg
                if not self._eof:
                    raise KernelGone("exit", f"the kernel exited with status {self.proc.returncode}")

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued for the kernel that it has not read yet."""
        return len(self._out)

    def flush(self, deadline: float) -> bool:
        """Write everything queued (used for the prompt at start-up); False on timeout."""
        while self._out and not self._eof:
            now = time.monotonic()
            if now >= deadline:
                return False
            events = self._sel.select(timeout=min(deadline - now, 0.25))
            for key, _mask in events:
                if key.data == "write":
                    self._try_write()
                elif key.data == "raw":
                    self._read_raw()
                elif key.data == "proto" and self._decoder.buffered < READ_CHUNK:
                    self._read_once()  # start-up: only the ready message is expected; kept bounded
            if self.proc.poll() is not None and self._out:
                raise KernelGone("exit", f"the kernel exited with status {self.proc.returncode}")
        if self._eof and self._out:
            raise KernelGone("eof", "the kernel closed its protocol pipe")
        return True

    # ---- lifetime ----------------------------------------------------------------------------
    def exit_reason(self, wait_s: float = 2.0) -> str | None:
        """Classify why the kernel ended, from the wrapper's exit status; None if still alive."""
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                return None
        if self.jail is not None and self.jail.oom_killed():
            return "memory"
        sig = -code if code < 0 else (code - 128 if code > 128 and self.launcher != "none" else 0)
        if sig == signal.SIGKILL:
            # Without a cgroup to ask, the likeliest sender is the OOM killer (the hook stops
            # model code from signalling); with one that saw no OOM, call it a crash.
            return "memory" if self.jail is None else "crash"
        if sig:
            return "crash"
        return "exit"

    def kill(self) -> None:
        """SIGKILL the whole process group (namespaced children die with the namespace's init)."""
        if self.closed:
            return
        self.closed = True
        self.killed_by_us = True
        tree = descendants(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in [self.proc.pid, *tree]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _wait_gone(tree, timeout_s=5.0)
        try:
            self._read_raw()
        except OSError:
            pass
        self._sel.close()
        for fd in (self._to_kernel_w, self._from_kernel_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.jail is not None:
            self.jail.kill_all()  # what left the process tree (setsid, double forks) is still in the group
            self.jail.remove()
