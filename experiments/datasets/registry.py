"""Generated datasets (exact gold, made locally from a seed), registered by name so that
``rlm-rig eval --dataset NAME`` accepts them. Each entry: a loader ``(**options) -> Iterator[Example]``,
a scorer ``(output, gold) -> ScoreResult``, and a one-line description of its instructions/question split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

GENERATORS: dict[str, "Generator"] = {}


@dataclass(frozen=True)
class Generator:
    name: str
    load: Callable[..., Iterator[Any]]
    score: Callable[[str | None, str], Any]
    split: str


def register(gen: Generator) -> Generator:
    GENERATORS[gen.name] = gen
    return gen


def _load_all() -> None:
    import experiments.datasets.edge  # noqa: F401  (registers the edge-case generators)


def generator(name: str) -> Generator | None:
    _load_all()
    return GENERATORS.get(name)


def generator_names() -> list[str]:
    _load_all()
    return sorted(GENERATORS)


def generator_split(name: str) -> str | None:
    g = generator(name)
    return g.split if g else None
