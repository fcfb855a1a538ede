"""Watch the worker: a dead vLLM server must never turn into a silent answer.

WHY a wrapper around :class:`SyncWorker`: every sub_call of every eval thread goes through
``chat_many``, so this is the one place that sees a failure, can ask whether the server is still
there (process exited? ``/health`` failing?), restart a server the rig started itself (back-off, a
cap on restarts, each restart logged), and re-send the calls that failed. When the worker cannot be
brought back, the watch turns *dead*: every later call fails at once with :class:`WorkerDeadError`,
and the eval runner stops with one line instead of answering on error strings.

Failures are sorted into kinds (:func:`failure_kind`) so records can say *why* a sub_call failed and
the runner can keep samples hit by worker failures out of the scores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx

from rlm_rig.worker.errors import ContextLengthError, WorkerError, WorkerRequestError
from rlm_rig.worker.settings import WatchSettings

__all__ = ["WORKER_FAILURE", "WorkerDeadError", "WorkerWatch", "failure_kind"]

# The kind of sub_call failure that says nothing about the chunk and everything about the worker:
# samples with such a failure are not valid answers.
WORKER_FAILURE = "worker"


class WorkerDeadError(WorkerError):
    """The worker is gone and could not be brought back: restarts used up, or an attached server down."""


def failure_kind(exc: BaseException) -> str:
    """``worker`` (server down, connection refused, 5xx after retries, timeout), ``context_length``,
    ``request`` (another 4xx: the same request would fail again), or ``other``."""
    if isinstance(exc, ContextLengthError):
        return "context_length"
    if isinstance(exc, WorkerRequestError):
        return "request"
    if isinstance(exc, (WorkerError, TimeoutError, httpx.TransportError, ConnectionError)):
        return WORKER_FAILURE
    return "other"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class WorkerWatch:
    """A :class:`SyncWorker` that notices a dead server, restarts it when it is ours, and retries.

    ``server``: the ``VLLMServer`` the rig started (restartable), or None for an attached url / an
    in-process worker. ``health_url``: the server's root (``http://h:p``) for ``/health``; None skips
    the check. ``log``: one line per event (the rig's run log).
    """

    def __init__(
        self,
        inner: Any,
        *,
        server: Any = None,
        health_url: str | None = None,
        log: Callable[[str], None] | None = None,
        max_restarts: int = WatchSettings.max_restarts,
        backoff_s: float = WatchSettings.backoff_s,
        attached_wait_s: float = WatchSettings.attached_wait_s,
        retries: int = WatchSettings.retries,
        on_restart: Callable[[Any], None] | None = None,
    ) -> None:
        self.inner = inner
        self.server = server
        self.health_url = health_url.rstrip("/") if health_url else None
        self._log = log or (lambda line: None)
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.attached_wait_s = attached_wait_s
        self.retries = retries
        self.on_restart = on_restart
        self.dead: str | None = None
        self.restarts = 0
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every successful restart

    # -- what SyncWorker offers --------------------------------------------------------------------
    @property
    def worker(self) -> Any:
        return self.inner.worker

    @property
    def in_flight(self) -> int:
        return self.inner.in_flight

    def close(self) -> None:
        self.inner.close()

    def chat(self, messages: list[dict], **kw: Any) -> Any:
        res = self.chat_many([messages], **kw)[0]
        if isinstance(res, BaseException):
            raise res
        return res

    def chat_many(self, batch: Sequence[list[dict]], **kw: Any) -> list[Any]:
        """Like ``SyncWorker.chat_many``; items that failed for worker reasons are re-sent after the
        worker is checked (and restarted if it is ours and down). A completion that needed re-sending
        carries ``extra["worker_retries"]``."""
        if self.dead:
            return [WorkerDeadError(f"worker is dead: {self.dead}") for _ in batch]
        results = list(self.inner.chat_many(batch, **kw))
        tries = [0] * len(results)
        for _ in range(self.retries):
            failed = [i for i, r in enumerate(results) if isinstance(r, BaseException) and failure_kind(r) == WORKER_FAILURE]
            if not failed:
                break
            if not self.ensure_alive(reason=f"{type(results[failed[0]]).__name__}: {results[failed[0]]}"):
                break
            again = self.inner.chat_many([batch[i] for i in failed], **kw)
            for i, r in zip(failed, again):
                tries[i] += 1
                results[i] = r
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                if self.dead and failure_kind(r) == WORKER_FAILURE:
                    results[i] = WorkerDeadError(f"worker is dead: {self.dead} (last error: {r})")
            elif tries[i]:
                r.extra["worker_retries"] = tries[i]
        return results

    # -- health ------------------------------------------------------------------------------------
    def health(self) -> str | None:
        """None when the worker looks alive, else why not (process exit, /health failing)."""
        if self.server is not None and not self.server.running:
            proc = getattr(self.server, "_proc", None)
            rc = proc.poll() if proc is not None else None
            return f"the worker's vLLM server process exited (code {rc})"
        if self.health_url is None:
            return None
        try:
            with httpx.Client(timeout=5.0, trust_env=False) as c:
                r = c.get(self.health_url + "/health")
            if r.status_code != 200:
                return f"{self.health_url}/health answered HTTP {r.status_code}"
        except httpx.HTTPError as e:
            return f"{self.health_url}/health failed: {type(e).__name__}: {e}".rstrip(": ")
        return None

    def _event(self, kind: str, detail: str) -> None:
        ev = {"time": _now(), "event": kind, "detail": detail}
        self.events.append(ev)
        self._log(f"{ev['time']} worker {kind}: {detail}")

    def ensure_alive(self, *, reason: str = "") -> bool:
        """Check the worker; restart our own server when it is down. False (and ``dead`` set) when it
        cannot be brought back. One thread restarts; the others wait on the lock and see the result."""
        gen = self._generation
        with self._lock:
            if self.dead:
                return False
            if self._generation != gen:  # another thread restarted it while we waited
                return True
            why = self.health()
            if why is None:
                return True  # a transient failure: the caller retries
            self._event("down", f"{why} (noticed after: {reason[:300]})")
            if self.server is None:
                return self._wait_attached(why)
            while self.restarts < self.max_restarts:
                self.restarts += 1
                delay = self.backoff_s * 2 ** (self.restarts - 1)
                self._event("restart", f"attempt {self.restarts} of {self.max_restarts} after {delay:g} s back-off")
                time.sleep(delay)
                try:
                    self.server.stop(grace_s=5.0)
                    self.server.start()
                except Exception as e:  # noqa: BLE001 - a failed start is one used attempt
                    self._event("restart_failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    continue
                if self.health() is None:
                    self._generation += 1
                    self._event("restarted", f"server back at {self.server.url} (pid {self.server.pid})")
                    if self.on_restart is not None:
                        self.on_restart(self.server)
                    return True
            self.dead = f"{why}; {self.restarts} restart(s) tried, cap {self.max_restarts}"
            self._event("dead", self.dead)
            return False

    def _wait_attached(self, why: str) -> bool:
        """A server someone else runs: we cannot restart it, only wait a while for it to return."""
        deadline = time.monotonic() + self.attached_wait_s
        delay = self.backoff_s
        while time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay *= 2
            if self.health() is None:
                self._generation += 1
                self._event("back", f"attached server at {self.health_url} answers again")
                return True
        self.dead = f"{why}; the server is not the rig's own (attached by url), waited {self.attached_wait_s:g} s"
        self._event("dead", self.dead)
        return False
