"""The generated dice-roll counting set: determinism, exact gold, scoring, equal-length k±1 pairs."""

from __future__ import annotations

import random

import pytest

from controller.answers import find_int
from experiments.studies.counting import (
    COUNT_INSTRUCTION,
    CountingItem,
    CountPairError,
    constant_baseline,
    count_messages,
    distractor_line_candidates,
    make_count_pair,
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


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from worker.tiny import ensure_tiny_model

    return AutoTokenizer.from_pretrained(ensure_tiny_model())


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


@pytest.mark.parametrize("direction", [1, -1])
def test_pairs_have_equal_token_length(items, tiny_tokenizer, direction):
    made = 0
    for it in items[::3]:
        if direction == -1 and it.k == 0:
            continue
        pair = make_count_pair(it, tiny_tokenizer, direction, random.Random(7))
        clean = tiny_tokenizer.encode(pair.clean, add_special_tokens=False)
        corrupt = tiny_tokenizer.encode(pair.corrupt, add_special_tokens=False)
        assert len(clean) == len(corrupt) == pair.n_tokens
        assert clean[: pair.first_diff_token] == corrupt[: pair.first_diff_token]
        assert pair.diff_token_positions and pair.first_diff_token == pair.diff_token_positions[0]
        assert pair.k_corrupt == it.k + direction == len(roll_mentions(pair.corrupt))
        a, b = pair.clean.split("\n"), pair.corrupt.split("\n")
        assert [i for i in range(len(a)) if a[i] != b[i]] == [pair.line_index]
        assert (pair.line_index in it.roll_line_indices) == (direction == -1)
        made += 1
    assert made >= 8


def test_pair_is_deterministic_and_respects_wrap_and_line(items, tiny_tokenizer):
    it = next(i for i in items if i.k == 4 and i.n_lines == 20)
    p1 = make_count_pair(it, tiny_tokenizer, -1, random.Random(3))
    p2 = make_count_pair(it, tiny_tokenizer, -1, random.Random(3))
    assert p1 == p2
    first_distractor = next(i for i in range(it.n_lines) if i not in it.roll_line_indices)

    def wrap(passage: str) -> str:
        return count_messages(passage)[1]["content"]

    p3 = make_count_pair(it, tiny_tokenizer, +1, random.Random(3), wrap=wrap, line_index=first_distractor)
    assert p3.line_index == first_distractor
    assert len(tiny_tokenizer.encode(wrap(p3.clean))) == len(tiny_tokenizer.encode(wrap(p3.corrupt)))
    with pytest.raises(ValueError, match="is not a roll line"):
        make_count_pair(it, tiny_tokenizer, -1, line_index=first_distractor)
    with pytest.raises(ValueError, match="direction"):
        make_count_pair(it, tiny_tokenizer, 2)


def test_pair_reports_impossible_equality(items, tiny_tokenizer):
    zero = next(i for i in items if i.k == 0)
    with pytest.raises(CountPairError, match="no line to swap"):
        make_count_pair(zero, tiny_tokenizer, -1)

    def roll_heavy(text: str) -> list[int]:
        """A tokenizer under which a roll line is always longer than any distractor."""
        return [0] * (len(text.split()) + 100 * len(roll_mentions(text)))

    it = next(i for i in items if i.k == 3)
    with pytest.raises(CountPairError, match="equality is impossible"):
        make_count_pair(it, roll_heavy, -1, random.Random(0))


def test_constant_baseline():
    base = constant_baseline(list(range(10)))
    assert base["answer"] in (4, 5) and base["exact"] == 0.1
    assert base["oolong"] == pytest.approx(sum(0.75 ** abs(k - base["answer"]) for k in range(10)) / 10)
    assert constant_baseline([3, 3, 3]) == {"answer": 3, "oolong": 1.0, "exact": 1.0}
