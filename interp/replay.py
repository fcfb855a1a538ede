"""Replay agreement: does transformers (greedy) say what vLLM said for the recorded sub_call?

Activations are only evidence about the run if the replayed model behaves like the served one,
so every replayed sub_call is checked: exact text match and the first token where they diverge.
The recorded answer is re-tokenized (vLLM's own ids are not in the trajectory); for the Qwen
byte-level tokenizer that round-trips, so a divergence index is a real generation difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .model import ReplayModel


@dataclass
class ReplayResult:
    sample: str
    sub_call: int
    prompt_tokens: int
    recorded: str
    replayed: str
    exact_match: bool
    first_divergence: int | None  # token index into the answer; None when the token lists are equal
    recorded_tokens: int
    replayed_tokens: int

    def as_row(self) -> dict:
        return asdict(self)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where the token lists differ (or where the shorter one ends)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def replay_one(
    model: ReplayModel, sample: str, sub_call: int, prompt_ids: list[int], recorded: str, max_new_tokens: int
) -> ReplayResult:
    rec_ids = model.encode_answer(recorded)
    # One token past the recorded length shows whether HF would also have stopped there.
    budget = max(1, min(max_new_tokens, len(rec_ids) + 1))
    gen = model.greedy(prompt_ids, budget)
    text = model.tokenizer.decode(gen, skip_special_tokens=True)
    div = first_divergence(rec_ids, gen)
    return ReplayResult(
        sample=sample,
        sub_call=sub_call,
        prompt_tokens=len(prompt_ids),
        recorded=recorded,
        replayed=text,
        exact_match=text.strip() == recorded.strip(),
        first_divergence=div,
        recorded_tokens=len(rec_ids),
        replayed_tokens=len(gen),
    )


def agreement_summary(results: list[ReplayResult]) -> dict:
    n = len(results)
    if n == 0:
        return {"n": 0, "exact_match_rate": float("nan"), "token_match_rate": float("nan")}
    exact = sum(r.exact_match for r in results)
    tok = sum(r.first_divergence is None for r in results)
    divs = [r.first_divergence for r in results if r.first_divergence is not None]
    return {
        "n": n,
        "exact_match_rate": exact / n,
        "token_match_rate": tok / n,
        "median_first_divergence": (sorted(divs)[len(divs) // 2] if divs else None),
    }
