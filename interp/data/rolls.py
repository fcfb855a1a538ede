"""D&D roll mentions: find them, count them, and edit one of them (the counting-task corruptions).

WHY a regex: OOLONG-real's gold comes from a roll table with video timestamps, which cannot be
mapped onto transcript chunks. Per-chunk gold is therefore a *proxy*: the number of transcript
lines that mention a roll ("roll", "rolled a 15", "natural 20", "nat 1", "d20" ...). It is exact
for the question "how many lines mention a roll" and approximate for "how many rolls happened".
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator

from rlm_rig.records.answers import find_int, int_spans

ROLL_MENTION = re.compile(
    r"(?P<verb>\broll(?:s|ed|ing)?\b(?:\s+(?:a|an)\s+(?:natural\s+)?(?P<vval>\d{1,3})\b)?)"
    r"|(?P<nat>\bnat(?:ural)?\s?(?P<nval>\d{1,2})s?\b)"
    r"|(?P<die>\b\d*d(?:4|6|8|100|10|12|20)\b)",
    re.IGNORECASE,
)
_VALUE_FILTER = re.compile(r"\bnat(?:ural)?\s?(?:value\s+(?:of\s+)?)?(\d{1,2})s?\b|\bvalue\s+(?:of\s+)?(\d{1,2})\b", re.I)
_COUNT_WORDS = re.compile(r"\b(count|how many|number of|total)\b", re.I)
_ROLL_WORD = re.compile(r"\broll", re.I)


@dataclass(frozen=True)
class RollMention:
    start: int
    end: int
    kind: str  # verb | nat | die
    value: int | None
    word_start: int  # the span of the word that makes it a mention ("rolled", "natural", "d20")
    word_end: int


def find_mentions(text: str) -> list[RollMention]:
    out = []
    for m in ROLL_MENTION.finditer(text):
        kind = m.lastgroup if m.lastgroup in ("verb", "nat", "die") else next(
            k for k in ("verb", "nat", "die") if m.group(k)
        )
        raw = m.group("vval") if kind == "verb" else m.group("nval") if kind == "nat" else None
        word = re.match(r"[A-Za-z]+|\d*d\d+", m.group(0))
        ws = m.start() + (word.start() if word else 0)
        we = m.start() + (word.end() if word else len(m.group(0)))
        if kind == "die":
            ws, we = m.start(), m.end()
        out.append(RollMention(m.start(), m.end(), kind, int(raw) if raw else None, ws, we))
    return out


def parse_value_filter(instruction: str) -> int | None:
    """"count the natural 20s" -> 20; None when the instruction counts every roll."""
    m = _VALUE_FILTER.search(instruction or "")
    if not m:
        return None
    return int(m.group(1) or m.group(2))


def is_roll_count_instruction(instruction: str) -> bool:
    return bool(_COUNT_WORDS.search(instruction or "") and _ROLL_WORD.search(instruction or ""))


def _line_spans(text: str) -> list[tuple[int, int]]:
    spans, s = [], 0
    for line in text.split("\n"):
        spans.append((s, s + len(line)))
        s += len(line) + 1
    return spans


def _mentions_by_line(text: str, speaker: str | None = None) -> list[tuple[tuple[int, int], list[RollMention]]]:
    """(line span, its mentions) per line; with `speaker`, only lines spoken by them ("Laura: ...")."""
    ms = find_mentions(text)
    out = []
    prefix = None if speaker is None else speaker.lower() + ":"
    for s, e in _line_spans(text):
        if prefix is not None and not text[s:e].lstrip().lower().startswith(prefix):
            continue
        out.append(((s, e), [m for m in ms if s <= m.start < e]))
    return out


@dataclass(frozen=True)
class RollQuery:
    """What a roll-count instruction counts, as far as the regex proxy can tell."""

    value: int | None = None  # "natural 20s" -> 20
    speaker: str | None = None  # "by the player Laura" (or a character mapped to its player) -> "Laura"


def _as_query(q: "RollQuery | int | None") -> RollQuery:
    return q if isinstance(q, RollQuery) else RollQuery(value=q)


def count_roll_lines(text: str, value: "int | RollQuery | None" = None, speaker: str | None = None) -> int:
    """Lines with at least one roll mention; with a value, a mention of that value; with a speaker,
    only that speaker's lines."""
    q = _as_query(value)
    speaker = speaker or q.speaker
    n = 0
    for _, ms in _mentions_by_line(text, speaker):
        if q.value is None and ms:
            n += 1
        elif q.value is not None and any(m.value == q.value for m in ms):
            n += 1
    return n


_PLAYER = re.compile(r"\bby the player ([A-Z][\w'.-]*(?: [A-Z][\w'.-]*)*)", re.I)
_CHARACTER = re.compile(r"\bby the character ([A-Z][\w'.-]*(?: [A-Z][\w'.-]*)*)", re.I)
_TYPE = re.compile(r"\bof type\b", re.I)


