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


@dataclass
class Route:
    """One worker a call may go to (a profile's ``workers:`` entry, or its one ``worker:``), by name."""

    name: str
    client: ChatMany | None
    max_tokens: int
    system: str | None = None
    sampling_by_depth: dict[int, Any] = field(default_factory=dict)  # depth -> worker.settings.Sampling

    def sampling_at(self, depth: int) -> dict[str, Any]:
        """Request fields for a call made at ``depth`` (1: from the root run); empty: the client's own."""
        s = self.sampling_by_depth.get(depth)
        return s.request() if s is not None else {}


class UnknownModel(ValueError):
    """A call named a model the profile does not serve."""


def route_for(routes: dict[str, Route], model: str | None, default: str) -> Route:
    """The worker a call goes to: the one it names with ``model=``, else the default. The one place a
    model name becomes a client, for sub_call and the official dialect's llm_query alike."""
    name = default if model is None else model
    if name not in routes:
        raise UnknownModel(f"unknown model {model!r}: this rig serves {', '.join(sorted(routes))}")
    return routes[name]


# (chunk, instruction, depth) -> (answer text, nested trajectory as dict)
NestedRunner = Callable[[str, str, int], tuple[str | None, dict[str, Any]]]


def _agree(a: str, i: int, b: str, j: int, backward: bool = False) -> int:
    """How many characters ``a`` and ``b`` agree on going forward from ``a[i]``/``b[j]`` (or backward from
    just before them): a binary search over slice comparisons, O(n log n) in C instead of a Python loop."""
    lo, hi = 0, min(i, j) if backward else min(len(a) - i, len(b) - j)
    while lo < hi:
        k = (lo + hi + 1) // 2
        same = a[i - k:i] == b[j - k:j] if backward else a[i:i + k] == b[j:j + k]
        lo, hi = (k, hi) if same else (lo, k - 1)
    return lo


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
        concurrency: int = 8,
        chunk_tokens: ChunkTokens | None = None,
        dialect: str = "rig",
        rlm_nested: NestedRunner | None = None,
        locate: Callable[[int], tuple[int | str | None, int | None]] | None = None,
        clip: Callable[[int, int], tuple[int, int]] | None = None,
        routes: dict[str, Route] | None = None,
        default_model: str = "worker",
        deadline: float | None = None,
        low_confidence: str = "off",
        low_confidence_threshold: float = 0.5,
        decode_token: Callable[[int], str] | None = None,
    ):
        """``rlm_nested``: the child RLM of an ``rlm_query`` (None at the depth limit: it then runs as a plain
        worker call, recorded so); sub_call and llm_query are one-shot in every dialect.
        ``locate``: a list/dict context's (item, offset) of a position in the joined text."""
        self.doc = doc
        self.traj = traj
        self.worker = worker
        self.count_tokens = count_tokens
        self.budget_tokens = budget_tokens
        self.budget = budget
        self.depth = depth
        self.worker_max_tokens = worker_max_tokens
        self.worker_system = worker_system
        self.concurrency = concurrency
        self.dialect = dialect
        self.rlm_nested = rlm_nested
        self.locate = locate
        self.clip = clip
        # the cap check: from the chunk's length where its bound settles it, else an exact count
        self.chunk_tokens = chunk_tokens if chunk_tokens is not None else ChunkTokens(count_tokens)
        self._next = 0  # where the last located chunk ended: the next one usually starts there
        self.cell = 0
        self.turn = 0
        self._batch_no = 0
        # the workers by name: the profile's workers map, or the one worker given above
        self.default_model = default_model
        self.deadline = deadline  # perf_counter time the run's wall clock ends (shared with children); None: none
        self.routes = routes or {default_model: Route(default_model, worker, worker_max_tokens, worker_system)}
        self.low_confidence, self.low_confidence_threshold = low_confidence, low_confidence_threshold
        self.decode_token = decode_token  # the worker's tokenizer, one id -> text: finds a reply's answer tokens
        self.notes: list[str] = []  # lines for the current cell's feedback (the `tell` policy); the loop takes them

    def _cap(self, cap: str, detail: str) -> None:
        last = self.traj.caps_hit[-1] if self.traj.caps_hit else None
        if last is not None and last.cap == cap and last.turn == self.turn:
            last.repeats += 1  # one event per cap and turn: a flood of refused calls costs a counter
            return
        self.traj.caps_hit.append(CapEvent(cap=cap, turn=self.turn, detail=detail))  # type: ignore[arg-type]

    def _span(self, chunk: str) -> tuple[int | None, int | None]:
        """Where ``chunk`` sits in the document. Programs send consecutive slices, so the place after the
        previous chunk is checked first (O(chunk)); a search of the whole document is the fallback. A chunk
        whose text occurs more than once has no one place: (None, None), never a guess (the ledger and the
        document map would credit the wrong item)."""
        if not chunk:
            return None, None
        i = self._next if self.doc.startswith(chunk, self._next) else self.doc.find(chunk)
        if i < 0:
            return None, None
        if self.doc.find(chunk, i + 1) >= 0 or self.doc.rfind(chunk, 0, i + len(chunk) - 1) >= 0:
            return None, None
        self._next = i + len(chunk)
        return i, i + len(chunk)

    def _route(self, reqs: list[SubCallRequest]) -> tuple[NestedRunner | None, str | None]:
        """(the nested runner these requests go to, or None for plain worker calls; the fallback to record)."""
        kind = reqs[0].kind if reqs else "llm"
        if kind == "rlm":
            return (self.rlm_nested, None) if self.rlm_nested is not None else (None, "max_depth")
        return None, None  # sub_call / llm_query are one-shot in every dialect: recursion is rlm_query's

    def _messages(self, r: SubCallRequest, route: Route) -> list[dict[str, str]]:
        """The official dialect's calls send the prompt alone, as one user message (what its library sends)."""
        if self.dialect == "official" or r.kind == "rlm":
            return [{"role": "user", "content": r.chunk}]
        return worker_messages(r.chunk, r.instruction, route.system)

    def _span_inside(self, prompt: str, probe: int = 32, tries: int = 16) -> tuple[int | None, int | None]:
        """Where the document text *inside* an official-dialect prompt lies ("instruction + slice"): the middle
        of the prompt is searched for, each match grown both ways while prompt and document agree, and the
        longest of the first ``tries`` matches kept (documents repeat themselves: dice rolls, log lines)."""
        start, end = self._span(prompt)
        if start is not None or len(prompt) < 2 * probe:
            return start, end
        mid = len(prompt) // 2 - probe // 2
        needle, doc, best = prompt[mid:mid + probe], self.doc, (None, None)
        at = doc.find(needle)
        for _ in range(tries):
            if at < 0:
                break
            # grown both ways by slice comparisons (C speed, a binary search each): per-character Python loops
            # made one 2M-character prompt cost the parent seconds
            lo = at - _agree(doc, at, prompt, mid, backward=True)
            hi = at + probe + _agree(doc, at + probe, prompt, mid + probe)
            if best[0] is None or hi - lo > best[1] - best[0]:  # type: ignore[operator]
                best = (lo, hi)
            at = doc.find(needle, at + 1)
        if best[0] is not None and self.clip is not None:
            return self.clip(best[0], best[1])  # type: ignore[arg-type]
        return best

    def route_of(self, r: SubCallRequest) -> Route:
        """The worker a request goes to (UnknownModel for a name the profile does not serve)."""
        return route_for(self.routes, r.model, self.default_model)

    def _over_budget(self, n: int) -> list[SubCallReply]:
        msg = (f"sub_call limit reached: {self.budget.used} of {self.budget.limit} used, this call needs {n}. "
               "Nothing was sent; finish with what you have")
        self._cap("sub_calls", msg)
        return [SubCallReply(error=msg) for _ in range(n)]

    def _over_cap(self, reqs: list[SubCallRequest], nested: bool) -> list[SubCallReply] | None:
        """The chunk cap on what the worker would read (a nested RLM reads its chunk through its own REPL, so
        only its instruction is capped); None when every request fits. Sets ``self._tokens`` (chunk tokens)."""
        checks = ([(None, False)] * len(reqs) if nested
                  else self.chunk_tokens.check_many([r.chunk for r in reqs], self.budget_tokens))
        # the instruction is read too: one over the budget on its own is refused (a 19M-character instruction
        # with a small chunk used to pass and be kept in the records)
        instr = self.chunk_tokens.check_many([r.instruction for r in reqs], self.budget_tokens)
        self._tokens = [t for t, _ in checks]
        over = [(i, t) for i, (t, is_over) in enumerate(checks) if is_over]
        over += [(i, t) for i, (t, is_over) in enumerate(instr) if is_over]
        if not over:
            return None
        detail = ", ".join(f"#{i}: {t} tokens" for i, t in over[:5])
        msg = (f"chunk too large: the worker reads at most {self.budget_tokens} tokens per chunk and per "
               f"instruction ({detail}). Nothing in this call was sent; split the chunk(s) smaller")
        self._cap("chunk_tokens", msg)
        return [SubCallReply(error=msg) for _ in reqs]

    # long: the parent-side caps checked in order (count, batch, chunk size, depth) before any request leaves
    def __call__(self, reqs: list[SubCallRequest]) -> list[SubCallReply]:
        nested, fallback = self._route(reqs)
        if self.worker is None and nested is None:
            return [SubCallReply(error="sub_call is disabled in this run (no-subcall method)") for _ in reqs]
        batch_id = None
        if len(reqs) > 1 or (reqs and reqs[0].index_in_batch is not None):
            batch_id = self._batch_no
            self._batch_no += 1
        try:
            routes = [route_for(self.routes, r.model, self.default_model) for r in reqs]
        except UnknownModel as e:
            return [SubCallReply(error=f"{e}. Nothing in this call was sent") for _ in reqs]
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            msg = "the time for this question is used up: nothing was sent; finish with what you have"
            self._cap("wall_clock", msg)
            return [SubCallReply(error=msg) for _ in reqs]
        # Refusals are decided before any work on the texts (locating, counting): a kernel flooding calls past
        # the budget must cost the parent a comparison per message, not a document search per chunk.
        if self.budget.used + len(reqs) > self.budget.limit:
            return self._over_budget(len(reqs))
        too_long = self._over_cap(reqs, nested is not None)
        if too_long is not None:
            return too_long
        if not self.budget.take(len(reqs)):
            return self._over_budget(len(reqs))
        spans = [self._span_inside(r.chunk) if self.dialect == "official" else self._span(r.chunk) for r in reqs]
        tokens = self._tokens
        records = []
        for r, t, (start, end), route in zip(reqs, tokens, spans, routes):
            item, offset = self.locate(start) if self.locate is not None and start is not None else (None, None)
            rec = SubCallRecord(
                id=len(self.traj.sub_calls),
                cell=self.cell,
                depth=self.depth + 1,
                kind="rlm" if (nested is not None or r.kind == "rlm") else "llm",
                model=route.name,
                fallback=fallback,
                batch=batch_id,
                chunk_start=start,
                chunk_end=end,
                chunk_item=item,
                chunk_item_offset=offset,
                chunk_chars=len(r.chunk),
                chunk_tokens=t,
                instruction=r.instruction,
            )
            self.traj.sub_calls.append(rec)
            records.append(rec)

        t0 = time.perf_counter()
        try:
            if nested is not None:
                return self._run_nested(reqs, records, nested)
            batch = [self._messages(r, route) for r, route in zip(reqs, routes)]
            results = self._send(batch, routes, records)
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
            rec.source = extra.get("source", "model")  # worker/tape.py: answered from a tape, or a fork's reply
            rec.confidence = answer_confidence(rec.token_ids, rec.token_logprobs, self.decode_token)
            replies.append(SubCallReply(text=res.text))
        return apply_low_confidence(self, reqs, records, replies)

    def take_notes(self) -> str:
        """The policy's feedback lines for the cell that just ran (empty when none), then forgets them."""
        notes, self.notes = self.notes, []
        return "".join("\n" + n for n in notes)

    def send_plain(self, reqs: list[SubCallRequest], records: list[SubCallRecord]) -> tuple[list[Any], list[Any]]:
        """Plain worker calls for ``reqs`` (no budget taken, no recursion, no caps): each to its request's worker,
        in the run's dialect, through the tape. Returns (messages sent, results or exceptions). The door for a
        policy that re-asks the worker after a batch (controller/confidence.py's resplit)."""
        routes = [self.route_of(r) for r in reqs]
        batch = [self._messages(r, route) for r, route in zip(reqs, routes)]
        return batch, self._send(batch, routes, records)

    def _send(self, batch: list[list[dict[str, str]]], routes: list[Route], records: list[SubCallRecord]) -> list[Any]:
        """Each worker's share of the batch through its own client (one chat_many per worker), in batch order."""
        results: list[Any] = [None] * len(batch)
        for name in dict.fromkeys(r.name for r in routes):
            idx = [i for i, r in enumerate(routes) if r.name == name]
            route = routes[idx[0]]
            sampling = route.sampling_at(self.depth + 1)
            for i in idx:
                records[i].sampling = sampling or None
            got = route.client.chat_many([batch[i] for i in idx], max_tokens=route.max_tokens,  # type: ignore[union-attr]
                                         **sampling)
            for i, res in zip(idx, got):
                results[i] = res
        return results

    def _run_nested(self, reqs: list[SubCallRequest], records: list[SubCallRecord],
                    nested: NestedRunner) -> list[SubCallReply]:
        def one(args: tuple[SubCallRequest, SubCallRecord]) -> SubCallReply:
            req, rec = args
            try:
                answer, sub_traj = nested(req.chunk, req.instruction, self.depth + 1)
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


@dataclass
class SharedTokens:
    """Controller tokens spent by a run and its nested runs together (rlm.max_controller_tokens bounds the sum)."""

    used: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    reserved: int = 0  # new tokens promised to generations in flight (concurrent child runs)

    def add(self, n: int) -> None:
        with self.lock:
            self.used += n

    def reserve(self, want: int, limit: int) -> int:
        """New tokens a generation may make now: what is left after what is spent and what others hold, so
        concurrent children (rlm_query_batched) cannot each spend the same remainder."""
        with self.lock:
            n = max(0, min(want, limit - self.used - self.reserved))
            self.reserved += n
            return n

    def settle(self, reserved: int, spent: int) -> None:
        with self.lock:
            self.reserved -= reserved
            self.used += spent
