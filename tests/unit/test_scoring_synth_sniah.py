"""OOLONG-synth (official answer parse, exact / comparison / numeric / date) and S-NIAH scoring."""
from __future__ import annotations

import datetime as dt

import pytest

from rlm_rig.experiments.datasets.oolong_synth.score import (
    parse_synth_gold,
    parse_synth_response,
    score_oolong_synth,
    score_oolong_synth_lenient,
)
from rlm_rig.experiments.datasets.sniah.score import score_sniah

LABEL, NUM, DATE, CMP, USER = (
    "ANSWER_TYPE.LABEL", "ANSWER_TYPE.NUMERIC", "ANSWER_TYPE.DATE", "ANSWER_TYPE.COMPARISON", "ANSWER_TYPE.USER",
)


@pytest.mark.parametrize(
    "answer, gold",
    [
        ("['entity']", "entity"),
        ("[12]", 12),
        ("['abbreviation', 'human being']", "abbreviation"),  # first element only
        ("[datetime.date(2023, 1, 5)]", dt.datetime(2023, 1, 5)),
        ("['more common than']", "more common than"),
        ("plain", "plain"),  # not a list literal: used as is
    ],
)
def test_parse_synth_gold(answer, gold):
    assert parse_synth_gold(answer) == gold


def test_parse_synth_gold_empty_list_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        parse_synth_gold("[]")


@pytest.mark.parametrize(
    "output, candidate, confidence",
    [
        ("Label: entity", "entity", "vhigh"),
        ("Answer: **12**", "12", "vhigh"),
        ("Answer: [12]", "12", "vhigh"),
        ("**Answer:** entity", " entity", "vhigh"),  # upstream keeps the space left by '**'
        ("entity", "entity", "low"),  # no colon, short: whole output, unstripped
        ("I believe the final label is entity", "entity", "low"),  # no colon, long: last token
        (" " * 25, "", "low"),  # upstream would crash (IndexError)
        ("time 10:30 is it", "30 is it", "vhigh"),  # text after the LAST colon
        ("Answer: human being is more common than entity", "more common", "high"),
        ("Answer: a is less common than b", "less common", "high"),  # 20+ chars: mapped to the phrase
        ("Answer: x is more common y", "x is more common y", "vhigh"),  # < 20 chars: no phrase mapping
        ("The result: something quite long with no phrase", "something quite long with no phrase", "med"),
    ],
)
def test_parse_synth_response(output, candidate, confidence):
    assert parse_synth_response(output) == (candidate, confidence)


@pytest.mark.parametrize(
    "output, answer, answer_type, score",
    [
        ("Label: entity", "['entity']", LABEL, 1.0),
        ("Label: Entity", "['entity']", LABEL, 0.0),  # case-sensitive
        ("**Answer:** entity", "['entity']", LABEL, 0.0),  # leading space survives
        ("Label: abbreviation", "['abbreviation', 'location']", LABEL, 1.0),
        ("Label: location", "['abbreviation', 'location']", LABEL, 0.0),  # only the first gold counts
        ("Answer: 12", "[12]", NUM, 1.0),
        ("Answer: 10", "[12]", NUM, 0.75**2),
        ("Answer: **14**", "[12]", NUM, 0.75**2),
        ("Answer: twelve", "[12]", NUM, 0.0),
        ("Answer: 10", "[12]", LABEL, 0.0),  # partial credit only for NUMERIC
        ("User: 60494", "[60494]", USER, 1.0),
        ("User: 60495", "[60494]", USER, 0.0),  # USER is exact, no partial credit
        ("Answer: A is more common than B", "['more common than']", CMP, 1.0),
        ("Answer: label human being is less common than entity", "['more common than']", CMP, 0.0),
        ("Answer: x is more common y", "['more common than']", CMP, 0.0),  # short candidate, no mapping
        ("Answer: more common than", "['more common than']", CMP, 1.0),
        ("Answer: more common", "['more common than']", CMP, 1.0),  # phrase is a substring of gold
        ("Answer: abuse is the same frequency before Jan", "['the same frequency']", CMP, 1.0),
        ("Date: 01/05/2023", "[datetime.date(2023, 1, 5)]", DATE, 1.0),
        ("Date: 2023-01-05", "[datetime.date(2023, 1, 5)]", DATE, 1.0),
        ("Date: January 5, 2023", "[datetime.date(2023, 1, 5)]", DATE, 1.0),
        ("Date: 01/06/2023", "[datetime.date(2023, 1, 5)]", DATE, 0.0),
        ("Date: 01/05", "[datetime.date(2023, 1, 5)]", DATE, 0.0),  # partial dates never match
        ("Date: not a date", "[datetime.date(2023, 1, 5)]", DATE, 0.0),
        ("Answer: April 2023", "['April 2023']", "ANSWER_TYPE.MONTH_YEAR", 1.0),
    ],
)
def test_score_oolong_synth(output, answer, answer_type, score):
    assert score_oolong_synth(output, answer, answer_type).score == pytest.approx(score)


def test_score_synth_none_output():
    r = score_oolong_synth(None, "[3]", NUM)
    assert (r.score, r.parsed, r.confidence) == (0.0, None, "none")


@pytest.mark.parametrize(
    "output, answer, answer_type, strict, lenient",
    [
        ("**Answer:** entity", "['entity']", LABEL, 0.0, 1.0),
        ("Label: Entity.", "['entity']", LABEL, 0.0, 1.0),
        ("Answer: 1,234", "[1234]", NUM, 0.0, 1.0),
        ("Answer: x is more common y", "['more common than']", CMP, 0.0, 1.0),
        ("Date: 2023-01-05 00:00", "[datetime.date(2023, 1, 5)]", DATE, 0.0, 1.0),
        ("Label: location", "['entity']", LABEL, 0.0, 0.0),
        ("Answer: 12", "[12]", NUM, 1.0, 1.0),
    ],
)
def test_synth_lenient(output, answer, answer_type, strict, lenient):
    assert score_oolong_synth(output, answer, answer_type).score == pytest.approx(strict)
    assert score_oolong_synth_lenient(output, answer, answer_type).score == pytest.approx(lenient)


@pytest.mark.parametrize(
    "output, gold, score",
    [
        ("The special magic number is 1234567.", "1234567", 1.0),
        ("1234567", "1234567", 1.0),
        ("the KEY is ABC-def", "abc-DEF", 1.0),  # case-insensitive
        ("123456", "1234567", 0.0),
        ("", "1234567", 0.0),
        ("1 2 3 4 5 6 7", "1234567", 0.0),
    ],
)
def test_score_sniah(output, gold, score):
    assert score_sniah(output, gold).score == score


def test_sniah_rejects_empty_gold_and_handles_none():
    with pytest.raises(ValueError, match="empty"):
        score_sniah("anything", "  ")
    assert score_sniah(None, "42").score == 0.0