def parse_roll_query(instruction: str, context: str = "") -> RollQuery | None:
    """The proxy's reading of a roll-count instruction; None when it is not one, or when its filter
    cannot be checked by regex (roll types; a character whose player is not named in `context`
    by a "<Player> plays the character <Character>." line)."""
    if not is_roll_count_instruction(instruction):
        return None
    if _TYPE.search(instruction):
        return None
    speaker = None
    m = _PLAYER.search(instruction)
    if m:
        speaker = m.group(1).split(" in ")[0].strip()
    else:
        m = _CHARACTER.search(instruction)
        if m:
            char = m.group(1).split(" in ")[0].strip()
            pm = re.search(r"(?m)^([\w' .-]+?) plays the character " + re.escape(char) + r"\.", context)
            if not pm:
                return None
            speaker = pm.group(1).strip()
    return RollQuery(value=parse_value_filter(instruction), speaker=speaker)


def chunk_gold(chunk: str, instruction: str, context: str = "") -> int | None:
    """The proxy gold count for a chunk under its instruction; None when the proxy cannot tell."""
    q = parse_roll_query(instruction, context)
    return None if q is None else count_roll_lines(chunk, q)


# -- corruptions ------------------------------------------------------------------------------
# Each yields candidate edits in a seeded order; the pair builder keeps the first whose token
# length equals the clean one (symmetric token replacement instead of noise).

_REMOVE_SUBST = {
    "verb": ["called", "walked", "looked", "pulled", "moved", "tried", "said", "got", "made", "did"],
    "nat": ["normal", "neutral", "nearly", "number", "new", "next"],
    "die": ["it", "do", "die", "the", "a"],
}
_ADD_FROM = ["said", "got", "made", "did", "took", "hit", "had", "have", "get", "went", "saw", "has", "was", "is"]
_ADD_TO = ["rolled", "rolls", "roll"]


@dataclass(frozen=True)
class ChunkEdit:
    text: str
    description: str
    span: tuple[int, int]  # char span of the edit in the *clean* chunk


def corrupt_remove(chunk: str, rng: random.Random, value: "int | RollQuery | None" = None) -> Iterator[ChunkEdit]:
    """Remove one counted line's mention by swapping its roll word for a non-roll word."""
    q = _as_query(value)
    lines = [(span, ms) for span, ms in _mentions_by_line(chunk, q.speaker) if len(ms) == 1]
    if q.value is not None:
        lines = [(span, ms) for span, ms in lines if ms[0].value == q.value]
    rng.shuffle(lines)
    for _, (m,) in lines:
        subs = list(_REMOVE_SUBST[m.kind])
        rng.shuffle(subs)
        for sub in subs:
            new = chunk[: m.word_start] + sub + chunk[m.word_end :]
            if count_roll_lines(new, q) == count_roll_lines(chunk, q) - 1:
                yield ChunkEdit(new, f"remove {chunk[m.word_start:m.word_end]!r}->{sub!r}", (m.word_start, m.word_end))


def corrupt_add(chunk: str, rng: random.Random, value: "int | RollQuery | None" = None) -> Iterator[ChunkEdit]:
    """Add one roll mention to a line that has none, by swapping a common word for a roll word."""
    q = _as_query(value)
    lines = [span for span, ms in _mentions_by_line(chunk, q.speaker) if not ms]
    rng.shuffle(lines)
    pat = re.compile(r"\b(" + "|".join(_ADD_FROM) + r")\b", re.I)
    base = count_roll_lines(chunk, q)
    for s, e in lines:
        for w in pat.finditer(chunk, s, e):
            targets = [f"rolled a {q.value}"] if q.value is not None else list(_ADD_TO)
            for to in targets:
                new = chunk[: w.start()] + to + chunk[w.end() :]
                if count_roll_lines(new, q) == base + 1:
                    yield ChunkEdit(new, f"add {w.group(0)!r}->{to!r}", (w.start(), w.end()))


def corrupt_alter(chunk: str, rng: random.Random, value: "int | RollQuery | None" = None) -> Iterator[ChunkEdit]:
    """Change the number of one rolled/natural value (same digit count). Only changes the count when
    the instruction filters on a value, so without a filter it yields nothing."""
    q = _as_query(value)
    if q.value is None:
        return
    base = count_roll_lines(chunk, q)
    ms = [m for _, line in _mentions_by_line(chunk, q.speaker) for m in line if m.value is not None]
    rng.shuffle(ms)
    for m in ms:
        seg = chunk[m.start : m.end]
        dm = list(re.finditer(r"\d+", seg))[-1]
        ds, de = m.start + dm.start(), m.start + dm.end()
        digits = dm.group(0)
        if m.value == q.value:
            choices = [v for v in range(10 ** (len(digits) - 1) if len(digits) > 1 else 1, 10 ** len(digits)) if v != q.value]
        else:
            choices = [q.value] if len(str(q.value)) == len(digits) else []
        rng.shuffle(choices)
        for v in choices[:6]:
            new = chunk[:ds] + str(v) + chunk[de:]
            if count_roll_lines(new, q) != base:
                yield ChunkEdit(new, f"alter {digits}->{v}", (ds, de))


