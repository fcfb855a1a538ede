"""How one example is answered: the RLM, and the baselines it is compared against.

Every method returns a :class:`Trajectory`, so the run folder, the scorer and the report treat them
alike. Baselines record their model calls as sub_calls (with chunk spans), which gives them token
counts and context utilization for free. Baselines that need a "strong" model use the controller
when it is a real model, and the worker when the controller is a replay (the CPU profiles); the
choice is recorded as ``answerer`` in the trajectory's ``models``.
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid
from typing import Any, Callable

from rlm_rig.configs.schema import METHOD_NAMES
from rlm_rig.controller.loop import _now
from rlm_rig.records.trajectory import SubCallRecord, Trajectory
from rlm_rig.controller.backends import ReplayLM
from rlm_rig.controller.rig import Rig
from rlm_rig.worker.watch import failure_kind

METHODS = METHOD_NAMES  # one list of names, in configs (a profile's eval.method is checked against it)


def _base_traj(rig: Rig, doc: str, question: str, run_id: str, answerer: str,
               instructions: str | None = None) -> Trajectory:
    ctx = rig.context()
    return Trajectory(
        run_id=run_id,
        question=question,
        task_instructions=instructions,
        doc_chars=len(doc),
        doc_sha256=hashlib.sha256(doc.encode("utf-8", "surrogatepass")).hexdigest(),
        config=rig.cfg.model_dump(mode="json"),
        config_hash=rig.cfg.hash(),
        models={**ctx.models, "answerer": answerer},
        versions=ctx.versions,
        started_at=_now(),
    )


class _Answerer:
    """Sends one prompt to the controller model, or to the worker when the controller is a replay."""

    def __init__(self, rig: Rig, traj: Trajectory):
        self.rig = rig
        self.traj = traj
        self.use_worker = isinstance(rig.lm, ReplayLM)
        self.name = "worker" if self.use_worker else "controller"

    def window_tokens(self) -> int:
        """How many prompt tokens the answering model may take."""
        cfg = self.rig.cfg
        if self.use_worker:
            return cfg.worker.server.max_model_len - cfg.worker.max_tokens - 32
        server = cfg.controller.server
        window = server.max_model_len if server else 32768
        return window - cfg.controller.max_new_tokens - 32

    def ask(self, content: str, *, span: tuple[int | None, int | None], chunk_chars: int) -> str:
        messages = [{"role": "user", "content": content}]
        t0 = time.perf_counter()
        rec = SubCallRecord(
            id=len(self.traj.sub_calls), cell=-1, depth=1, chunk_start=span[0], chunk_end=span[1],
            chunk_chars=chunk_chars, instruction="(baseline prompt)", messages=messages,
        )
        self.traj.sub_calls.append(rec)
        try:
            if self.use_worker:
                c = self.rig.worker.chat_many([messages], max_tokens=self.rig.cfg.worker.max_tokens)[0]
                if isinstance(c, BaseException):
                    raise c
                rec.response, rec.prompt_tokens, rec.completion_tokens = c.text, c.prompt_tokens, c.completion_tokens
            else:
                g = self.rig.lm.generate(messages, max_new_tokens=self.rig.cfg.controller.max_new_tokens)  # type: ignore[union-attr]
                rec.response, rec.prompt_tokens, rec.completion_tokens = g.text, g.prompt_tokens, g.completion_tokens
        except Exception as e:
            rec.error = f"{type(e).__name__}: {e}"
            rec.error_kind = failure_kind(e)
            raise
        finally:
            rec.latency_s = time.perf_counter() - t0
            self.traj.model_wall_s += rec.latency_s
        return rec.response or ""


def truncate_to_tokens(text: str, max_tokens: int, count: Callable[[str], int], rule: str) -> tuple[str, int, int]:
    """Cut ``text`` to about ``max_tokens`` by a named rule (head, tail, middle). Returns (text, start, end).

    Works in characters scaled by the measured chars/token, then trims until the count fits, so a
    5M-character document is tokenized only a few times.
    """
    total = count(text)
    if total <= max_tokens:
        return text, 0, len(text)
    keep = int(len(text) * max_tokens / total)
    for _ in range(20):
        if rule == "head":
            start, end = 0, keep
        elif rule == "tail":
            start, end = len(text) - keep, len(text)
        elif rule == "middle":  # keep both ends, drop the middle: the span recorded is the head part
            half = keep // 2
            cut = text[:half] + "\n...\n" + text[len(text) - half :]
            if count(cut) <= max_tokens:
                return cut, 0, half
            keep = int(keep * 0.95)
            continue
        else:
            raise ValueError(f"unknown truncation rule {rule!r} (head, tail, middle)")
        if count(text[start:end]) <= max_tokens:
            return text[start:end], start, end
        keep = int(keep * 0.95)
    raise RuntimeError("could not truncate the document to the window")


def split_chunks(doc: str, max_chars: int) -> list[tuple[int, int]]:
    """Chunk spans on line boundaries (a line longer than max_chars is cut hard)."""
    spans: list[tuple[int, int]] = []
    start = 0
    n = len(doc)
    while start < n:
        end = min(n, start + max_chars)
        if end < n:
            nl = doc.rfind("\n", start, end)
            if nl > start:
                end = nl + 1
        spans.append((start, end))
        start = end
    return spans


def _chunk_chars(rig: Rig, doc: str) -> int:
    from rlm_rig.controller.loop import estimate_chars_per_token

    if rig.cfg.eval.chunk_chars:
        return rig.cfg.eval.chunk_chars
    return max(200, int(rig.cfg.chunk_budget() * estimate_chars_per_token(doc, rig.count_tokens) * 0.9))


def run_direct(rig: Rig, doc: str, question: str, run_id: str, instructions: str | None = None) -> Trajectory:
    """The official single-call input (document, newline, question). When the document does not fit,
    only the part after the task instructions is cut, so the model always keeps the answer format."""
    traj = _base_traj(rig, doc, question, run_id, "", instructions)
    ans = _Answerer(rig, traj)
    traj.models["answerer"] = ans.name
    t0 = time.perf_counter()
    rule = rig.cfg.eval.direct_truncation
    head = instructions if instructions and doc.startswith(instructions) else ""
    if instructions and not head:  # a generated set: its instructions are not in the document
        question = f"{instructions}\n{question}"
    q_tokens = rig.count_tokens(question) + 8
    if head:
        q_tokens += rig.count_tokens(head)
    text, start, end = truncate_to_tokens(doc[len(head):], ans.window_tokens() - q_tokens, rig.count_tokens, rule)
    start, end = start + len(head), end + len(head)
    truncated = (start, end) != (len(head), len(doc))
    if head:
        text = head + text
        start = 0 if start == len(head) else start
    if truncated:
        from rlm_rig.records.trajectory import CapEvent

        traj.caps_hit.append(CapEvent(cap="chunk_tokens", turn=0, detail=f"document truncated by rule {rule!r}: kept {len(text)} of {len(doc)} chars"))
    traj.final_answer = ans.ask(text + "\n" + question, span=(start, end), chunk_chars=len(text))
    traj.stop_reason = "final"
    traj.wall_s = time.perf_counter() - t0
    traj.finished_at = _now()
    return traj


def _first_line_answer(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def run_chunk_aggregate(rig: Rig, doc: str, question: str, run_id: str, instructions: str | None = None) -> Trajectory:
    """A fixed map over all chunks by the worker (chunk + question), then one reduce call over the
    per-chunk answers that also carries the task instructions (they hold the answer format)."""
    traj = _base_traj(rig, doc, question, run_id, "", instructions)
    t0 = time.perf_counter()
    spans = split_chunks(doc, _chunk_chars(rig, doc))
    from rlm_rig.controller.prompts import worker_messages

    instruction = (
        f"{question}\nAnswer only from this excerpt of the document (it is one part of many). "
        "If the question asks for a count, give the count within this excerpt. Be brief."
    )
    batch = [worker_messages(doc[s:e], instruction, rig.cfg.worker.system_prompt) for s, e in spans]
    tm = time.perf_counter()
    results = rig.worker.chat_many(batch, max_tokens=rig.cfg.worker.max_tokens)
    traj.model_wall_s += time.perf_counter() - tm
    partials = []
    for (s, e), msgs, res in zip(spans, batch, results):
        rec = SubCallRecord(id=len(traj.sub_calls), cell=-1, depth=1, batch=0, chunk_start=s, chunk_end=e,
                            chunk_chars=e - s, instruction=instruction, messages=msgs)
        if isinstance(res, BaseException):
            rec.error = f"{type(res).__name__}: {res}"
            rec.error_kind = failure_kind(res)
        else:
            rec.response, rec.prompt_tokens, rec.completion_tokens, rec.latency_s = (
                res.text, res.prompt_tokens, res.completion_tokens, res.latency_s)
            partials.append(res.text)
        traj.sub_calls.append(rec)
    ans = _Answerer(rig, traj)
    traj.models["answerer"] = ans.name
    listing = "\n".join(f"Part {i + 1}: {_first_line_answer(p)}" for i, p in enumerate(partials))
    task = f"Task instructions:\n{instructions}\n\n" if instructions else ""
    reduce_prompt = (
        f"{task}A long document was split into {len(spans)} parts, and a reader answered the question below for each "
        f"part separately.\n\nQuestion: {question}\n\nPer-part answers:\n{listing}\n\n"
        "Combine the per-part answers into one answer to the question (add up counts where the question asks "
        "for a total)." + (" Give the final answer in the format the task instructions ask for." if instructions else "")
    )
    traj.final_answer = ans.ask(reduce_prompt, span=(None, None), chunk_chars=0)
    traj.stop_reason = "final"
    traj.wall_s = time.perf_counter() - t0
    traj.finished_at = _now()
    return traj


_TOKEN = re.compile(r"\w+")


def run_bm25_rag(rig: Rig, doc: str, question: str, run_id: str, instructions: str | None = None) -> Trajectory:
    """Retrieve the top-k chunks for the question with BM25 (bm25s), then answer from them, with the
    task instructions on top (a retrieved excerpt rarely holds them)."""
    import bm25s

    traj = _base_traj(rig, doc, question, run_id, "", instructions)
    t0 = time.perf_counter()
    spans = split_chunks(doc, _chunk_chars(rig, doc))
    corpus = [doc[s:e] for s, e in spans]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    k = min(rig.cfg.eval.top_k, len(corpus))
    idx, _scores = retriever.retrieve(bm25s.tokenize([question], stopwords="en", show_progress=False), k=k, show_progress=False)
    chosen = sorted(int(i) for i in idx[0])
    ans = _Answerer(rig, traj)
    traj.models["answerer"] = ans.name
    budget = ans.window_tokens() - rig.count_tokens(question) - 64 - (rig.count_tokens(instructions) if instructions else 0)
    parts: list[str] = []
    used = 0
    for i in chosen:  # in document order, until the window is full
        t = rig.count_tokens(corpus[i])
        if used + t > budget:
            break
        parts.append(corpus[i])
        used += t
    context = "\n...\n".join(parts)
    task = f"{instructions}\n\n" if instructions else ""
    traj.final_answer = ans.ask(
        f"{task}Excerpts retrieved from a long document:\n{context}\n\n{question}", span=(None, None), chunk_chars=len(context)
    )
    # the spans the answer was read from, as zero-cost records (for context utilization)
    for i in chosen[: len(parts)]:
        traj.sub_calls.append(SubCallRecord(id=len(traj.sub_calls), cell=-1, depth=1, chunk_start=spans[i][0],
                                            chunk_end=spans[i][1], chunk_chars=spans[i][1] - spans[i][0],
                                            instruction="(retrieved)", response=None))
    traj.stop_reason = "final"
    traj.wall_s = time.perf_counter() - t0
    traj.finished_at = _now()
    return traj


def run_method(method: str, rig: Rig, doc: str, question: str, *, run_id: str | None = None,
               save_to: Any = None, instructions: str | None = None) -> Trajectory:
    """``instructions``: the dataset's task instructions (see experiments/datasets/views.py for what
    each method shows to which model)."""
    run_id = run_id or uuid.uuid4().hex[:12]
    if method == "rlm":
        return rig.ask(doc, question, run_id=run_id, save_to=save_to, instructions=instructions)
    if method == "no-subcall":
        return rig.ask(doc, question, run_id=run_id, save_to=save_to, sub_calls=False, instructions=instructions)
    fn = {"direct": run_direct, "chunk-aggregate": run_chunk_aggregate, "bm25-rag": run_bm25_rag}.get(method)
    if fn is None:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        traj = fn(rig, doc, question, run_id, instructions)
    except Exception as e:
        traj = _base_traj(rig, doc, question, run_id, "", instructions)
        traj.stop_reason = "error"
        traj.error = f"{type(e).__name__}: {e}"
        traj.error_kind = failure_kind(e)
        traj.finished_at = _now()
    if save_to is not None:
        traj.save(save_to)
    return traj


__all__ = ["METHODS", "run_method", "split_chunks", "truncate_to_tokens"]
