"""S-NIAH generator: needle depth, haystack length in chars/tokens, determinism, scoring."""
from __future__ import annotations

import re

import pytest

from rlm_rig.experiments.datasets.filters import ExampleFilter
from rlm_rig.experiments.datasets.registry import load_examples
from rlm_rig.experiments.datasets.sniah.score import score_sniah
from rlm_rig.experiments.datasets.sniah.load import NEEDLE_TEMPLATE, build_haystack, filler_sentences, make_sniah_example, sniah_grid


def test_example_has_needle_question_and_gold():
    ex = make_sniah_example(seed=3, depth=0.5, haystack_chars=2000)
    key, value = ex.meta["key"], ex.gold
    needle = NEEDLE_TEMPLATE.format(key=key, value=value)
    assert ex.context.count(needle) == 1 and ex.meta["needle"] == needle
    assert ex.context[ex.meta["needle_start"]:].startswith(needle)
    assert key in ex.question and value not in ex.question
    assert re.fullmatch(r"\d{7}", value)
    assert re.findall(r"\d", ex.context.replace(value, "")) == []  # the needle is the only number
    assert ex.dataset == "sniah" and ex.question_type == "niah_single"
    assert score_sniah(f"The number is {value}.", ex.gold).score == 1.0
    assert score_sniah("The number is 1234.", ex.gold).score == 0.0


@pytest.mark.parametrize("length", [200, 1000, 5000, 20000])
def test_char_length_is_close_to_target(length):
    ex = make_sniah_example(seed=1, depth=0.3, haystack_chars=length)
    assert length - 120 <= len(ex.context) <= length  # within one filler sentence


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_needle_depth(depth):
    ex = make_sniah_example(seed=7, depth=depth, haystack_chars=10_000)
    assert ex.meta["actual_depth"] == pytest.approx(depth, abs=0.02)
    if depth == 0.0:
        assert ex.meta["needle_start"] == 0
    if depth == 1.0:
        assert ex.context.endswith(ex.meta["needle"])


def test_token_length_with_a_tokenizer():
    def tokens(text: str) -> list[str]:  # a real (if simple) tokenizer: words and punctuation
        return re.findall(r"\w+|[^\w\s]", text)

    ex = make_sniah_example(seed=2, depth=0.5, haystack_tokens=800, tokenizer=tokens)
    n = len(tokens(ex.context))
    assert 780 <= n <= 800
    assert ex.meta["unit"] == "tokens" and ex.meta["target_length"] == 800
    counted = make_sniah_example(seed=2, depth=0.5, haystack_tokens=800, tokenizer=lambda t: len(tokens(t)))
    assert counted.context == ex.context  # a count-returning callable works the same


def test_deterministic_and_seed_sensitive():
    a = make_sniah_example(seed=5, depth=0.5, haystack_chars=3000)
    b = make_sniah_example(seed=5, depth=0.5, haystack_chars=3000)
    c = make_sniah_example(seed=6, depth=0.5, haystack_chars=3000)
    assert a == b
    assert a.context != c.context and a.gold != c.gold


def test_repeat_filler():
    ex = make_sniah_example(seed=0, depth=0.5, haystack_chars=2000, filler="repeat")
    assert ex.context.count("The river runs east past the mill.") > 5
    first = [next(filler_sentences(0, "prose")) for _ in range(2)]
    assert first[0] == first[1]  # a fresh stream per call: same seed, same first sentence


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=1.5, haystack_chars=1000), "depth"),
        (dict(depth=0.5), "exactly one"),
        (dict(depth=0.5, haystack_chars=100, haystack_tokens=100), "exactly one"),
        (dict(depth=0.5, haystack_tokens=100), "tokenizer"),
        (dict(depth=0.5, haystack_chars=10), "shorter than the needle"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_haystack(NEEDLE_TEMPLATE.format(key="k", value="1234567"), seed=0, **kwargs)


def test_grid_and_loader():
    grid = list(sniah_grid([1000, 4000], [0.0, 0.5, 1.0], per_cell=2, seed=9))
    assert len(grid) == 12 and len({e.id for e in grid}) == 12 and len({e.gold for e in grid}) > 6
    assert {e.meta["target_length"] for e in grid} == {1000, 4000}
    limited = list(load_examples("s-niah", lengths=[1000, 4000], depths=[0.5], filters=ExampleFilter(max_context_chars=1000)))
    assert len(limited) == 1 and len(limited[0].context) <= 1000
    with pytest.raises(ValueError, match="no source"):
        load_examples("sniah", "toy")
