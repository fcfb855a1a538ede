"""The worker's confidence in a reply, and the opt-in live policy that acts on it (``rlm.low_confidence``).

Confidence of a reply = the probability, under the served worker, of the reply's answer: exp(sum of the
logprobs vLLM recorded for the tokens of its first integer), found by decoding the recorded token ids with
the worker's tokenizer (`answer_confidence`). WHY not the whole reply: a 135M worker pads "12" into "The text
has 12 dice rolls.", and the probability of that wording (measured: ~0 for every reply) says nothing about
the 12. A reply without an integer ("NONE") or without a tokenizer at hand falls back to the whole reply's
probability (`reply_confidence`); a reply without recorded logprobs has no confidence (None), never a guess.

The policy (`RLMSettings.low_confidence`, threshold `low_confidence_threshold`):

- ``off`` (default): nothing changes; the confidence is still recorded on every SubCallRecord.
- ``tell``: the program gets the reply unchanged (its parsing keeps working), and the cell's feedback to
  the controller gets one line per cell listing each reply's confidence, the low ones marked.
- ``resplit``: a reply under the threshold is asked again as two halves of its chunk (cut at the line
  break nearest the middle); the program gets the halves combined: for a count instruction the sum of
  their integers, otherwise both replies on two lines. The halves are recorded as sub_calls with
  ``resplit_of`` = the first reply's id, and that reply's ``replaced_by`` holds what the program got.
  When a half fails or does not parse as an integer (counts), or the sub_call budget has no room for two
  more, the first reply stands.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

from rlm_rig.records.answers import find_int, int_spans

POLICIES = ("off", "tell", "resplit")
_COUNT = re.compile(r"\bhow many\b|\bcount\b|\bnumber of\b", re.IGNORECASE)


def reply_confidence(token_logprobs: Sequence[float] | None) -> float | None:
    """exp(sum of logprobs) of one reply, in [0, 1]; None when no logprobs were recorded or one is NaN
    (a -inf logprob is a probability of 0, and 0 it is)."""
    if not token_logprobs:
        return None
    try:
        total = math.fsum(float(x) for x in token_logprobs)
    except (TypeError, ValueError):  # a non-number, or +inf and -inf together
        return None
    if math.isnan(total):
        return None
    return 1.0 if total >= 0 else math.exp(total)


def answer_confidence(token_ids: Sequence[int] | None, token_logprobs: Sequence[float] | None,
                      decode: Callable[[int], str] | None) -> float | None:
    """The probability of the reply's answer: exp(sum of the logprobs of the tokens that overlap the reply's
    first integer), the tokens found by decoding each id with the worker's tokenizer (``decode``). A reply
    with no integer ("NONE"), or no tokenizer, falls back to the whole reply's probability."""
    if decode is None or not token_ids or not token_logprobs or len(token_ids) != len(token_logprobs):
        return reply_confidence(token_logprobs)
    pieces = [decode(int(i)) for i in token_ids]
    spans = int_spans("".join(pieces))
    if not spans:
        return reply_confidence(token_logprobs)
    start, end, _ = spans[0]
    picked, at = [], 0
    for piece, lp in zip(pieces, token_logprobs):
        if at < end and at + len(piece) > start:
            picked.append(lp)
        at += len(piece)
    return reply_confidence(picked)


def is_count_instruction(instruction: str) -> bool:
    """A count is combined by summing the halves; anything else is passed on as both replies."""
    return bool(_COUNT.search(instruction or ""))


def halves(chunk: str) -> tuple[str, str] | None:
    """Two halves of ``chunk`` that concatenate back to it, cut at the line break nearest the middle (else
    the space nearest it, else the middle). None for a chunk too short to split."""
    if len(chunk) < 2:
        return None
    mid = len(chunk) // 2
    for sep in ("\n", " "):
        left, right = chunk.rfind(sep, 0, mid), chunk.find(sep, mid)
        cands = [i + 1 for i in (left, right) if 0 <= i < len(chunk) - 1]
        if cands:
            cut = min(cands, key=lambda i: abs(i - mid))
            return chunk[:cut], chunk[cut:]
    return chunk[:mid], chunk[mid:]


