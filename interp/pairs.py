"""Clean/corrupt prompt pairs for activation patching, built from real sub_call chunks.

A pair differs in one local edit of the chunk (one roll mention removed, added or altered) and
has the same token length, so every position of one run has a counterpart in the other. The
answer is teacher-forced up to the first token where the clean and corrupt answers differ; the
metric reads the logits of those two tokens at the last position.

User-defined corruptions plug in at two levels:
- chunk level: ``fn(chunk: str, rng) -> iterable of str | ChunkEdit`` (first equal-length one wins);
- token level: ``fn(prompt_ids: list[int]) -> list[int]`` of the same length.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .model import Prompt, ReplayModel
from .rolls import CORRUPTIONS, ChunkEdit, count_roll_lines, first_number_span, is_roll_count_instruction, parse_roll_query
from .runs import SubCallItem

ChunkCorruption = Callable[[str, random.Random], Iterable["str | ChunkEdit"]]
TokenCorruption = Callable[[list[int]], list[int]]


@dataclass
class Pair:
    pair_id: str
    run: str
    sample: str
    sub_call: int
    corruption: str
    description: str
    clean_ids: list[int]
    corrupt_ids: list[int]
    clean_target: str
    corrupt_target: str
    clean_token: int  # the answer token whose logit "clean" predicts ...
    corrupt_token: int  # ... and its corrupt counterpart, at the last position
    prompt_len: int
    positions: dict[str, list[int]] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return len(self.clean_ids)


def message_text(item: SubCallItem) -> str:
    """All message text of a sub_call: where a player/character map line may be found."""
    return "\n".join(m["content"] for m in item.messages if isinstance(m.get("content"), str))


def answer_prefix(response: str | None) -> str:
    """The recorded answer up to its number ("There are " of "There are 3 rolls"): teacher-forced so
    the metric is read exactly where the worker wrote its count."""
    if not response:
        return ""
    span = first_number_span(response)
    return response[: span[0]] if span else ""


def _targets(model: ReplayModel, prefix: str, clean: str, corrupt: str) -> tuple[list[int], int, int] | None:
    a = model.encode_answer(prefix + clean)
    b = model.encode_answer(prefix + corrupt)
    j = 0
    while j < min(len(a), len(b)) and a[j] == b[j]:
        j += 1
    if j >= len(a) or j >= len(b):
        return None
    return a[:j], a[j], b[j]


def _positions(clean: list[int], corrupt: list[int], chunk_tokens: list[int], prompt_len: int) -> dict[str, list[int]]:
    t = len(clean)
    edit = [i for i in range(t) if clean[i] != corrupt[i]]
    if not edit:
        return {}
    lo, hi = min(edit), max(edit)
    chunk = set(chunk_tokens)
    cend = max(chunk_tokens) if chunk_tokens else hi
    pos: dict[str, list[int]] = {
        "chunk_before": [i for i in range(lo) if i in chunk],
        "edit": edit,
        "edit_next": [hi + 1] if hi + 1 < t - 1 else [],
        "chunk_after": [i for i in range(hi + 2, t - 1) if i in chunk],
        "post_chunk": [i for i in range(max(cend, hi + 1) + 1, t - 1) if i not in edit],
        "last": [t - 1],
        "all": list(range(t)),
        "none": [],
    }
    for k in range(1, min(t, 16)):
        pos[f"last-{k}"] = [t - 1 - k]
    return pos


def _chunk_token_span(prompt: Prompt, item: SubCallItem) -> list[int]:
    loc = item.chunk_loc
    if loc is None or prompt.content_starts[loc.message] is None:
        return []
    base = prompt.content_starts[loc.message]
    return prompt.token_span(base + loc.start, base + loc.end)


def build_pair(
    model: ReplayModel,
    item: SubCallItem,
    corrupt_chunk: str,
    *,
    clean_target: str,
    corrupt_target: str,
    corruption: str = "custom",
    description: str = "",
    prefix: str | None = None,
    pair_id: str | None = None,
) -> Pair | None:
    """Pair from a chunk-level edit. None when token lengths differ or the targets do not differ."""
    if item.chunk_loc is None:
        raise ValueError(f"sub_call {item.ref}: chunk not found in its messages; cannot corrupt it")
    if clean_target == corrupt_target:
        return None
    loc = item.chunk_loc
    msgs = copy.deepcopy(item.messages)
    c = msgs[loc.message]["content"]
    msgs[loc.message]["content"] = c[: loc.start] + corrupt_chunk + c[loc.end :]
    p_clean = model.render(item.messages)
    p_corr = model.render(msgs)
    if len(p_clean.ids) != len(p_corr.ids) or p_clean.ids == p_corr.ids:
        return None
    return _finish(model, item, p_clean, p_corr.ids, clean_target, corrupt_target, corruption, description, prefix, pair_id)


def build_token_pair(
    model: ReplayModel,
    item: SubCallItem,
    fn: TokenCorruption,
    *,
    clean_target: str,
    corrupt_target: str,
    corruption: str = "custom_tokens",
    description: str = "",
    prefix: str | None = None,
    pair_id: str | None = None,
) -> Pair | None:
    """Pair from a function over prompt token ids (must keep the length)."""
    p_clean = model.render(item.messages)
    corrupt = list(fn(list(p_clean.ids)))
    if len(corrupt) != len(p_clean.ids):
        raise ValueError(f"token corruption changed the length {len(p_clean.ids)} -> {len(corrupt)}; keep it equal")
    if corrupt == p_clean.ids or clean_target == corrupt_target:
        return None
    return _finish(model, item, p_clean, corrupt, clean_target, corrupt_target, corruption, description, prefix, pair_id)


def _finish(model, item, p_clean, corrupt_prompt_ids, clean_target, corrupt_target, corruption, description, prefix,
            pair_id) -> Pair | None:
    tg = _targets(model, answer_prefix(item.response) if prefix is None else prefix, clean_target, corrupt_target)
    if tg is None:
        return None
    forced, ct, xt = tg
    clean_ids = list(p_clean.ids) + forced
    corrupt_ids = list(corrupt_prompt_ids) + forced
    positions = _positions(clean_ids, corrupt_ids, _chunk_token_span(p_clean, item), len(p_clean.ids))
    if not positions:
        return None
    return Pair(
        pair_id=pair_id or f"{item.sample}:{item.sub_call}:{corruption}",
        run=item.run, sample=item.sample, sub_call=item.sub_call, corruption=corruption, description=description,
        clean_ids=clean_ids, corrupt_ids=corrupt_ids, clean_target=clean_target, corrupt_target=corrupt_target,
        clean_token=ct, corrupt_token=xt, prompt_len=len(p_clean.ids), positions=positions,
    )


def pairs_from_chunk_corruption(
    model: ReplayModel,
    item: SubCallItem,
    fn: ChunkCorruption,
    target_fn: Callable[[str], str],
    *,
    rng: random.Random,
    corruption: str = "custom",
    max_tries: int = 40,
) -> Pair | None:
    """First equal-length pair among `fn`'s candidate edits; `target_fn(chunk)` gives each answer."""
    chunk = item.chunk_text
    if chunk is None:
        return None
    clean_target = target_fn(chunk)
    for n, cand in enumerate(fn(chunk, rng)):
        if n >= max_tries:
            break
        text, desc = (cand.text, cand.description) if isinstance(cand, ChunkEdit) else (cand, "")
        pair = build_pair(model, item, text, clean_target=clean_target, corrupt_target=target_fn(text),
                          corruption=corruption, description=desc)
        if pair is not None:
            return pair
    return None


