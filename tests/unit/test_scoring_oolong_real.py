"""OOLONG-real scoring: official rules (boxed parse, int/str/list comparisons) and the lenient variant."""
from __future__ import annotations

import pytest

from rlm_rig.experiments.datasets.boxed import extract_boxed, find_boxes
from rlm_rig.experiments.datasets.oolong_real.score import (
    parse_dnd_answer,
    parse_dnd_response,
    score_dnd_parsed,
    score_oolong_real,
    score_oolong_real_lenient,
)


# ----------------------------------------------------------------------------- boxes

@pytest.mark.parametrize(
    "text, span",
    [
        (r"\boxed{12}", "12"),
        (r"so \boxed{ 12 } done", " 12 "),
        (r"\boxed{{12}}", "12"),  # the prompt literally says \boxed{{}}
        (r"\boxed{{{7}}}", "7"),
        (r"\boxed{\text{Vex'ahlia}}", "Vex'ahlia"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces kept whole
        (r"\boxed{a{b}c}", "a{b}c"),
        (r"\boxed{}", ""),
        (r"\boxed{\{x\}}", r"\{x\}"),  # escaped braces do not close the box
        (r"first \boxed{5} then \boxed{6}", "5"),  # first box wins
        (r"\boxed{5} later \boxed{\text{Grog}}", "Grog"),  # a \text box beats an earlier plain box
        (r"\boxed{\text{a}, \text{b}}", r"\text{a}, \text{b}"),  # not a single \text{...}
        (r"\boxed{\textbf{9}}", r"\textbf{9}"),  # only \text is unwrapped, as upstream
    ],
)
def test_extract_boxed(text, span):
    assert extract_boxed(text) == span


@pytest.mark.parametrize("text", ["no box here", r"\boxed{12", r"\boxed 12", r"\boxed", ""])
def test_extract_boxed_none(text):
    assert extract_boxed(text) is None


def test_find_boxes_skips_unclosed_and_keeps_order():
    boxes = find_boxes(r"\boxed{1} \boxed{2 \boxed{3}")
    # the second box never closes; the complete box nested in it is still found
    assert [b.content for b in boxes] == ["1", "3"]
    boxes = find_boxes(r"\boxed{1} x \boxed{2} \boxed{3}")
    assert [b.content for b in boxes] == ["1", "2", "3"]
    assert boxes[0].start == 0


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("12", 12),
        (" 12 ", 12),
        ("-3", -3),
        ("+4", 4),
        ("1_000", 1000),  # Python int() accepts digit separators
        ("1,000", ["1", "000"]),  # a comma makes a list, even inside a number
        ("Damage", "Damage"),
        ("  Damage ", "  Damage "),  # strings are not stripped by the parser
        ("Intelligence, Charisma", ["Intelligence", "Charisma"]),
        ("a,b , c", ["a", "b", "c"]),
        ("Vex,", ["Vex"]),  # trailing comma: one-item list
        (",", []),
        ("a,,b", ["a", "b"]),  # empty items dropped
        ("a, a", ["a", "a"]),  # duplicates kept in the list
        ("", ""),
        ("12.0", "12.0"),  # not an int
    ],
)
def test_parse_dnd_answer(answer, parsed):
    assert parse_dnd_answer(answer) == parsed


def test_parse_response_unboxed_is_raw_string():
    assert parse_dnd_response("The answer is 12") == ("The answer is 12", "low")
    assert parse_dnd_response("12") == ("12", "low")  # stays a string: no box, no parse
    assert parse_dnd_response(r"\boxed{12}") == (12, "high")
    assert parse_dnd_response(r"\boxed{\text{12}}") == (12, "high")
    assert parse_dnd_response(r"\boxed{a, b}") == (["a", "b"], "high")


# ----------------------------------------------------------------------------- scores

