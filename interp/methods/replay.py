"""Replay agreement: does transformers (greedy) say what vLLM said for the recorded sub_call?

Activations are only evidence about the run if the replayed model behaves like the served one,
so every replayed sub_call is checked: exact text match and the first token where they diverge.
vLLM's own ids are not in the trajectory, so the divergence is found in text: the first replayed
token after which the replay stops being a prefix of the recorded answer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from rlm_rig.interp.model import ReplayModel


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
    truncated: bool | None = None  # the record stopped at max_tokens (None: unknown)
    prefix_match: bool = False  # one text is a prefix of the other: they agree as far as both go

    def as_row(self) -> dict:
        return asdict(self)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where the token lists differ (or where the shorter one ends)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def text_divergence(model: ReplayModel, gen: list[int], recorded: str) -> int | None:
    """First generated token after which the replay's text stops being a prefix of the recorded text.

    Compared as text, because a recorded answer does not always re-tokenize into the ids vLLM
    generated (byte-level merges across token boundaries). None when the texts are equal;
    len(gen) when the replay is a strict prefix of the record (it stopped early)."""
    for k in range(len(gen)):
        if not recorded.startswith(model.tokenizer.decode(gen[: k + 1], skip_special_tokens=True)):
            return k
    return None if model.tokenizer.decode(gen, skip_special_tokens=True) == recorded else len(gen)


def replay_one(
    model: ReplayModel, sample: str, sub_call: int, prompt_ids: list[int], recorded: str, max_new_tokens: int,
    *, truncated: bool | None = None, completion_tokens: int | None = None,
) -> ReplayResult:
    """Greedy replay of one sub_call. A record cut off at max_tokens is replayed to the same length
    (vLLM's `completion_tokens` when recorded); otherwise one token further, which shows whether HF
    would also have stopped there."""
    n_rec = completion_tokens if completion_tokens else len(model.encode_answer(recorded))
    budget = max(1, min(max_new_tokens, n_rec + (0 if truncated else 1)))
    gen = model.greedy(prompt_ids, budget)
    text = model.tokenizer.decode(gen, skip_special_tokens=True)
    div = text_divergence(model, gen, recorded)
    return ReplayResult(
        sample=sample,
        sub_call=sub_call,
        prompt_tokens=len(prompt_ids),
        recorded=recorded,
        replayed=text,
        exact_match=text.strip() == recorded.strip(),
        first_divergence=div,
        recorded_tokens=n_rec,
        replayed_tokens=len(gen),
        truncated=truncated,
        prefix_match=div is None or div == len(gen) or recorded.startswith(text),
    )


def agreement_summary(results: list[ReplayResult]) -> dict:
    n = len(results)
    if n == 0:
        return {"n": 0, "exact_match_rate": float("nan"), "token_match_rate": float("nan"),
                "prefix_match_rate": float("nan"), "median_first_divergence": None}
    exact = sum(r.exact_match for r in results)
    tok = sum(r.first_divergence is None for r in results)
    divs = [r.first_divergence for r in results if r.first_divergence is not None]
    return {
        "n": n,
        "exact_match_rate": exact / n,
        "token_match_rate": tok / n,
        "prefix_match_rate": sum(r.prefix_match for r in results) / n,
        "median_first_divergence": (sorted(divs)[len(divs) // 2] if divs else None),
    }
