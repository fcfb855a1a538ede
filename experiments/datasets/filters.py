"""Streaming example filters: select without materializing a split.

Order: cheap field tests, then the context-character cap, then the (cached) token
count, then an optional seeded random subset (reservoir sampling, so exactly ``sample``
examples are drawn uniformly from everything that passed, holding only ``sample`` in
memory), then ``limit``. With ``limit`` and no ``sample`` the stream stops early.
"""
from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

from rlm_rig.experiments.datasets.example import Example

# A tokenizer callable may return the token count or the tokens themselves.
TokenCounter = Callable[[str], Union[int, Sequence]]


def question_type_matches(question_type: str | None, wanted: Iterable[str]) -> bool:
    """``wanted`` entries match exactly, or as a family: ``"multidoc"`` matches
    ``multidoc_rolls``/``multidoc_spells``; ``"rolls"`` matches ``*_rolls``."""
    if question_type is None:
        return False
    for w in wanted:
        if question_type == w or question_type.startswith(w + "_") or question_type.endswith("_" + w):
            return True
    return False


@dataclass
class ExampleFilter:
    """Which examples to keep. ``None`` / empty means "no constraint"."""

    question_types: list[str] | None = None
    answer_types: list[str] | None = None
    ids: set[str] | None = None
    min_episodes: int | None = None
    max_episodes: int | None = None
    max_context_chars: int | None = None
    max_context_tokens: int | None = None
    tokenizer: TokenCounter | None = field(default=None, repr=False)
    sample: int | None = None
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_episodes", "max_episodes", "max_context_chars", "max_context_tokens", "sample", "limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"filter {name} must be a non-negative int, got {value!r}")
        if self.min_episodes is not None and self.max_episodes is not None and self.min_episodes > self.max_episodes:
            raise ValueError(f"min_episodes ({self.min_episodes}) > max_episodes ({self.max_episodes})")
        if self.max_context_tokens is not None and self.tokenizer is None:
            raise ValueError("max_context_tokens needs a tokenizer callable (text -> token count or tokens)")
        if isinstance(self.question_types, str):
            self.question_types = [self.question_types]
        if isinstance(self.answer_types, str):
            self.answer_types = [self.answer_types]
        if self.ids is not None:
            self.ids = {str(i) for i in self.ids}

    @property
    def uses_episodes(self) -> bool:
        return self.min_episodes is not None or self.max_episodes is not None


def count_tokens(tokenizer: TokenCounter, text: str) -> int:
    """Token count from a callable returning a count, a token sequence, or (a Hugging
    Face tokenizer called directly) an encoding with ``input_ids``."""
    out = tokenizer(text)
    if isinstance(out, bool):
        raise TypeError("tokenizer returned a bool, expected a count or a token sequence")
    if isinstance(out, int):
        return out
    if isinstance(out, Mapping):
        if "input_ids" not in out:
            raise TypeError("tokenizer returned a mapping without 'input_ids'")
        return len(out["input_ids"])
    return len(out)


class _TokenCache:
    """Token counts by document hash: OOLONG rows of one window share the document,
    so each window is tokenized once."""

    def __init__(self, tokenizer: TokenCounter, size: int = 64) -> None:
        self.tokenizer = tokenizer
        self.size = size
        self._counts: OrderedDict[str, int] = OrderedDict()

    def count(self, text: str) -> int:
        key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        if key in self._counts:
            self._counts.move_to_end(key)
            return self._counts[key]
        n = count_tokens(self.tokenizer, text)
        self._counts[key] = n
        if len(self._counts) > self.size:
            self._counts.popitem(last=False)
        return n


def _passes(ex: Example, f: ExampleFilter, tokens: _TokenCache | None) -> bool:
    if f.ids is not None and ex.id not in f.ids:
        return False
    if f.question_types and not question_type_matches(ex.question_type, f.question_types):
        return False
    if f.answer_types and ex.answer_type not in f.answer_types:
        return False
    if f.uses_episodes:
        if ex.episodes is None:
            raise ValueError(f"episode filters apply to datasets with episodes (oolong-real); example {ex.id} of {ex.dataset} has none")
        n = len(ex.episodes)
        if f.min_episodes is not None and n < f.min_episodes:
            return False
        if f.max_episodes is not None and n > f.max_episodes:
            return False
    if f.max_context_chars is not None and len(ex.context) > f.max_context_chars:
        return False
    if tokens is not None and f.max_context_tokens is not None:
        n_tokens = tokens.count(ex.context)
        ex.meta.setdefault("context_tokens", n_tokens)
        if n_tokens > f.max_context_tokens:
            return False
    return True


def apply_filter(examples: Iterable[Example], f: ExampleFilter | None) -> Iterator[Example]:
    """Lazily yield the examples that pass ``f``, in stream order."""
    if f is None:
        yield from examples
        return
    tokens = _TokenCache(f.tokenizer) if f.tokenizer is not None and f.max_context_tokens is not None else None
    passing = (ex for ex in examples if _passes(ex, f, tokens))
    if f.sample is not None:
        passing = iter(reservoir_sample(passing, f.sample, f.seed))
    if f.limit is None:
        yield from passing
        return
    if f.limit == 0:
        return
    for i, ex in enumerate(passing, 1):
        yield ex
        if i >= f.limit:
            return


def reservoir_sample(items: Iterable[Example], k: int, seed: int) -> list[Example]:
    """A uniform random ``k``-subset of a stream (Algorithm R), returned in stream order.
    The same seed over the same stream always gives the same subset."""
    rng = random.Random(seed)
    kept: list[tuple[int, Example]] = []
    for i, item in enumerate(items):
        if i < k:
            kept.append((i, item))
        else:
            j = rng.randint(0, i)
            if j < k:
                kept[j] = (i, item)
    return [item for _, item in sorted(kept, key=lambda t: t[0])]
