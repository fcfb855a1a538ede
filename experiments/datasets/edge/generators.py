"""Edge-case generators with exact gold, all built from a seed (no downloads): the long-context
cases a reviewer asks about beyond a single needle at one depth.

Every generator takes ``lengths`` (document size in characters), ``positions`` (where the fact
sits, 0 = start, 1 = end), ``per_cell`` and ``seed``; a (seed, length, position) triple always gives
the same text. Filler is S-NIAH's digit-free prose, so the numbers the generator plants are the only
numbers in the text (the JSON haystack is the exception: numbers everywhere, by design).
"""
from __future__ import annotations

import json
import random
from typing import Iterable, Iterator

from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.sniah.load import NEEDLE_TEMPLATE, QUESTION_TEMPLATE, filler_sentences, make_key_value

SWEEP_POSITIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NUMBER_ONLY = "Answer with the number only."
ABSENT_WORD = "NONE"
ABSENT_INSTRUCTIONS = (f"Answer with the number only. If the text does not state it, answer {ABSENT_WORD}: "
                       "do not guess.")


def _check(lengths: Iterable[int], positions: Iterable[float]) -> tuple[list[int], list[float]]:
    ls, ps = [int(x) for x in lengths], [float(p) for p in positions]
    if not ls or any(n < 200 for n in ls):
        raise ValueError(f"lengths must be >= 200 characters, got {ls}")
    if not ps or any(not 0.0 <= p <= 1.0 for p in ps):
        raise ValueError(f"positions must lie in [0, 1], got {ps}")
    return ls, ps


def _haystack(seed: int, length: int, facts: list[tuple[float, str]]) -> tuple[str, list[int]]:
    """Filler of about ``length`` characters with each fact inserted at the sentence boundary nearest
    its position. Returns the text and each fact's character offset (in the order given)."""
    budget = length - sum(len(f) + 1 for _, f in facts)
    sentences: list[str] = []
    used = 0
    for s in filler_sentences(seed):
        if used + len(s) + 1 > budget:
            break
        sentences.append(s)
        used += len(s) + 1
    slots = [min(len(sentences), round(p * len(sentences))) for p, _ in facts]
    order = sorted(range(len(facts)), key=lambda i: (slots[i], i))
    parts: list[str] = []
    offsets = [0] * len(facts)
    prev = 0
    pos = 0
    for i in order:
        chunk = sentences[prev:slots[i]]
        if chunk:
            text = " ".join(chunk) + " "
            parts.append(text)
            pos += len(text)
        offsets[i] = pos
        parts.append(facts[i][1] + " ")
        pos += len(facts[i][1]) + 1
        prev = slots[i]
    parts.append(" ".join(sentences[prev:]))
    return "".join(parts).rstrip(), offsets


def value_span(text: str, value: str, start: int) -> list[list[int]]:
    """``[[start, end]]`` of ``value`` at or after ``start`` in ``text``: where the gold sits, for the loss
    ledger (experiments/analysis/ledger.py). Empty when it is not found (nothing is guessed)."""
    i = text.find(value, start)
    return [[i, i + len(value)]] if i >= 0 else []


def _cells(name: str, lengths: Iterable[int], positions: Iterable[float], per_cell: int,
           seed: int) -> Iterator[tuple[int, float, int, str]]:
    ls, ps = _check(lengths, positions)
    i = 0
    for n in ls:
        for p in ps:
            for k in range(per_cell):
                yield n, p, seed * 1_000_003 + i, f"{name}-c{n}-p{p:.2f}-s{seed}-{k}"
                i += 1


def needle_sweep(lengths: Iterable[int] = (8_000,), positions: Iterable[float] = SWEEP_POSITIONS, *,
                 per_cell: int = 1, seed: int = 0) -> Iterator[Example]:
    """One needle per document, swept over positions 0.1 ... 0.9."""
    for n, p, s, eid in _cells("needle-sweep", lengths, positions, per_cell, seed):
        key, value = make_key_value(s)
        text, (off,) = _haystack(s, n, [(p, NEEDLE_TEMPLATE.format(key=key, value=value))])
        yield Example(id=eid, dataset="needle-sweep", context=text, question=QUESTION_TEMPLATE.format(key=key),
                      gold=value, question_type=f"position_{p:.1f}", instructions=NUMBER_ONLY,
                      meta={"position": p, "needle_start": off, "seed": s, "gold_spans": value_span(text, value, off)})


