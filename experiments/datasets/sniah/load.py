"""S-NIAH: a local, RULER-style single-needle-in-a-haystack generator (no downloads).

One needle sentence, "The special magic number for <key> is <7 digits>.", is placed at a
chosen depth (0 = start, 1 = end, at a sentence boundary) inside a filler haystack of a
chosen length, counted in characters or in tokens of a given tokenizer. The question
asks for the number; the metric is RULER's substring match (`score_sniah`). Everything
is derived from ``seed``, so a (seed, length, depth) triple always gives the same text.

Filler kinds: ``"prose"`` (varied sentences built from word lists, seeded, free of
digits so the needle is the only number) or ``"repeat"`` (one short passage repeated,
the classic noise haystack).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.filters import ExampleFilter, TokenCounter, apply_filter, count_tokens

DATASET = "sniah"
NEEDLE_TEMPLATE = "The special magic number for {key} is {value}."
QUESTION_TEMPLATE = "What is the special magic number for {key} mentioned in the provided text?"
REPEAT_PASSAGE = "The river runs east past the mill. The hills stay quiet in the evening. Birds cross the open field. The day goes on."

Filler = Literal["prose", "repeat"]

_ADJ = (
    "quiet", "amber", "distant", "gentle", "hollow", "bright", "silver", "narrow", "patient", "restless",
    "ancient", "humble", "crooked", "golden", "muddy", "sleepy", "stubborn", "tidy", "wistful", "vivid",
)
_NOUN = (
    "harbor", "orchard", "lantern", "meadow", "library", "ferry", "garden", "bridge", "kettle", "valley",
    "market", "chapel", "forest", "engine", "journal", "compass", "window", "canal", "workshop", "village",
)
_SUBJ = (
    "The old teacher", "A traveling merchant", "The village council", "Her younger brother", "The night guard",
    "A curious child", "The ship's cook", "Our neighbor", "The carpenter", "A tired musician", "The gardener",
    "The baker", "An elderly poet", "The ferryman", "The mapmaker",
)
_VERB = (
    "walked toward", "wrote about", "painted", "repaired", "described", "remembered", "visited", "cleaned",
    "argued about", "sketched", "admired", "forgot about", "searched the", "listened near", "waited by",
)
_TAIL = (
    "before the rain began", "late in the afternoon", "while the bells were ringing", "without saying a word",
    "as the fog lifted", "after a long winter", "during the harvest fair", "with great care",
    "under a pale sky", "for no clear reason", "when the market closed", "as the lamps were lit",
)
_REFLECTION = (
    "Nobody in town could say why it mattered so much.",
    "It was the kind of story people told again and again.",
    "Some of the details were lost over the years.",
    "Most people agreed it had been an ordinary day.",
    "The letters from that season are still kept in a drawer.",
    "Few noticed, and fewer remembered.",
    "That habit stayed with them for a long time.",
)


def filler_sentences(seed: int, kind: Filler = "prose") -> Iterator[str]:
    """An endless, seeded stream of filler sentences (no digits, no "magic number")."""
    if kind == "repeat":
        parts = [p.strip() + "." for p in REPEAT_PASSAGE.split(".") if p.strip()]
        while True:
            yield from parts
    if kind != "prose":
        raise ValueError(f"unknown filler kind {kind!r}; expected 'prose' or 'repeat'")
    rng = random.Random(f"sniah-filler-{seed}")
    while True:
        if rng.random() < 0.2:
            yield rng.choice(_REFLECTION)
        else:
            yield f"{rng.choice(_SUBJ)} {rng.choice(_VERB)} the {rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_TAIL)}."


def make_key_value(seed: int) -> tuple[str, str]:
    """A hyphenated two-word key (never formed by the filler) and a 7-digit value."""
    rng = random.Random(f"sniah-needle-{seed}")
    return f"{rng.choice(_ADJ)}-{rng.choice(_NOUN)}", str(rng.randint(1_000_000, 9_999_999))


@dataclass(frozen=True)
class Haystack:
    text: str
    needle_start: int
    sentences: int


def _place(sentences: list[str], needle: str, depth: float) -> Haystack:
    """Insert the needle at the sentence boundary nearest ``depth`` of the filler."""
    ends = [0]
    for s in sentences:
        ends.append(ends[-1] + len(s) + 1)  # +1 for the joining space
    target = depth * (ends[-1] - 1 if sentences else 0)
    idx = min(range(len(ends)), key=lambda i: (abs(ends[i] - target), i))
    before, after = sentences[:idx], sentences[idx:]
    head = " ".join(before)
    text = " ".join(before + [needle] + after)
    start = len(head) + (1 if before else 0)
    return Haystack(text=text, needle_start=start, sentences=len(sentences))


def build_haystack(
    needle: str,
    *,
    depth: float,
    seed: int,
    haystack_chars: int | None = None,
    haystack_tokens: int | None = None,
    tokenizer: TokenCounter | None = None,
    filler: Filler = "prose",
) -> Haystack:
    """The document: filler sentences plus the needle, as long as possible without
    exceeding the target (chars, or tokens of ``tokenizer``), needle included."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"needle depth must be in [0, 1], got {depth}")
    if (haystack_chars is None) == (haystack_tokens is None):
        raise ValueError("give exactly one of haystack_chars or haystack_tokens")
    if haystack_tokens is not None and tokenizer is None:
        raise ValueError("haystack_tokens needs a tokenizer callable (text -> token count or tokens)")
    stream = filler_sentences(seed, filler)
    sentences: list[str] = []
    if haystack_chars is not None:
        if haystack_chars < len(needle):
            raise ValueError(f"haystack_chars={haystack_chars} is shorter than the needle ({len(needle)} chars)")
        used = len(needle)
        for s in stream:
            if used + 1 + len(s) > haystack_chars:
                break
            sentences.append(s)
            used += 1 + len(s)
        return _place(sentences, needle, depth)
    assert tokenizer is not None and haystack_tokens is not None
    budget = haystack_tokens - count_tokens(tokenizer, needle)
    if budget < 0:
        raise ValueError(f"haystack_tokens={haystack_tokens} is shorter than the needle")
    estimate = 0
    for s in stream:  # per-sentence counts overestimate slightly at joins; fixed below
        n = count_tokens(tokenizer, " " + s)
        if estimate + n > budget:
            break
        sentences.append(s)
        estimate += n
    hay = _place(sentences, needle, depth)
    while sentences and count_tokens(tokenizer, hay.text) > haystack_tokens:
        sentences.pop()
        hay = _place(sentences, needle, depth)
    return hay


