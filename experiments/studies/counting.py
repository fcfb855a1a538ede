"""A generated counting task with exact gold: how many dice rolls does a D&D transcript passage report?

WHY: OOLONG-real's gold counts rolls over whole episodes and cannot be mapped onto the chunks a worker
sees, so per-chunk worker accuracy cannot be measured on it. Here the project writes the passages
itself: k roll lines (each reports exactly one roll, always as "rolled a/an N") among distractor lines
that mention numbers, hit points, gold, checks and dice in non-roll senses, so the gold count is exact
by construction and `roll_mentions` can verify it. interp builds the equal-token-length
clean/corrupt passages (k vs k±1) for activation patching.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from rlm_rig.records.answers import find_int, partial_credit

__all__ = [
    "COUNT_INSTRUCTION",
    "constant_baseline",
    "CountingItem",
    "DISTRACTOR_TEMPLATES",
    "PLAYERS",
    "ROLL_TEMPLATES",
    "count_messages",
    "distractor_line_candidates",
    "make_counting_item",
    "make_counting_set",
    "roll_line_candidates",
    "roll_mentions",
    "run_counting_eval",
    "score_count",
    "summarize_counting",
    "format_summary",
    "validate_counts",
]

COUNT_INSTRUCTION = "How many dice rolls are made in this text? Reply with a single integer."
SYSTEM_PROMPT = "You are a careful reader. Answer the instruction using only the given text. Be brief."

DM = "Matt"
PLAYERS = ("Laura", "Travis", "Marisha", "Sam", "Liam", "Taliesin", "Ashley")
SKILLS = ("perception", "stealth", "athletics", "insight", "investigation", "arcana", "acrobatics", "persuasion")

# Every roll line reports exactly one roll, and the only way a roll is reported is "rolled a/an N".
ROLL_TEMPLATES = (
    "I rolled {a} {n}.",
    "I rolled {a} {n} on my {skill} check.",
    "Okay, I rolled {a} {n} to hit.",
    "Ugh, I rolled {a} {n}.",
    "I rolled {a} {n} for initiative.",
    "That's low, I rolled {a} {n}.",
    "Yes! I rolled {a} {n}.",
    "I rolled {a} {n} on the saving throw.",
)
# Distractors never contain "roll": numbers, hit points, gold, checks asked for but not made, dice as objects.
# (role, template, range of {n}); `{a_skill}` is "a perception" / "an arcana", `{other}` another player.
DISTRACTOR_TEMPLATES = (
    ("dm", "Make {a_skill} check.", None),
    ("dm", "Give me {a_skill} check, please.", None),
    ("dm", "The door is {n} feet away from you.", (5, 60)),
    ("dm", "You find {n} gold pieces in the chest.", (2, 60)),
    ("dm", "The goblin has {n} hit points left.", (2, 30)),
    ("dm", "It has been {n} days since you left the city.", (2, 30)),
    ("dm", "The tavern falls silent as you enter.", None),
    ("dm", "A cold wind blows through the ruined hall.", None),
    ("dm", "Everybody takes a short rest.", None),
    ("dm", "The merchant wants {n} silver for the map.", (2, 60)),
    ("player", "I have {n} hit points left.", (2, 60)),
    ("player", "My armor class is {n}.", (10, 20)),
    ("player", "We split the {n} gold pieces evenly.", (2, 60)),
    ("player", "I have {n} arrows left in my quiver.", (2, 30)),
    ("player", "I bought a new set of dice at the market.", None),
    ("player", "These dice are cursed, I swear.", None),
    ("player", "Can someone pass me the dice tray?", None),
    ("player", "My lucky dice are in the other bag.", None),
    ("player", "I want to talk to the bartender.", None),
    ("player", "I cast cure wounds on {other}.", None),
    ("player", "I hide behind the barrels.", None),
    ("player", "I pay the innkeeper {n} copper.", (2, 30)),
    ("player", "I'm level {n} now.", (2, 12)),
    ("player", "How far away is the bridge?", None),
    ("player", "I drink the potion, that's {n} more hit points.", (2, 20)),
    ("player", "I check the map again.", None),
)

# "rolled a 17", "rolled an 8", "rolled a natural 20"; case-insensitive so "Rolled a 3" counts too.
_ROLL_RE = re.compile(r"\brolled\s+an?\s+(?:natural\s+)?(\d{1,3})\b", re.IGNORECASE)


def _article(n: int) -> str:
    return "an" if str(n).startswith("8") or n in (11, 18) else "a"


def roll_mentions(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of every reported roll ("rolled a 17") in `text`.

    The generator guarantees one span per roll line and none in distractors, so
    `len(roll_mentions(passage)) == k` is the gold check.
    """
    return [m.span() for m in _ROLL_RE.finditer(text)]


