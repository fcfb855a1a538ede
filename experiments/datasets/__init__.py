"""Datasets: one folder each (loader, official scorer, provenance), one name registry.

`load_examples(name, source, filters=...)` streams `Example`s lazily; `score_output` gives the
official score of an answer for any dataset; `split_instructions` and `model_views` say what each
model is shown. Each folder (`oolong_real/`, `oolong_synth/`, `sniah/`, `edge/`) registers its
datasets in `registry.py`; shared pieces (row readers, filters, the boxed-answer parser) sit beside it.
"""
from experiments.datasets.bundled import DATA_DIR
from experiments.datasets.example import Example
from experiments.datasets.filters import ExampleFilter
from experiments.datasets.registry import Dataset, generator, generator_names, load_examples, register
from experiments.datasets.rows import SchemaError
from experiments.datasets.scoring import (
    DATASET_NAMES,
    canonical_dataset,
    score_file,
    score_output,
    score_output_lenient,
)
from experiments.datasets.views import model_views, split_instructions

__all__ = [
    "DATA_DIR", "DATASET_NAMES", "Dataset", "Example", "ExampleFilter", "SchemaError", "canonical_dataset",
    "generator", "generator_names", "load_examples", "model_views", "register", "score_file", "score_output",
    "score_output_lenient", "split_instructions",
]
