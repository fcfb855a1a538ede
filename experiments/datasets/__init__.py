"""Datasets: one folder each (loader, official scorer, provenance), one name registry.

`load_examples(name, source, filters=...)` streams `Example`s lazily; `score_output` gives the
official score of an answer for any dataset. Loaders, scorers and parsers of one dataset live in
its own folder (`oolong_real/`, `oolong_synth/`, `sniah/`); shared pieces (row readers, filters,
the boxed-answer parser) sit beside the registry.
"""
from experiments.datasets.bundled import DATA_DIR
from experiments.datasets.example import Example
from experiments.datasets.filters import ExampleFilter
from experiments.datasets.registry import load_examples
from experiments.datasets.rows import SchemaError
from experiments.datasets.scoring import (
    DATASET_NAMES,
    canonical_dataset,
    score_file,
    score_output,
    score_output_lenient,
)

__all__ = [
    "DATA_DIR", "DATASET_NAMES", "Example", "ExampleFilter", "SchemaError", "canonical_dataset", "load_examples",
    "score_file", "score_output", "score_output_lenient",
]