# -- line swaps (structure-aware) ---------------------------------------------------------------
# On line-structured chunks ("Speaker: utterance") the cleanest k±1 edit swaps one whole utterance:
# a counted line takes the utterance of an uncounted line of the same chunk (count - 1), or an
# uncounted line takes a counted utterance with its number changed (count + 1). The speaker prefix
# stays, so speaker filters still apply, and the new text is the chunk's own register, not a
# malformed word swap ("I called a 17"). Donors closest in length come first, because the pair
# builder keeps only an equal-token-length edit and tries a bounded number of candidates.

_SPEAKER_PREFIX = re.compile(r"^[^:\n]{1,40}:\s")


def _split_speaker(line: str) -> tuple[str, str]:
    m = _SPEAKER_PREFIX.match(line)
    return (line[: m.end()], line[m.end():]) if m else ("", line)


def _counted(ms: list[RollMention], q: RollQuery) -> bool:
    return bool(ms) if q.value is None else any(m.value == q.value for m in ms)


def _renumber(body: str, rng: random.Random, keep: int | None) -> list[str]:
    """`body` with its roll value replaced by others of the same digit count (unless the filter pins it)."""
    ms = [m for m in find_mentions(body) if m.value is not None]
    if not ms or keep is not None:
        return [body]
    m = ms[0]
    dm = list(re.finditer(r"\d+", body[m.start:m.end]))[-1]
    ds, de = m.start + dm.start(), m.start + dm.end()
    lo = 10 ** (de - ds - 1) if de - ds > 1 else 1
    vals = [v for v in range(lo, min(10 ** (de - ds), 21)) if v != m.value] or [m.value]
    rng.shuffle(vals)
    return [body[:ds] + str(v) + body[de:] for v in vals[:3]]


def _line_swaps(chunk: str, rng: random.Random, q: RollQuery, add: bool) -> Iterator[ChunkEdit]:
    by_line = _mentions_by_line(chunk)
    base = count_roll_lines(chunk, q)
    speaker = None if q.speaker is None else q.speaker.lower() + ":"
    def mine(s: int, e: int) -> bool:
        return speaker is None or chunk[s:e].lstrip().lower().startswith(speaker)
    counted = [span for span, ms in by_line if _counted(ms, q) and mine(*span)]
    neutral = [span for span, ms in by_line if not ms]
    targets = [s for s in neutral if mine(*s)] if add else counted
    donors = counted if add else neutral
    rng.shuffle(targets)
    for s, e in targets:
        prefix, body = _split_speaker(chunk[s:e])
        donor_bodies = [_split_speaker(chunk[d[0]:d[1]])[1] for d in donors if d != (s, e)]
        bodies = [b for d in donor_bodies for b in (_renumber(d, rng, q.value) if add else [d])]
        rng.shuffle(bodies)
        bodies.sort(key=lambda b: abs(len(b) - len(body)))  # stable: RNG order among equal lengths
        for b in bodies:
            if b == body:
                continue
            new = chunk[:s] + prefix + b + chunk[e:]
            if count_roll_lines(new, q) == base + (1 if add else -1):
                yield ChunkEdit(new, f"line {'add' if add else 'remove'} {body!r}->{b!r}", (s + len(prefix), e))


def corrupt_line_remove(chunk: str, rng: random.Random, value: "int | RollQuery | None" = None) -> Iterator[ChunkEdit]:
    """Count - 1: a counted line's utterance becomes an uncounted utterance of the same chunk."""
    return _line_swaps(chunk, rng, _as_query(value), add=False)


def corrupt_line_add(chunk: str, rng: random.Random, value: "int | RollQuery | None" = None) -> Iterator[ChunkEdit]:
    """Count + 1: an uncounted line's utterance becomes a counted one of the chunk (number changed)."""
    return _line_swaps(chunk, rng, _as_query(value), add=True)


CORRUPTIONS = {"remove": corrupt_remove, "add": corrupt_add, "alter": corrupt_alter,
               "line_remove": corrupt_line_remove, "line_add": corrupt_line_add}


def parse_count(answer: str | None) -> int | None:
    """The integer a worker answered: ``\\boxed{N}`` if present, else the first integer in the text."""
    return find_int(answer, prefer_boxed=True)


def first_number_span(answer: str | None) -> tuple[int, int] | None:
    """Char span of the number `parse_count` reads, so capture can find its token."""
    spans = int_spans(answer, prefer_boxed=True)
    return (spans[0][0], spans[0][1]) if spans else None