def score_count(answer: str | None, gold: int) -> dict[str, Any]:
    """Exact match and OOLONG's integer partial credit 0.75**|gold - pred| on the first integer."""
    pred = find_int(answer, words=True)
    if pred is None:
        return {"pred": None, "exact": 0.0, "oolong": 0.0}
    return {"pred": pred, "exact": float(pred == gold), "oolong": partial_credit(gold, pred)}


def count_messages(chunk: str, instruction: str = COUNT_INSTRUCTION) -> list[dict[str, str]]:
    """The rig's worker sub_call messages for one chunk."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Text:\n{chunk}\n\nInstruction: {instruction}"},
    ]


# --------------------------------------------------------------------------------------------------
# lines
# --------------------------------------------------------------------------------------------------


def _a_skill(skill: str) -> str:
    return f"{'an' if skill[0] in 'aeiou' else 'a'} {skill}"


def _fill(template: str, n_range: tuple[int, int] | None, rng: random.Random, speaker: str) -> str:
    n = rng.randint(*n_range) if n_range else 0
    other = rng.choice([p for p in PLAYERS if p != speaker])
    return template.format(n=n, a_skill=_a_skill(rng.choice(SKILLS)), other=other)


def _roll_line(rng: random.Random, speaker: str | None = None) -> str:
    speaker = speaker or rng.choice(PLAYERS)
    n = rng.randint(1, 20)
    body = rng.choice(ROLL_TEMPLATES).format(a=_article(n), n=n, skill=rng.choice(SKILLS))
    return f"{speaker}: {body}"


def _distractor_line(rng: random.Random) -> str:
    role, template, n_range = rng.choice(DISTRACTOR_TEMPLATES)
    speaker = DM if role == "dm" else rng.choice(PLAYERS)
    return f"{speaker}: {_fill(template, n_range, rng, speaker)}"


def roll_line_candidates(speaker: str | None = None) -> list[str]:
    """Every roll line the generator can write (for one speaker, or all players)."""
    return list(_roll_candidates(speaker))


@functools.lru_cache(maxsize=64)
def _roll_candidates(speaker: str | None) -> tuple[str, ...]:
    speakers = [speaker] if speaker in PLAYERS else list(PLAYERS)
    out = []
    for who in speakers:
        for t in ROLL_TEMPLATES:
            for n in range(1, 21):
                skills = SKILLS if "{skill}" in t else SKILLS[:1]
                out += [f"{who}: " + t.format(a=_article(n), n=n, skill=s) for s in skills]
    return tuple(out)


def distractor_line_candidates(speaker: str | None = None) -> list[str]:
    """Every distractor line the generator can write (for one speaker, or everyone)."""
    return list(_distractor_candidates(speaker))


@functools.lru_cache(maxsize=64)
def _distractor_candidates(speaker: str | None) -> tuple[str, ...]:
    out = []
    for role, t, n_range in DISTRACTOR_TEMPLATES:
        who_all = [DM] if role == "dm" else list(PLAYERS)
        for who in who_all:
            if speaker is not None and who != speaker:
                continue
            nums = range(n_range[0], n_range[1] + 1) if n_range else [0]
            skills = SKILLS if "{a_skill}" in t else SKILLS[:1]
            others = [p for p in PLAYERS if p != who] if "{other}" in t else PLAYERS[:1]
            out += [
                f"{who}: " + t.format(n=n, a_skill=_a_skill(s), other=o) for n in nums for s in skills for o in others
            ]
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# items
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountingItem:
    """One passage with its exact roll count. `roll_line_indices` are 0-based line numbers."""

    id: str
    passage: str
    k: int
    n_lines: int
    roll_line_indices: list[int]
    instruction: str = COUNT_INSTRUCTION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def lines(self) -> list[str]:
        return self.passage.split("\n")


def make_counting_item(
    k: int, n_lines: int, rng: random.Random, *, item_id: str = "", instruction: str = COUNT_INSTRUCTION
) -> CountingItem:
    """A passage of `n_lines` lines, `k` of them roll lines at random positions, the rest distinct
    distractors."""
    if n_lines <= 0:
        raise ValueError(f"n_lines must be positive, got {n_lines}")
    if not 0 <= k <= n_lines:
        raise ValueError(f"k must be in 0..n_lines={n_lines}, got {k}")
    roll_idx = sorted(rng.sample(range(n_lines), k))
    lines: list[str] = []
    seen: set[str] = set()
    for i in range(n_lines):
        if i in roll_idx:
            line = _roll_line(rng)
        else:
            line = _distractor_line(rng)
            for _ in range(20):  # avoid verbatim repeats, which read like copy errors
                if line not in seen:
                    break
                line = _distractor_line(rng)
        seen.add(line)
        lines.append(line)
    passage = "\n".join(lines)
    got = len(roll_mentions(passage))
    if got != k:  # the templates guarantee this; a failure is a template bug, not bad luck
        raise AssertionError(f"generated passage has {got} roll mentions, expected {k}")
    return CountingItem(item_id, passage, k, n_lines, roll_idx, instruction)


def make_counting_set(
    seed: int = 0,
    ks: Iterable[int] = range(10),
    lengths: Iterable[int] = (10, 20, 40),
    per_cell: int = 4,
    *,
    instruction: str = COUNT_INSTRUCTION,
) -> list[CountingItem]:
    """`per_cell` items for every (length, k) with k <= length, deterministic in `seed`.

    Each item has its own RNG seeded from (seed, length, k, j), so changing `per_cell` or the grid
    never changes the items already in it.
    """
    if per_cell <= 0:
        raise ValueError(f"per_cell must be positive, got {per_cell}")
    ks, lengths = list(ks), list(lengths)
    if any(k < 0 for k in ks):
        raise ValueError(f"ks must be non-negative, got {ks}")
    items = []
    for n in lengths:
        for k in ks:
            if k > n:
                continue
            for j in range(per_cell):
                rng = random.Random(f"rlm-rig-counting/{seed}/{n}/{k}/{j}")
                items.append(make_counting_item(k, n, rng, item_id=f"count-s{seed}-n{n}-k{k}-{j}", instruction=instruction))
    return items


# --------------------------------------------------------------------------------------------------
# evaluation through a worker
# --------------------------------------------------------------------------------------------------


def validate_counts(items: Sequence[CountingItem]) -> None:
    """Raise if any item's gold disagrees with its text (cheap; run before spending model time)."""
    for it in items:
        spans = roll_mentions(it.passage)
        if len(spans) != it.k:
            raise AssertionError(f"{it.id}: {len(spans)} roll mentions, gold k={it.k}")


