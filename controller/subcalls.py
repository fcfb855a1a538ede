"""The parent side of ``sub_call``: caps, token budgets, concurrency, nesting and records.

The sandbox hands over a batch of requests; this router refuses what breaks a cap *before*
anything is sent (so a refused batch wastes no worker time), sends the rest concurrently through
the worker client, and records one :class:`SubCallRecord` per request.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from rlm_rig.controller.confidence import answer_confidence, apply_low_confidence
from rlm_rig.controller.doctokens import ChunkTokens
from rlm_rig.controller.prompts import worker_messages
from rlm_rig.records.trajectory import CapEvent, SubCallRecord, Trajectory
from rlm_rig.worker.watch import failure_kind
from rlm_rig.repl.types import SubCallReply, SubCallRequest


class ChatMany(Protocol):
    """The worker as the loop sees it: `worker.SyncWorker`, or the `worker.WorkerWatch` around it."""

    dead: str | None  # why the worker is gone for good (None while it answers or is being restarted)

    def chat_many(self, batch: list[list[dict[str, str]]], **kw: Any) -> list[Any]: ...

    @property
    def in_flight(self) -> int: ...


@dataclass
class SubCallBudget:
    """Shared across a run and its nested runs: 'sub_calls per run' counts every level."""

    limit: int
    used: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True


# (chunk, instruction, depth) -> (answer text, nested trajectory as dict)
NestedRunner = Callable[[str, str, int], tuple[str | None, dict[str, Any]]]


class SubCallRouter:
    def __init__(
        self,
        *,
        doc: str,
        traj: Trajectory,
        worker: ChatMany | None,
        count_tokens: Callable[[str], int],
        budget_tokens: int,
        budget: SubCallBudget,
        depth: int,
        worker_max_tokens: int,
        worker_system: str | None = None,
        nested: NestedRunner | None = None,
        concurrency: int = 8,
        chunk_tokens: ChunkTokens | None = None,
        low_confidence: str = "off",
        low_confidence_threshold: float = 0.5,
        decode_token: Callable[[int], str] | None = None,
    ):
        self.doc = doc
        self.traj = traj
        self.worker = worker
        self.count_tokens = count_tokens
        self.budget_tokens = budget_tokens
        self.budget = budget
        self.depth = depth
        self.worker_max_tokens = worker_max_tokens
        self.worker_system = worker_system
        self.nested = nested
        self.concurrency = concurrency
        # the cap check: from the chunk's length where its bound settles it, else an exact count
        self.chunk_tokens = chunk_tokens if chunk_tokens is not None else ChunkTokens(count_tokens)
        self._next = 0  # where the last located chunk ended: the next one usually starts there
        self.cell = 0
        self.turn = 0
        self._batch_no = 0
        self.low_confidence, self.low_confidence_threshold = low_confidence, low_confidence_threshold
        self.decode_token = decode_token  # the worker's tokenizer, one id -> text: finds a reply's answer tokens
        self.notes: list[str] = []  # lines for the current cell's feedback (the `tell` policy); the loop takes them

    def _cap(self, cap: str, detail: str) -> None:
        self.traj.caps_hit.append(CapEvent(cap=cap, turn=self.turn, detail=detail))  # type: ignore[arg-type]

    def _span(self, chunk: str) -> tuple[int | None, int | None]:
        """Where ``chunk`` sits in the document. Programs send consecutive slices, so the place after the
        previous chunk is checked first (O(chunk)); a search of the whole document is the fallback."""
        if not chunk:
            return None, None
        i = self._next if self.doc.startswith(chunk, self._next) else self.doc.find(chunk)
        if i < 0:
            return None, None
        self._next = i + len(chunk)
        return i, i + len(chunk)

    # long: the parent-side caps checked in order (count, batch, chunk size, depth) before any request leaves
    def __call__(self, reqs: list[SubCallRequest]) -> list[SubCallReply]:
        if self.worker is None and self.nested is None:
            return [SubCallReply(error="sub_call is disabled in this run (no-subcall method)") for _ in reqs]
        batch_id = None
        if len(reqs) > 1 or (reqs and reqs[0].index_in_batch is not None):
            batch_id = self._batch_no
            self._batch_no += 1
        spans = [self._span(r.chunk) for r in reqs]
        # A nested RLM reads its chunk through its own REPL, so only plain worker calls are capped.
        checks = ([(None, False)] * len(reqs) if self.nested is not None
                  else self.chunk_tokens.check_many([r.chunk for r in reqs], self.budget_tokens))
        tokens = [t for t, _ in checks]
        over = [(i, t) for i, (t, is_over) in enumerate(checks) if is_over]
        if over:
            detail = ", ".join(f"#{i}: {t} tokens" for i, t in over[:5])
            msg = (
                f"chunk too large: the worker reads at most {self.budget_tokens} tokens per chunk ({detail}). "
                "Nothing in this call was sent; split the chunk(s) smaller"
            )
            self._cap("chunk_tokens", msg)
            return [SubCallReply(error=msg) for _ in reqs]
        if not self.budget.take(len(reqs)):
            msg = (
                f"sub_call limit reached: {self.budget.used} of {self.budget.limit} used, this call needs {len(reqs)}. "
                "Nothing was sent; finish with what you have"
            )
            self._cap("sub_calls", msg)
            return [SubCallReply(error=msg) for _ in reqs]

        records = []
        for r, t, (start, end) in zip(reqs, tokens, spans):
            rec = SubCallRecord(
                id=len(self.traj.sub_calls),
                cell=self.cell,
                depth=self.depth + 1,
                batch=batch_id,
                chunk_start=start,
                chunk_end=end,
                chunk_chars=len(r.chunk),
                chunk_tokens=t,
                instruction=r.instruction,
            )
            self.traj.sub_calls.append(rec)
            records.append(rec)

        t0 = time.perf_counter()
        try:
            if self.nested is not None:
                return self._run_nested(reqs, records)
            batch = [worker_messages(r.chunk, r.instruction, self.worker_system) for r in reqs]
            results = self.worker.chat_many(batch, max_tokens=self.worker_max_tokens)  # type: ignore[union-attr]
        finally:
            self.traj.model_wall_s += time.perf_counter() - t0
        replies = []
        for rec, msgs, res in zip(records, batch, results):
            rec.messages = msgs
            if isinstance(res, BaseException):
                rec.error = f"{type(res).__name__}: {res}"
                rec.error_kind = failure_kind(res)
                replies.append(SubCallReply(error=f"worker call failed: {rec.error}"))
                continue
            rec.response = res.text
            rec.prompt_tokens = res.prompt_tokens
            rec.completion_tokens = res.completion_tokens
            rec.latency_s = res.latency_s
            extra = getattr(res, "extra", None) or {}
            rec.worker_retries = int(extra.get("worker_retries", 0))
            rec.token_ids = extra.get("token_ids")  # what interp teacher-forces (schema 2)
            rec.token_logprobs = extra.get("token_logprobs")
            rec.confidence = answer_confidence(rec.token_ids, rec.token_logprobs, self.decode_token)
            replies.append(SubCallReply(text=res.text))
        return apply_low_confidence(self, reqs, records, replies)

    def take_notes(self) -> str:
        """The policy's feedback lines for the cell that just ran (empty when none), then forgets them."""
        notes, self.notes = self.notes, []
        return "".join("\n" + n for n in notes)

    def _run_nested(self, reqs: list[SubCallRequest], records: list[SubCallRecord]) -> list[SubCallReply]:
        assert self.nested is not None

        def one(args: tuple[SubCallRequest, SubCallRecord]) -> SubCallReply:
            req, rec = args
            try:
                answer, sub_traj = self.nested(req.chunk, req.instruction, self.depth + 1)  # type: ignore[misc]
            except Exception as e:  # a nested run must not take the parent down
                rec.error = f"nested run failed: {type(e).__name__}: {e}"
                rec.error_kind = "nested"
                return SubCallReply(error=rec.error)
            rec.nested_trajectory = sub_traj
            rec.response = answer
            rec.latency_s = sub_traj.wall_s
            return SubCallReply(text=answer if answer is not None else "", error=None)

        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(reqs)))) as ex:
            return list(ex.map(one, zip(reqs, records)))