def build_counting_pairs(
    model: ReplayModel,
    items: Iterable[SubCallItem],
    *,
    n_pairs: int,
    corruptions: list[str],
    seed: int = 0,
    max_tokens: int | None = None,
) -> tuple[list[Pair], dict[str, int]]:
    """Default pairs for roll-counting sub_calls: one pair per (sub_call, corruption), round-robin,
    until `n_pairs`. Returns the pairs and a tally of why candidates were skipped."""
    rng = random.Random(seed)
    items = [it for it in items if it.chunk_text is not None]
    rng.shuffle(items)
    skipped = {"not_a_roll_count": 0, "filter_not_checkable": 0, "too_long": 0, "no_equal_length_edit": 0,
               "alter_without_value_filter": 0}
    pairs: list[Pair] = []
    for it in items:
        if not is_roll_count_instruction(it.instruction):
            skipped["not_a_roll_count"] += 1
            continue
        query = parse_roll_query(it.instruction, message_text(it))
        if query is None:
            skipped["filter_not_checkable"] += 1
            continue
        if max_tokens is not None and len(model.render(it.messages).ids) > max_tokens:
            skipped["too_long"] += 1
            continue
        for name in corruptions:
            if name not in CORRUPTIONS:
                raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
            if name == "alter" and query.value is None:
                skipped["alter_without_value_filter"] += 1
                continue
            fn = CORRUPTIONS[name]
            pair = pairs_from_chunk_corruption(
                model, it, lambda ch, r, fn=fn: fn(ch, r, query),
                lambda ch: str(count_roll_lines(ch, query)), rng=rng, corruption=name,
            )
            if pair is None:
                skipped["no_equal_length_edit"] += 1
                continue
            pairs.append(pair)
            if len(pairs) >= n_pairs:
                return pairs, skipped
    return pairs, skipped
