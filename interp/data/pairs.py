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

from rlm_rig.interp.model import Prompt, ReplayModel
from rlm_rig.interp.data.rolls import CORRUPTIONS, ChunkEdit, count_roll_lines, first_number_span, is_roll_count_instruction, parse_roll_query
from rlm_rig.interp.data.selection import SubCallItem

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
    chunk: str = ""  # the chunk this pair came from (pairs of one chunk are not independent)
    edit_chars: tuple[int, int] | None = None  # char span of the edit in the clean chunk, when known
    answer_prefix_ids: list[int] = field(default_factory=list)  # the teacher-forced answer tokens

    def __post_init__(self) -> None:
        check_equal_length(self)

    @property
    def seq_len(self) -> int:
        return len(self.clean_ids)

    def record(self) -> dict:
        """Everything needed to rebuild the pair without the tokenizer or a text search."""
        return dict(pair=self.pair_id, run=self.run, sample=self.sample, sub_call=self.sub_call, chunk=self.chunk,
                    corruption=self.corruption, description=self.description, clean_target=self.clean_target,
                    corrupt_target=self.corrupt_target, clean_token=self.clean_token, corrupt_token=self.corrupt_token,
                    seq_len=self.seq_len, prompt_len=self.prompt_len, clean_ids=self.clean_ids,
                    corrupt_ids=self.corrupt_ids, answer_prefix_ids=self.answer_prefix_ids,
                    edit_chars=list(self.edit_chars) if self.edit_chars else None,
                    edit_tokens=self.positions.get("edit"),
                    positions={k: v for k, v in self.positions.items() if k not in ("all", "none")})


class UnequalLengthError(ValueError):
    """Clean and corrupt token sequences of different lengths: position i would not be the same token slot."""


def check_equal_length(pair: "Pair") -> None:
    if len(pair.clean_ids) != len(pair.corrupt_ids):
        raise UnequalLengthError(
            f"pair {pair.pair_id}: clean has {len(pair.clean_ids)} tokens and corrupt {len(pair.corrupt_ids)}; "
            "patching needs equal lengths (a padded position would be read). Use an edit that keeps the token count")


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


def chunk_key(item: SubCallItem) -> str:
    """The chunk a sub_call read: its document span when recorded, else the sub_call itself."""
    if item.chunk_start is not None and item.chunk_end is not None:
        return f"{item.sample}@{item.chunk_start}-{item.chunk_end}"
    return f"{item.sample}:{item.sub_call}"


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
    edit_chars: tuple[int, int] | None = None,
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
    pair = _finish(model, item, p_clean, p_corr.ids, clean_target, corrupt_target, corruption, description, prefix,
                   pair_id)
    if pair is not None:
        pair.edit_chars = edit_chars
    return pair


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
        chunk=chunk_key(item), answer_prefix_ids=list(forced),
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
        span = tuple(cand.span) if isinstance(cand, ChunkEdit) else None
        pair = build_pair(model, item, text, clean_target=clean_target, corrupt_target=target_fn(text),
                          corruption=corruption, description=desc, edit_chars=span)
        if pair is not None:
            return pair
    return None


# long: the whole pair-sampling policy (filters with reasons, then round-robin across chunks) in one place
def build_counting_pairs(
    model: ReplayModel,
    items: Iterable[SubCallItem],
    *,
    n_pairs: int,
    corruptions: list[str],
    seed: int = 0,
    max_tokens: int | None = None,
) -> tuple[list[Pair], dict[str, int]]:
    """Default pairs for roll-counting sub_calls, spread across chunks: each round gives every usable
    chunk (in a seeded order) at most one more pair, its corruption rotating, until `n_pairs`. Pairs of
    one chunk share its text and are not independent (the CIs resample by chunk), so breadth comes first.
    Returns the pairs and a tally of why candidates were skipped (keys of `interp.data.selection.REASONS`)."""
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    rng = random.Random(seed)
    skipped = {"no_chunk_span": 0, "not_a_roll_count": 0, "filter_not_checkable": 0, "too_long": 0,
               "no_equal_length_edit": 0, "alter_without_value_filter": 0}
    usable = []
    for it in items:
        if it.chunk_text is None:
            skipped["no_chunk_span"] += 1
            continue
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
        usable.append((it, query))
    rng.shuffle(usable)
    pairs: list[Pair] = []
    todo = {id(it): [c for c in corruptions] for it, _ in usable}
    for it, _ in usable:  # each chunk starts at a different corruption, so all kinds appear early
        k = rng.randrange(len(corruptions)) if corruptions else 0
        todo[id(it)] = corruptions[k:] + corruptions[:k]
    while len(pairs) < n_pairs and any(todo.values()):
        this_round: set[str] = set()  # one pair per chunk per round (two sub_calls may read one chunk)
        for it, query in usable:
            key = chunk_key(it)
            if len(pairs) >= n_pairs or key in this_round:
                continue
            while todo[id(it)]:
                name = todo[id(it)].pop(0)
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
                this_round.add(key)
                break
    return pairs, skipped