def json_haystack(lengths: Iterable[int] = (8_000,), positions: Iterable[float] = (0.5,), *,
                  per_cell: int = 1, seed: int = 0) -> Iterator[Example]:
    """A JSON array of sensor records, every field numeric but the id; the question asks one field of
    one record. Gold: the exact value as written in the JSON."""
    for n, p, s, eid in _cells("json-haystack", lengths, positions, per_cell, seed):
        rng = random.Random(f"json-haystack-{s}")
        records, size = [], 2
        while True:
            rec = {"id": f"rec-{rng.randint(10_000, 99_999)}-{len(records)}", "reading": round(rng.uniform(0, 9999), 2),
                   "count": rng.randint(0, 500), "temp_c": round(rng.uniform(-40, 60), 1), "batch": rng.randint(1, 99)}
            line = json.dumps(rec)
            if size + len(line) + 2 > n and records:
                break
            records.append(rec)
            size += len(line) + 2
        target = records[min(len(records) - 1, round(p * (len(records) - 1)))]
        field = rng.choice(["reading", "count", "temp_c"])
        text = "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]"
        at = text.index(json.dumps(target))
        yield Example(id=eid, dataset="json-haystack", context=text,
                      question=f"In the JSON records, what is the value of \"{field}\" for the record with id \"{target['id']}\"?",
                      gold=str(target[field]), question_type=f"json_{field}", instructions=NUMBER_ONLY,
                      meta={"position": p, "n_records": len(records), "seed": s,
                            "gold_spans": [[at, at + len(json.dumps(target))]]})


def multi_needle(lengths: Iterable[int] = (8_000,), positions: Iterable[float] = (0.2, 0.4, 0.6, 0.8), *,
                 per_cell: int = 1, seed: int = 0) -> Iterator[Example]:
    """One document per cell with one needle at each position: each needle asked separately
    (``multi_needle_one``), then all together in order (``multi_needle_all``, gold ``v1, v2, ...``)."""
    ls, ps = _check(lengths, positions)
    for n, _p, s, eid in _cells("multi-needle", ls, [ps[0]], per_cell, seed):
        kvs = [make_key_value(s * 31 + j) for j in range(len(ps))]
        keys = [k for k, _ in kvs]
        if len(set(keys)) < len(keys):  # a repeated key would make two golds for one question
            kvs = [(f"{k}-{j}", v) for j, (k, v) in enumerate(kvs)]
        text, offs = _haystack(s, n, [(p, NEEDLE_TEMPLATE.format(key=k, value=v)) for p, (k, v) in zip(ps, kvs)])
        base = eid.replace(f"-p{ps[0]:.2f}", "")
        for j, ((k, v), p) in enumerate(zip(kvs, ps)):
            yield Example(id=f"{base}-one{j}", dataset="multi-needle", context=text,
                          question=QUESTION_TEMPLATE.format(key=k), gold=v, question_type="multi_needle_one",
                          instructions=NUMBER_ONLY, meta={"position": p, "needle_start": offs[j], "seed": s,
                                                                   "gold_spans": value_span(text, v, offs[j])})
        names = ", ".join(k for k, _ in kvs)
        yield Example(id=f"{base}-all", dataset="multi-needle", context=text,
                      question=f"What are the special magic numbers for {names}? List them in that order.",
                      gold=", ".join(v for _, v in kvs), question_type="multi_needle_all",
                      instructions="Answer with the numbers only, separated by commas, in the order asked.",
                      meta={"positions": ps, "seed": s})