@pytest.mark.parametrize(
    "output, gold, score",
    [
        (r"\boxed{85}", "85", 1.0),
        (r"\boxed{84}", "85", 0.75),
        (r"\boxed{87}", "85", 0.75**2),
        (r"\boxed{-3}", "3", 0.75**6),
        (r"\boxed{{85}}", "85", 1.0),
        (r"\boxed{\text{85}}", "85", 1.0),
        ("85", "85", 0.0),  # unboxed int: str vs int gold, type mismatch
        (r"\boxed{Damage}", "Damage", 1.0),
        (r"\boxed{ damage }", "Damage", 1.0),  # strings: case-insensitive, stripped
        (r"\boxed{\text{DAMAGE}}", "Damage", 1.0),
        ("  damage\n", "Damage", 1.0),  # unboxed string output can still match exactly
        ("The answer is Damage", "Damage", 0.0),
        (r"\boxed{Damage, Attack}", "Damage", 0.0),  # list vs str gold
        (r"\boxed{12, 6, 5}", "12, 6, 5", 1.0),
        (r"\boxed{5,6,12}", "12, 6, 5", 1.0),  # order does not matter
        (r"\boxed{12, 6}", "12, 6, 5", 2 / 3),
        (r"\boxed{12, 6, 5, 99, 100}", "12, 6, 5", 1.0),  # extra items cost nothing
        (r"\boxed{12, 12, 12}", "12, 6, 5", 1 / 3),  # duplicates count once
        (r"\boxed{intelligence, Charisma}", "Intelligence, Charisma", 0.5),  # lists are case-sensitive
        (r"\boxed{Intelligence,Charisma}", "Intelligence, Charisma", 1.0),  # items stripped
        (r"\boxed{12}", "12, 6, 5", 0.0),  # int vs list
        (r"\boxed{Damage}", "85", 0.0),  # str vs int
        (r"\boxed{}", "85", 0.0),
        (r"\boxed{}", "Damage", 0.0),
        ("", "Damage", 0.0),
        (r"\boxed{5} \boxed{85}", "85", 0.75**80),  # only the first box counts
        (r"\boxed{1000000}", "1", 0.0),  # huge distance underflows to 0, no OverflowError
        (r"\boxed{" + "9" * 400 + "}", "1", 0.0),
    ],
)
def test_score_oolong_real(output, gold, score):
    result = score_oolong_real(output, gold)
    assert result.score == pytest.approx(score)


def test_score_none_output_is_zero():
    r = score_oolong_real(None, "85")
    assert (r.score, r.parsed, r.confidence) == (0.0, None, "none")


def test_gold_given_as_json_int_or_list():
    assert score_oolong_real(r"\boxed{85}", 85).score == 1.0
    assert score_oolong_real(r"\boxed{a, b}", ["a", "b"]).score == 1.0
    with pytest.raises(ValueError, match="gold"):
        score_oolong_real(r"\boxed{1}", None)


def test_score_dnd_parsed_empty_gold_list_and_bools():
    assert score_dnd_parsed([], ["a"]) == 0.0
    assert score_dnd_parsed(True, 1) == 0.0  # bools are not answers


def test_parsed_value_is_reported():
    r = score_oolong_real(r"reasoning... \boxed{12, 6}", "12, 6, 5")
    assert r.parsed == ["12", "6"] and r.confidence == "high"


# ----------------------------------------------------------------------------- lenient

@pytest.mark.parametrize(
    "output, gold, strict, lenient",
    [
        ("So the total is 85.", "85", 0.0, 1.0),  # unboxed final number
        ("FINAL(85)", "85", 0.0, 1.0),
        ("Final answer: 84", "85", 0.0, 0.75),
        (r"\boxed{1,000}", "1000", 0.0, 1.0),  # thousands separator
        (r"\boxed{8\%}", "8", 0.0, 1.0),
        (r"\boxed{\textbf{85}}", "85", 0.0, 1.0),
        (r"\boxed{\text{Intelligence}, \text{Charisma}}", "Intelligence, Charisma", 0.0, 1.0),
        (r"\boxed{intelligence, charisma}", "Intelligence, Charisma", 0.0, 1.0),  # case-insensitive lists
        (r"\boxed{Intelligence and Charisma}", "Intelligence, Charisma", 0.0, 1.0),
        ("Answer: **Damage**", "Damage", 0.0, 1.0),
        (r"\boxed{Damage,}", "Damage", 0.0, 1.0),  # one-item list vs string gold
        (r"\boxed{Damage, Attack}", "Damage", 0.0, 0.0),  # several answers to a one-answer question
        (r"I think \boxed{} ... \boxed{85}", "85", 0.0, 1.0),  # empty template box skipped
        (r"\boxed{85}", "85", 1.0, 1.0),
        ("no idea", "85", 0.0, 0.0),
        ("no idea", "Damage", 0.0, 0.0),
    ],
)
def test_lenient(output, gold, strict, lenient):
    assert score_oolong_real(output, gold).score == pytest.approx(strict)
    assert score_oolong_real_lenient(output, gold).score == pytest.approx(lenient)


@pytest.mark.parametrize(
    "output",
    [r"\boxed{5} \boxed{85}", r"\boxed{12, 6}", "damage", r"\boxed{\text{85}}", "", "12 13 14"],
)
def test_lenient_never_below_strict(output):
    for gold in ("85", "Damage", "12, 6, 5", "5"):
        assert score_oolong_real_lenient(output, gold).score >= score_oolong_real(output, gold).score
