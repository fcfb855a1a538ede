"""Dataset loaders: OOLONG-real, OOLONG-synth and S-NIAH as one `Example` record,
streamed and filtered lazily (`ExampleFilter`). `load_examples` dispatches by name."""
from experiments.loaders.bundled import DATA_DIR, bundled_names, resolve_bundled
from experiments.loaders.dispatch import load_examples
from experiments.loaders.example import Example
from experiments.loaders.filters import ExampleFilter, apply_filter, count_tokens, question_type_matches, reservoir_sample
from experiments.loaders.oolong_real import (
    iter_oolong_real_rows,
    load_oolong_real,
    real_row_to_example,
    validate_real_row,
)
from experiments.loaders.oolong_synth import (
    iter_oolong_synth_rows,
    load_oolong_synth,
    synth_row_to_example,
    validate_synth_row,
)
from experiments.loaders.rows import SchemaError, iter_hf_stream, iter_jsonl, iter_local, iter_parquet

__all__ = [
    "DATA_DIR", "bundled_names", "resolve_bundled", "load_examples", "Example",
    "ExampleFilter", "apply_filter", "count_tokens", "question_type_matches", "reservoir_sample",
    "iter_oolong_real_rows", "load_oolong_real", "real_row_to_example", "validate_real_row",
    "iter_oolong_synth_rows", "load_oolong_synth", "synth_row_to_example", "validate_synth_row",
    "SchemaError", "iter_hf_stream", "iter_jsonl", "iter_local", "iter_parquet",
]