def run_counting_eval(worker: Any, items: Sequence[CountingItem], *, max_tokens: int = 16) -> list[dict[str, Any]]:
    """Ask the worker each item's instruction about its passage (one sub_call each, all concurrent)
    and score the answers. `worker` is anything with the SyncWorker `chat_many(batch, max_tokens=)`
    shape; a failed call is recorded with its error and scores 0."""
    validate_counts(items)
    batch = [count_messages(it.passage, it.instruction) for it in items]
    results = worker.chat_many(batch, max_tokens=max_tokens)
    rows = []
    for it, res in zip(items, results):
        if isinstance(res, BaseException):
            text, error, ptok, ctok, lat = None, f"{type(res).__name__}: {res}", 0, 0, None
        else:
            text, error, ptok, ctok, lat = res.text, None, res.prompt_tokens, res.completion_tokens, res.latency_s
        rows.append(
            {"id": it.id, "k": it.k, "n_lines": it.n_lines, "answer": text, "error": error,
             "prompt_tokens": ptok, "completion_tokens": ctok, "latency_s": lat, **score_count(text, it.k)}
        )  # fmt: skip
    return rows


def summarize_counting(rows: Sequence[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Mean exact / OOLONG score, mean prediction and unparsed share, grouped by `by` ("k" or
    "n_lines"), plus an "all" row."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r)
    out = []
    for key in sorted(groups) + ["all"]:
        g = list(rows) if key == "all" else groups[key]
        preds = [r["pred"] for r in g if r["pred"] is not None]
        out.append(
            {
                by: key,
                "n": len(g),
                "exact": sum(r["exact"] for r in g) / len(g),
                "oolong": sum(r["oolong"] for r in g) / len(g),
                "mean_pred": sum(preds) / len(preds) if preds else None,
                "mean_gold": sum(r["k"] for r in g) / len(g),
                "unparsed": sum(r["pred"] is None for r in g) / len(g),
            }
        )
    return out


def constant_baseline(golds: Sequence[int]) -> dict[str, Any]:
    """The best single integer to always answer, by OOLONG score: the floor a worker must beat."""
    if not golds:
        raise ValueError("constant_baseline needs at least one gold count")
    best = None
    for c in range(min(golds), max(golds) + 1):
        oolong = sum(partial_credit(g, c) for g in golds) / len(golds)
        exact = sum(g == c for g in golds) / len(golds)
        if best is None or oolong > best["oolong"]:
            best = {"answer": c, "oolong": oolong, "exact": exact}
    return best


def format_summary(table: Sequence[dict[str, Any]], by: str) -> str:
    """A Markdown table of `summarize_counting` output."""
    lines = [f"| {by} | n | exact | OOLONG 0.75^d | mean gold | mean pred | unparsed |", "|---|---|---|---|---|---|---|"]
    for r in table:
        mp = "-" if r["mean_pred"] is None else f"{r['mean_pred']:.2f}"
        lines.append(
            f"| {r[by]} | {r['n']} | {r['exact']:.3f} | {r['oolong']:.3f} | {r['mean_gold']:.2f} | {mp} | {r['unparsed']:.2f} |"
        )
    return "\n".join(lines)
