"""The worker with a tape in front: recorded replies answer identical sub_calls, new ones go to the model.

WHY a wrapper around the worker (the ``chat_many`` the sub_call router calls) and not a branch in
the router: a hit never reaches the watch, the client or the server, so a rerun from a complete tape
makes zero requests; and the router only reads ``extra["source"]`` into each SubCallRecord.

Every reply, from the tape or the model, is written to the run's own tape, so each run's tape is
complete and can feed the next rerun. ``replace`` serves forks (experiments/runs/fork.py): the n-th
call of the run (0-based, in the order the router sends them) gets the given text instead.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from rlm_rig.records.tape import Tape, TapeEntry, tape_key
from rlm_rig.worker.client import Completion

# request parameters that do not change which reply the server gives
_NOT_SAMPLING = ("timeout",)


class ReplayDiverged(RuntimeError):
    """A fork's replay missed the tape before its fork point: its REPL state is not the original's."""


class TapedWorker:
    """``chat_many`` like the worker it wraps; ``dead``, ``in_flight``, ``events`` and ``close`` pass through."""

    def __init__(self, inner: Any, *, model: str, sampling: dict[str, Any], record: Tape | None,
                 replay: Tape | None = None, replace: dict[int, str] | None = None):
        self.inner = inner
        self.model = model  # worker.models.model_identity of the weights
        self.sampling = dict(sampling)  # the client's defaults (seed included); a call's own parameters override them
        self.record = record
        self.replay = replay
        self.replace = dict(replace or {})
        self.hits = 0
        self.misses = 0
        self._n = 0  # calls seen so far: the ordinal `replace` counts in
        self.diverged: str | None = None  # a fork's replay that missed the tape before its fork point (why)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # dead, in_flight, events, worker, server, ... of the wrapped worker
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def begin_run(self, replace: dict[int, str] | None = None) -> None:
        """Count calls from 0 again, with new replies to replace (a fork study runs many forks on one worker)."""
        with self._lock:
            self._n, self.hits, self.misses = 0, 0, 0
            self.replace = dict(replace or {})
            self.diverged = None

    def key_parts(self, kw: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """(the sampling part of the key, the seed): the client's defaults, overridden by the call's own."""
        sampling = {**self.sampling, **{k: v for k, v in kw.items() if k not in _NOT_SAMPLING}}
        return sampling, sampling.pop("seed", None)

    def chat(self, messages: list[dict], **kw: Any) -> Any:
        res = self.chat_many([messages], **kw)[0]
        if isinstance(res, BaseException):
            raise res
        return res

    def chat_many(self, batch: Sequence[list[dict]], **kw: Any) -> list[Any]:
        sampling, seed = self.key_parts(kw)
        keys = [tape_key(self.model, list(m), sampling, seed) for m in batch]
        with self._lock:
            first = self._n
            self._n += len(batch)
        results: list[Any] = [None] * len(batch)
        todo = []
        fork_at = min(self.replace) if self.replace else None
        for i, key in enumerate(keys):
            if fork_at is not None and first + i < fork_at and (self.replay is None or self.replay.get(key) is None):
                # before the fork point every reply must be the recorded one: a miss means the replayed cells
                # asked something else (or the original call failed and was never taped); never ask the model
                self.diverged = self.diverged or (f"call #{first + i} (before the fork point #{fork_at}) is not on the "
                                                  "tape: the replay asked something the original run did not")
                results[i] = ReplayDiverged(self.diverged)
            elif first + i in self.replace:
                results[i] = _completion(self.replace[first + i], None, "fork")
            elif self.replay is not None and (e := self.replay.get(key)) is not None:
                results[i] = _completion(e.text, e, "tape")
            else:
                todo.append(i)
        self.hits += sum(1 for r in results if r is not None and not isinstance(r, BaseException))
        self.misses += len(todo)
        if todo:
            for i, res in zip(todo, self.inner.chat_many([batch[i] for i in todo], **kw)):
                results[i] = res
        for i, res in enumerate(results):
            if res is not None and not isinstance(res, BaseException) and res.extra.get("source") != "fork":
                self._keep(keys[i], batch[i], sampling, seed, res)
        return results

    def _keep(self, key: str, messages: list[dict], sampling: dict[str, Any], seed: int | None, res: Completion) -> None:
        if self.record is None:
            return
        self.record.add(TapeEntry(
            key=key, model=self.model, sampling=sampling, seed=seed, messages=list(messages), text=res.text,
            token_ids=res.extra.get("token_ids"), token_logprobs=res.extra.get("token_logprobs"),
            prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens, finish_reason=res.finish_reason))

    def close(self) -> None:
        self.inner.close()


def _completion(text: str, entry: TapeEntry | None, source: str) -> Completion:
    """A reply nobody waited for: latency 0, the recorded token counts, ids and logprobs (none for a fork's text)."""
    extra: dict[str, Any] = {"source": source}
    if entry is not None:
        extra.update(token_ids=entry.token_ids, token_logprobs=entry.token_logprobs)
        return Completion(text, entry.prompt_tokens, entry.completion_tokens, 0.0, entry.finish_reason, extra=extra)
    return Completion(text, 0, 0, 0.0, "stop", extra=extra)
