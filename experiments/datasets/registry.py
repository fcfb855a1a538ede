"""The one registry of datasets: names, aliases, loader, official and lenient scorers, and how each
splits into task instructions and question.

Every sub-folder of `experiments/datasets/` registers its datasets in its `__init__.py`; the
registry imports those folders on first use. Adding a dataset is therefore adding one folder:
`load.py`, `score.py` and an `__init__.py` calling `register(Dataset(...))`.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.filters import ExampleFilter

# (source, *, split, filters, **options) -> examples
Loader = Callable[..., Iterator[Example]]
# (output, gold, *, answer_type=None) -> ScoreResult
Scorer = Callable[..., Any]


@dataclass(frozen=True)
class Dataset:
    name: str
    load: Loader
    score: Scorer
    score_lenient: Scorer
    split: str = "no instructions"  # in words: what is task instructions and what is question
    aliases: tuple[str, ...] = ()
    generated: bool = False  # made locally from a seed: takes no source, exact gold
    options: tuple[str, ...] = ()  # loader options the CLI may set (--length -> "lengths", ...)


_DATASETS: dict[str, Dataset] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def register(ds: Dataset) -> Dataset:
    for key in (ds.name, *ds.aliases):
        _ALIASES[key.lower()] = ds.name
    _DATASETS[ds.name] = ds
    return ds


def _discover() -> None:
    """Import every dataset folder once; each registers itself."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.ispkg:
            importlib.import_module(f"{__package__}.{info.name}")  # this package, however it is installed


def lookup(name: str) -> Dataset | None:
    _discover()
    key = _ALIASES.get(str(name).strip().lower())
    return _DATASETS.get(key) if key else None


def get(name: str) -> Dataset:
    ds = lookup(name)
    if ds is None:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(names())}")
    return ds


def names() -> list[str]:
    _discover()
    return list(_DATASETS)


def generator(name: str) -> Dataset | None:
    """The dataset if it is generated locally (no source, seed and length options), else None."""
    ds = lookup(name)
    return ds if ds is not None and ds.generated else None


def generator_names() -> list[str]:
    return [n for n in names() if _DATASETS[n].generated]


def load_examples(
    dataset: str,
    source: str | Path | None = None,
    *,
    split: str = "test",
    filters: ExampleFilter | None = None,
    **options: Any,
) -> Iterator[Example]:
    """Examples of ``dataset`` (any registered name or alias), streamed lazily and filtered.

    ``source``: a bundled sample name (``toy``/``mini``), a local file or folder, or a hub repo id
    (default: the official repo, streamed). Generated datasets take no source. ``options`` go to the
    loader: oolong-real ``config``, ``data_files``, ``revision``; oolong-synth ``subset``,
    ``context_len``, ``data_files``, ``revision``; sniah and the generators ``lengths``, ``depths`` /
    ``positions``, ``per_cell``, ``seed`` (sniah also ``unit``, ``tokenizer``, ``filler``).
    """
    ds = get(dataset)
    if ds.generated and source is not None:
        raise ValueError(f"{ds.name} is generated locally; it takes no source (use length/position/seed options)")
    return ds.load(source, split=split, filters=filters, **options)