def decoys(lengths: Iterable[int] = (8_000,), positions: Iterable[float] = (0.5,), *, per_cell: int = 1,
           seed: int = 0, n_decoys: int = 3) -> Iterator[Example]:
    """The true needle plus ``n_decoys`` numbers for the same key, each labelled as wrong in the text,
    spread over the document. Gold: the true value; an answer ending on a decoy scores 0."""
    for n, p, s, eid in _cells("decoys", lengths, positions, per_cell, seed):
        key, value = make_key_value(s)
        rng = random.Random(f"decoys-{s}")
        wrong = [str(rng.randint(1_000_000, 9_999_999)) for _ in range(n_decoys)]
        wrong = [w for w in wrong if w != value]
        facts = [(p, NEEDLE_TEMPLATE.format(key=key, value=value))]
        for j, w in enumerate(wrong):
            q = (p + (j + 1) / (len(wrong) + 1)) % 1.0
            facts.append((q, f"A rumor claims the special magic number for {key} is {w}, but that number is wrong."))
        text, offs = _haystack(s, n, facts)
        yield Example(id=eid, dataset="decoys", context=text, question=QUESTION_TEMPLATE.format(key=key), gold=value,
                      question_type="decoys", instructions=NUMBER_ONLY + " Numbers the text calls wrong are not the answer.",
                      meta={"position": p, "needle_start": offs[0], "decoys": wrong, "seed": s,
                            "gold_spans": value_span(text, value, offs[0])})


def absent(lengths: Iterable[int] = (8_000,), positions: Iterable[float] = (0.5,), *, per_cell: int = 1,
           seed: int = 0) -> Iterator[Example]:
    """No answer present: needles for two other keys, none for the key asked. Gold ``NONE``; see
    ``score_absent`` for the rule."""
    for n, p, s, eid in _cells("absent", lengths, positions, per_cell, seed):
        asked, _ = make_key_value(s)
        others = []
        j = 1
        while len(others) < 2:
            k, v = make_key_value(s * 7 + j)
            j += 1
            if k != asked:
                others.append((k, v))
        facts = [(p, NEEDLE_TEMPLATE.format(key=k, value=v)) if i == 0 else
                 ((p + 0.5) % 1.0, NEEDLE_TEMPLATE.format(key=k, value=v)) for i, (k, v) in enumerate(others)]
        text, _ = _haystack(s, n, facts)
        yield Example(id=eid, dataset="absent", context=text, question=QUESTION_TEMPLATE.format(key=asked),
                      gold=ABSENT_WORD, question_type="absent", instructions=ABSENT_INSTRUCTIONS,
                      meta={"position": p, "present_keys": [k for k, _ in others], "seed": s})


def multi_hop(lengths: Iterable[int] = (8_000,), positions: Iterable[float] = (0.2,), *, per_cell: int = 1,
              seed: int = 0, gap: float = 0.6) -> Iterator[Example]:
    """Two facts ``gap`` of the document apart: KEY's locker name, then what that locker holds; two
    other lockers hold other numbers, so the first fact is needed. Gold: the number."""
    lockers = ("heron", "quartz", "marigold", "tundra", "saffron", "juniper", "cobalt", "ember")
    for n, p, s, eid in _cells("multi-hop", lengths, positions, per_cell, seed):
        key, value = make_key_value(s)
        rng = random.Random(f"multi-hop-{s}")
        names = rng.sample(lockers, 3)
        others = [str(rng.randint(1_000_000, 9_999_999)) for _ in range(2)]
        q = min(1.0, p + gap) if p + gap <= 1.0 else max(0.0, p - gap)
        facts = [(p, f"The belongings of {key} are kept in the locker named {names[0]}."),
                 (q, f"The locker named {names[0]} holds the number {value}."),
                 ((p + q) / 2, f"The locker named {names[1]} holds the number {others[0]}."),
                 ((q + 1.0) / 2 if q < 0.9 else q / 2, f"The locker named {names[2]} holds the number {others[1]}.")]
        text, offs = _haystack(s, n, facts)
        yield Example(id=eid, dataset="multi-hop", context=text,
                      question=f"Which number does the locker holding the belongings of {key} hold?",
                      gold=value, question_type="multi_hop", instructions=NUMBER_ONLY,
                      meta={"positions": [p, q], "fact_starts": offs[:2], "seed": s,
                            "gold_spans": value_span(text, value, offs[1])})
