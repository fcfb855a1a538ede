"""Sandbox kernels spawned one step ahead, and retired off the critical path.

A kernel's start-up (namespaces, a fresh interpreter) costs ~0.1-0.3 s, which is most of the
harness's own time per example on the CPU profiles. The pool keeps one kernel spawned and idle for
the next run, and kills finished kernels in the background.

A single ``ask`` opens one sandbox, and a spare for a next example that never comes would be a
third process for nothing; so the pool spawns spares only when told more examples follow
(``prefetch``, set by ``rlm-rig eval``) or from the second sandbox on.
"""
from __future__ import annotations

import threading
from typing import Any

from rlm_rig.repl.sandbox import PreparedKernel, Sandbox
from rlm_rig.repl.types import SandboxError, SandboxLimits


class KernelPool:
    def __init__(self, prefetch: bool = False) -> None:
        self.prefetch = prefetch  # more examples follow: keep a spare from the first sandbox on
        self._spares: list[PreparedKernel] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._served = 0  # sandboxes opened so far: the first one alone spawns no spare

    def _background(self, fn: Any) -> None:
        t = threading.Thread(target=fn, daemon=True, name="kernel-pool")
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _refill(self, limits: SandboxLimits) -> None:
        def spawn() -> None:
            try:
                pk = PreparedKernel(limits)
            except SandboxError:
                return  # the run that needs it will start one itself, and report why if it cannot
            with self._lock:
                if self._closed:
                    pk.discard()
                    return
                self._spares.append(pk)

        self._background(spawn)

    def _take(self, limits: SandboxLimits) -> PreparedKernel | None:
        with self._lock:
            for i, pk in enumerate(self._spares):
                if pk.limits == limits:
                    return self._spares.pop(i)
        return None

    def sandbox(self, prompt: str, *, limits: SandboxLimits, **kw: Any) -> Sandbox:
        sb = Sandbox(prompt, limits=limits, prepared=self._take(limits), **kw)
        with self._lock:
            self._served += 1
            more = self.prefetch or self._served > 1
        if more:
            self._refill(limits)
        return sb

    def retire(self, sb: Sandbox) -> None:
        self._background(sb.close)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spares, self._spares = self._spares, []
            threads = list(self._threads)
        for t in threads:
            t.join(timeout=30)
        for pk in spares:
            pk.discard()