def combine(instruction: str, texts: Sequence[str | None]) -> str | None:
    """What the program gets for a resplit chunk: the halves' integers summed (a count), else the replies
    on separate lines; None (keep the first reply) when a half has no reply or, for a count, no integer."""
    if any(t is None for t in texts):
        return None
    if is_count_instruction(instruction):
        parts = [find_int(t) for t in texts]
        return None if any(p is None for p in parts) else str(sum(parts))  # type: ignore[arg-type]
    return "\n".join(str(t).strip() for t in texts)


def tell_line(records: Sequence[Any], threshold: float) -> str | None:
    """The feedback line for ``tell``: each reply's confidence by sub_call id, those under the threshold marked."""
    parts = []
    for rec in records:
        c = rec.confidence
        if c is None:
            parts.append(f"#{rec.id} n/a")
        else:
            parts.append(f"#{rec.id} {c:.2f}" + (" LOW" if c < threshold else ""))
    if not parts:
        return None
    return (f"[rig] worker confidence per sub_call reply (probability of its answer; LOW < {threshold:g}): "
            + ", ".join(parts))


def apply_low_confidence(router: Any, reqs: Sequence[Any], records: Sequence[Any], replies: list[Any]) -> list[Any]:
    """The router's replies after the policy: unchanged for ``off``; ``tell`` adds a feedback note;
    ``resplit`` re-asks each low-confidence chunk in halves (one concurrent batch) and combines them."""
    policy, threshold = router.low_confidence, router.low_confidence_threshold
    if policy == "tell":
        line = tell_line([r for r in records if r.error is None], threshold)
        if line:
            router.notes.append(line)
        return replies
    if policy != "resplit":
        return replies
    low = [i for i, r in enumerate(records) if r.error is None and r.confidence is not None and r.confidence < threshold]
    cuts = {i: halves(reqs[i].chunk) for i in low}
    low = [i for i in low if cuts[i] is not None]
    if not low or not router.budget.take(2 * len(low)):
        return replies
    return _resplit(router, reqs, records, replies, low, cuts)


def _resplit(router: Any, reqs: Sequence[Any], records: Sequence[Any], replies: list[Any], low: list[int],
             cuts: dict[int, tuple[str, str] | None]) -> list[Any]:
    from dataclasses import replace

    from rlm_rig.records.trajectory import SubCallRecord
    from rlm_rig.repl.types import SubCallReply
    from rlm_rig.worker.watch import failure_kind

    jobs = []  # (index of the first reply, half number, half text, record)
    for i in low:
        parent, offset = records[i], 0
        for h, text in enumerate(cuts[i] or ()):
            start = None if parent.chunk_start is None else parent.chunk_start + offset
            rec = SubCallRecord(id=len(router.traj.sub_calls), cell=parent.cell, depth=parent.depth, batch=parent.batch,
                                kind=parent.kind, model=parent.model,
                                chunk_start=start, chunk_end=None if start is None else start + len(text),
                                chunk_chars=len(text), instruction=parent.instruction, resplit_of=parent.id)
            router.traj.sub_calls.append(rec)
            jobs.append((i, h, text, rec))
            offset += len(text)
    # each half goes where its chunk went: the same worker, in the run's dialect, through the tape
    batch, results = router.send_plain([replace(reqs[i], chunk=text) for i, _, text, _ in jobs],
                                       [rec for *_, rec in jobs])
    texts: dict[int, list[str | None]] = {i: [None, None] for i in low}
    for (i, h, _, rec), msgs, res in zip(jobs, batch, results):
        rec.messages = msgs
        if isinstance(res, BaseException):
            rec.error, rec.error_kind = f"{type(res).__name__}: {res}", failure_kind(res)
            continue
        extra = getattr(res, "extra", None) or {}
        rec.response, rec.prompt_tokens, rec.completion_tokens = res.text, res.prompt_tokens, res.completion_tokens
        rec.latency_s, rec.token_ids, rec.token_logprobs = res.latency_s, extra.get("token_ids"), extra.get("token_logprobs")
        rec.source = extra.get("source", "model")
        rec.confidence = answer_confidence(rec.token_ids, rec.token_logprobs, router.decode_token)
        texts[i][h] = res.text
    out = list(replies)
    for i in low:
        joined = combine(reqs[i].instruction, texts[i])
        if joined is not None:
            records[i].replaced_by = joined
            out[i] = SubCallReply(text=joined)
    return out
