"""Blocking facade over an async worker, for synchronous callers (the controller loop, eval threads).

WHY a background loop thread: the sandbox's sub_call handler and the controller are plain blocking
code, possibly on several threads at once. Running the async worker on one private event loop lets all
of them share one connection pool and one concurrency cap, and lets a batch run concurrently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from rlm_rig.worker.client import Completion

__all__ = ["AsyncChatWorker", "SyncWorker"]


_BACKSTOP_S = 30.0


def _timeout_message(timeout: float | None) -> str:
    return f"worker call did not finish within {timeout}s; it was cancelled"


async def _bounded(coro, timeout: float | None):
    if timeout is None:
        return await coro
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:  # the same class as the builtin since 3.11; raised again with our message
        raise TimeoutError(_timeout_message(timeout)) from None


class AsyncChatWorker(Protocol):
    """What SyncWorker needs: an async `chat` (WorkerClient and TransformersWorker both qualify)."""

    async def chat(self, messages: list[dict], **kw: Any) -> Completion: ...


class SyncWorker:
    """Run `worker.chat` from any thread; `chat_many` runs a batch concurrently. Close it when done."""

    # Why the worker is gone for good: a bare SyncWorker never gives up (WorkerWatch, which wraps it, does).
    dead: str | None = None

    def __init__(self, worker: AsyncChatWorker, *, name: str = "worker-loop") -> None:
        if not callable(getattr(worker, "chat", None)):
            raise TypeError(f"{type(worker).__name__} has no chat() coroutine method")
        self.worker = worker
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _submit(self, coro, timeout: float | None):
        """Run `coro` on the loop. The deadline is enforced ON the loop (asyncio.wait_for), which cancels the
        request there and frees its slot. WHY not only `fut.result(timeout)`: on a loaded 2-core VM a
        thread blocked in a timed wait was seen waking seconds late, after the call had finished; the
        loop's own timer fired on time. The caller's wait keeps a generous backstop in case the loop is stuck."""
        if self._closed:
            coro.close()
            raise RuntimeError("SyncWorker is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncWorker called from its own loop thread; await worker.chat() there instead")
        if timeout is not None and timeout <= 0:
            coro.close()
            raise ValueError(f"timeout must be positive, got {timeout}")
        fut = asyncio.run_coroutine_threadsafe(_bounded(coro, timeout), self._loop)
        try:
            return fut.result(None if timeout is None else timeout + _BACKSTOP_S)
        except concurrent.futures.TimeoutError:
            fut.cancel()  # the loop missed its own deadline: still do not leave the request running
            raise TimeoutError(_timeout_message(timeout)) from None
        except BaseException:
            fut.cancel()  # Ctrl-C: same
            raise

    @property
    def in_flight(self) -> int:
        return int(getattr(self.worker, "in_flight", 0))

    def chat(self, messages: list[dict], *, timeout: float | None = None, **kw: Any) -> Completion:
        """Blocking chat. Raises what the worker raises (WorkerError and subclasses)."""
        return self._submit(self.worker.chat(messages, **kw), timeout)

    def chat_many(
        self, batch: Sequence[list[dict]], *, timeout: float | None = None, **kw: Any
    ) -> list[Completion | Exception]:
        """Run all chats concurrently (the worker's own cap still applies). Results keep the batch's
        order; a failed item is its exception object, so one bad chunk does not sink the batch."""
        if isinstance(batch, (str, dict)):
            raise TypeError("chat_many takes a list of message lists")

        async def gather() -> list[Completion | Exception]:
            tasks = [asyncio.ensure_future(self.worker.chat(m, **kw)) for m in batch]
            try:
                res = await asyncio.gather(*tasks, return_exceptions=True)
            except asyncio.CancelledError:
                for t in tasks:
                    t.cancel()
                raise
            for r in res:  # cancellation of the batch itself is not a per-item failure
                if isinstance(r, asyncio.CancelledError):
                    raise r
            return list(res)

        return self._submit(gather(), timeout)

    def close(self) -> None:
        """Close the worker's connections (aclose/close when it has one) and stop the loop thread."""
        if self._closed:
            return
        closer = getattr(self.worker, "aclose", None)
        if closer is not None and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(closer(), self._loop).result(10)
            except Exception:  # noqa: BLE001 - closing must not mask the caller's own error
                pass
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> "SyncWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self._loop.call_soon_threadsafe(self._loop.stop)
        except Exception:  # noqa: BLE001
            pass
