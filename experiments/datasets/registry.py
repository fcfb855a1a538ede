"""One entry point for the CLI and eval runner: dataset name -> lazy `Example` stream."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from experiments.datasets.example import Example
from experiments.datasets.filters import ExampleFilter
from experiments.datasets.oolong_real.load import HF_REPO as REAL_REPO, load_oolong_real
from experiments.datasets.oolong_synth.load import HF_REPO as SYNTH_REPO, load_oolong_synth
from experiments.datasets.scoring import OOLONG_REAL, OOLONG_SYNTH, SNIAH, canonical_dataset


def load_examples(
    dataset: str,
    source: str | Path | None = None,
    *,
    split: str = "test",
    filters: ExampleFilter | None = None,
    **options: Any,
) -> Iterator[Example]:
    """Examples of ``dataset`` (``oolong-real`` | ``oolong-synth`` | ``sniah``).

    ``source``: a bundled sample name (``toy``/``mini``), a local file or folder, or a
    hub repo id (default: the official repo, streamed). ``options`` go to the loader:
    oolong-real ``config``, ``data_files``, ``revision``; oolong-synth ``subset``,
    ``context_len``, ``data_files``, ``revision``; sniah ``lengths``, ``depths``,
    ``per_cell``, ``seed``, ``unit``, ``tokenizer``, ``filler`` (``source`` unused).
    """
    name = canonical_dataset(dataset)
    if name == OOLONG_REAL:
        return load_oolong_real(source or REAL_REPO, split=split, filters=filters, **options)
    if name == OOLONG_SYNTH:
        return load_oolong_synth(source or SYNTH_REPO, split=split, filters=filters, **options)
    assert name == SNIAH
    from experiments.datasets.sniah.load import load_sniah

    if source is not None:
        raise ValueError("sniah is generated locally; it takes no source (use lengths/depths/seed options)")
    return load_sniah(filters=filters, **options)
