"""The generated dice-roll counting set: determinism, exact gold, scoring, equal-length k±1 pairs."""

from __future__ import annotations

import random

import pytest

from rlm_rig.records.answers import find_int
from rlm_rig.experiments.studies.counting import (
    COUNT_INSTRUCTION,
    CountingItem,
    constant_baseline,
    count_messages,
    distractor_line_candidates,
    make_counting_item,
    make_counting_set,
    roll_line_candidates,
    roll_mentions,
    score_count,
    summarize_counting,
)


@pytest.fixture(scope="module")
def items() -> list[CountingItem]:
    return make_counting_set(0, per_cell=2)


def test_set_is_deterministic_and_seeded(items):
    again = make_counting_set(0, per_cell=2)
    assert [i.to_dict() for i in again] == [i.to_dict() for i in items]
    other = make_counting_set(1, per_cell=2)
    assert [i.passage for i in other] != [i.passage for i in items]
    # growing the grid keeps the items already in it
    bigger = {i.id: i for i in make_counting_set(0, per_cell=3)}
    assert all(bigger[i.id] == i for i in items)


def test_grid_shape_and_fields(items):
    assert len(items) == 3 * 10 * 2
    cells = {(i.n_lines, i.k) for i in items}
    assert cells == {(n, k) for n in (10, 20, 40) for k in range(10)}
    assert len({i.id for i in items}) == len(items)
    for it in items:
        assert set(it.to_dict()) == {"id", "passage", "k", "n_lines", "roll_line_indices", "instruction"}
        assert len(it.lines) == it.n_lines
        assert it.instruction == COUNT_INSTRUCTION
    # k larger than the passage is skipped, not an error
    small = make_counting_set(0, ks=[0, 5, 12], lengths=[10], per_cell=1)
    assert [i.k for i in small] == [0, 5]


def test_gold_equals_roll_mentions_line_by_line(items):
    for it in items:
        spans = roll_mentions(it.passage)
        assert len(spans) == it.k, it.id
        hit_lines = sorted({it.passage.count("\n", 0, s) for s, _ in spans})
        assert hit_lines == it.roll_line_indices, it.id
        for i, line in enumerate(it.lines):
            assert len(roll_mentions(line)) == (1 if i in it.roll_line_indices else 0)
            assert ":" in line  # speaker: utterance


def test_templates_are_unambiguous():
    rolls, distractors = roll_line_candidates(), distractor_line_candidates()
    assert all(len(roll_mentions(line)) == 1 for line in rolls)
    assert not any(roll_mentions(line) for line in distractors)
    assert not any("roll" in line.lower() for line in distractors)
    # distractors do carry numbers, dice, gold and hit points
    text = "\n".join(distractors).lower()
    for word in ("dice", "gold", "hit points", "check"):
        assert word in text
    assert any(ch.isdigit() for ch in text)


def test_roll_mentions_spans():
    text = "Laura: I rolled a 17.\nSam: Rolled an 8 again?\nMatt: Make a perception check.\nLiam: I rolled a natural 20!"
    spans = roll_mentions(text)
    assert [text[s:e] for s, e in spans] == ["rolled a 17", "Rolled an 8", "rolled a natural 20"]
    assert roll_mentions("I bought new dice. Roll for initiative. 12 gold.") == []


def test_bad_arguments_are_named():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="k must be"):
        make_counting_item(11, 10, rng)
    with pytest.raises(ValueError, match="n_lines"):
        make_counting_item(0, 0, rng)
    with pytest.raises(ValueError, match="per_cell"):
        make_counting_set(0, per_cell=0)
    with pytest.raises(ValueError, match="ks"):
        make_counting_set(0, ks=[-1])


@pytest.mark.parametrize(
    ("answer", "pred"),
    [("3", 3), ("There are 12 dice rolls.", 12), ("three", 3), ("The answer is Four.", 4), ("-2", -2),
     ("1\n\nThe text is 10 dice rolls.", 1), ("none", None), ("", None), (None, None)],
)  # fmt: skip
def test_parse_first_int(answer, pred):
    assert find_int(answer, words=True) == pred


def test_score_count():
    assert score_count("5", 5) == {"pred": 5, "exact": 1.0, "oolong": 1.0}
    s = score_count("I count 7.", 5)
    assert s["exact"] == 0.0 and s["oolong"] == pytest.approx(0.75**2)
    assert score_count("no idea", 5) == {"pred": None, "exact": 0.0, "oolong": 0.0}
    rows = [dict(k=2, n_lines=10, **score_count("2", 2)), dict(k=3, n_lines=10, **score_count("x", 3))]
    table = summarize_counting(rows, "k")
    assert [r["k"] for r in table] == [2, 3, "all"]
    assert table[-1]["exact"] == 0.5 and table[-1]["unparsed"] == 0.5


def test_count_messages_match_the_rig_format():
    msgs = count_messages("A: b", "Count.")
    assert msgs == [
        {"role": "system", "content": "You are a careful reader. Answer the instruction using only the given text. Be brief."},
        {"role": "user", "content": "Text:\nA: b\n\nInstruction: Count."},
    ]  # fmt: skip


def test_constant_baseline():
    base = constant_baseline(list(range(10)))
    assert base["answer"] in (4, 5) and base["exact"] == 0.1
    assert base["oolong"] == pytest.approx(sum(0.75 ** abs(k - base["answer"]) for k in range(10)) / 10)
    assert constant_baseline([3, 3, 3]) == {"answer": 3, "oolong": 1.0, "exact": 1.0}
