"""Scoring for OOLONG-real, OOLONG-synth and S-NIAH: the official rules re-implemented
(``score_*``), lenient diagnostics (``score_*_lenient``), and `score_file` for the CLI."""
from experiments.scoring.boxed import Box, extract_boxed, find_boxes, unwrap_braces
from experiments.scoring.files import (
    DATASET_NAMES,
    OOLONG_REAL,
    OOLONG_SYNTH,
    SNIAH,
    canonical_dataset,
    score_example,
    score_file,
    score_output,
    score_output_lenient,
    score_rows,
)
from experiments.scoring.oolong_real import (
    parse_dnd_answer,
    parse_dnd_response,
    score_dnd_parsed,
    score_oolong_real,
    score_oolong_real_lenient,
)
from experiments.scoring.oolong_synth import (
    parse_synth_gold,
    parse_synth_response,
    score_oolong_synth,
    score_oolong_synth_lenient,
)
from experiments.scoring.result import ScoreResult
from experiments.scoring.sniah import score_sniah

__all__ = [
    "Box", "extract_boxed", "find_boxes", "unwrap_braces",
    "DATASET_NAMES", "OOLONG_REAL", "OOLONG_SYNTH", "SNIAH",
    "canonical_dataset", "score_example", "score_file", "score_output", "score_output_lenient", "score_rows",
    "parse_dnd_answer", "parse_dnd_response", "score_dnd_parsed", "score_oolong_real", "score_oolong_real_lenient",
    "parse_synth_gold", "parse_synth_response", "score_oolong_synth", "score_oolong_synth_lenient",
    "ScoreResult", "score_sniah",
]