def make_sniah_example(
    *,
    seed: int,
    depth: float,
    haystack_chars: int | None = None,
    haystack_tokens: int | None = None,
    tokenizer: TokenCounter | None = None,
    filler: Filler = "prose",
) -> Example:
    """One S-NIAH example; ``meta`` records the target, the needle's offset and key."""
    key, value = make_key_value(seed)
    needle = NEEDLE_TEMPLATE.format(key=key, value=value)
    hay = build_haystack(
        needle, depth=depth, seed=seed, haystack_chars=haystack_chars, haystack_tokens=haystack_tokens,
        tokenizer=tokenizer, filler=filler,
    )
    unit, target = ("tokens", haystack_tokens) if haystack_tokens is not None else ("chars", haystack_chars)
    filler_len = len(hay.text) - len(needle) - (1 if hay.sentences else 0)
    return Example(
        id=f"sniah-{unit}{target}-d{depth:.3f}-s{seed}",
        dataset=DATASET,
        context=hay.text,
        question=QUESTION_TEMPLATE.format(key=key),
        gold=value,
        question_type="niah_single",
        meta={
            "depth": depth,
            "actual_depth": hay.needle_start / filler_len if filler_len > 0 else 0.0,
            "needle_start": hay.needle_start,
            "needle": needle,
            "key": key,
            "unit": unit,
            "target_length": target,
            "filler": filler,
            "seed": seed,
        },
    )


def sniah_grid(
    lengths: Iterable[int],
    depths: Iterable[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    per_cell: int = 1,
    seed: int = 0,
    unit: Literal["chars", "tokens"] = "chars",
    tokenizer: TokenCounter | None = None,
    filler: Filler = "prose",
) -> Iterator[Example]:
    """Examples over a length x depth grid, ``per_cell`` each, with distinct seeds
    derived from ``seed`` (so two grids with different seeds share no needle)."""
    depths = list(depths)
    i = 0
    for length in lengths:
        for depth in depths:
            for _ in range(per_cell):
                kw = {"haystack_chars": length} if unit == "chars" else {"haystack_tokens": length, "tokenizer": tokenizer}
                yield make_sniah_example(seed=seed * 1_000_003 + i, depth=depth, filler=filler, **kw)
                i += 1


def load_sniah(
    lengths: Iterable[int] = (4_000,),
    depths: Iterable[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    per_cell: int = 1,
    seed: int = 0,
    unit: Literal["chars", "tokens"] = "chars",
    tokenizer: TokenCounter | None = None,
    filler: Filler = "prose",
    filters: ExampleFilter | None = None,
) -> Iterator[Example]:
    """`sniah_grid` through the common `ExampleFilter` (limit, sample, caps)."""
    grid = sniah_grid(lengths, depths, per_cell=per_cell, seed=seed, unit=unit, tokenizer=tokenizer, filler=filler)
    return apply_filter(grid, filters)
