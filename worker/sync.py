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

from worker.client import Completion

__all__ = ["AsyncChatWorker", "SyncWorker"]


class AsyncChatWorker(Protocol):
    """What SyncWorker needs: an async `chat` (WorkerClient and TransformersWorker both qualify)."""

    async def chat(self, messages: list[dict], **kw: Any) -> Completion: ...


class SyncWorker:
    """Run `worker.chat` from any thread; `chat_many` runs a batch concurrently. Close it when done."""

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
        if self._closed:
            coro.close()
            raise RuntimeError("SyncWorker is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncWorker called from its own loop thread; await worker.chat() there instead")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()  # do not leave the request running (and holding a slot) in the background
            raise TimeoutError(f"worker call did not finish within {timeout}s; it was cancelled") from None
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
