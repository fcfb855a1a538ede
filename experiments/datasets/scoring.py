"""Scoring by dataset name (through the registry) and `score_file`, the engine behind ``rlm-rig score``."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

from rlm_rig.experiments.datasets import registry
from rlm_rig.experiments.datasets.result import ScoreResult
from rlm_rig.experiments.datasets.rows import iter_jsonl

OOLONG_REAL = "oolong-real"
OOLONG_SYNTH = "oolong-synth"
SNIAH = "sniah"
DATASET_NAMES = (OOLONG_REAL, OOLONG_SYNTH, SNIAH)  # the benchmark datasets; `registry.names()` lists all


def canonical_dataset(name: str) -> str:
    """The registered name for any accepted spelling (``real``/``dnd``, ``synth``, ``s-niah``, ...)."""
    return registry.get(name).name


def score_output(dataset: str, output: str | None, gold: Any, *, answer_type: str | None = None) -> ScoreResult:
    """The official score of one output for any registered dataset (``answer_type`` is needed for synth)."""
    return registry.get(dataset).score(output, gold, answer_type=answer_type)


def score_output_lenient(dataset: str, output: str | None, gold: Any, *, answer_type: str | None = None) -> ScoreResult:
    """The lenient score (>= the official one); S-NIAH's and the generators' metrics are already lenient."""
    return registry.get(dataset).score_lenient(output, gold, answer_type=answer_type)


def score_example(example: Any, output: str | None) -> tuple[ScoreResult, ScoreResult]:
    """``(official, lenient)`` scores of ``output`` for an `Example` (anything with
    ``dataset``, ``gold`` and ``answer_type`` attributes)."""
    kw = {"answer_type": getattr(example, "answer_type", None)}
    return (
        score_output(example.dataset, output, example.gold, **kw),
        score_output_lenient(example.dataset, output, example.gold, **kw),
    )


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSONL file to score; each row must be a JSON object."""
    for where, row in iter_jsonl(path):
        lineno = int(where.rsplit(":", 1)[1])
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def _row_output(row: dict[str, Any]) -> tuple[bool, Any]:
    """The model output of a row: ``output``, or ``answer`` in a sample row (which has
    both ``gold`` and ``answer``)."""
    if "output" in row:
        return True, row["output"]
    if "answer" in row and "gold" in row:
        return True, row["answer"]
    return False, None


def score_rows(
    dataset: str | None, rows: Iterator[tuple[int, dict[str, Any]]], where: str = "<rows>"
) -> Iterator[dict[str, Any]]:
    """Each row plus ``score``, ``parsed`` and ``lenient_score``. ``dataset=None`` takes
    each row's own ``dataset`` field."""
    for lineno, row in rows:
        name = dataset if dataset is not None else row.get("dataset")
        if name is None:
            raise ValueError(f"{where}:{lineno}: no dataset given and the row has no 'dataset' field")
        if "gold" not in row:
            raise ValueError(f"{where}:{lineno}: missing field 'gold'")
        has_output, output = _row_output(row)
        if not has_output:
            raise ValueError(f"{where}:{lineno}: missing field 'output'")
        if output is not None and not isinstance(output, str):
            raise ValueError(f"{where}:{lineno}: 'output' must be a string or null, got {type(output).__name__}")
        answer_type = row.get("answer_type")
        if canonical_dataset(name) == OOLONG_SYNTH and not answer_type:
            raise ValueError(f"{where}:{lineno}: missing field 'answer_type' (needed for oolong-synth)")
        try:
            strict = score_output(name, output, row["gold"], answer_type=answer_type)
            lenient = score_output_lenient(name, output, row["gold"], answer_type=answer_type)
        except ValueError as e:
            raise ValueError(f"{where}:{lineno}: {e}") from None
        yield {**row, "score": strict.score, "parsed": strict.parsed_json(), "lenient_score": lenient.score}


def score_file(dataset: str | None, in_path: str | Path, out_path: str | Path | None = None) -> float:
    """Score a JSONL(.gz) file of ``{"gold", "output"[, "answer_type"]}`` rows.

    Writes every input row with ``score``, ``parsed`` (the official parse, JSON-safe)
    and ``lenient_score`` added, to ``out_path`` (atomically) or to stdout, and returns
    the mean official score (0.0 for an empty file). ``dataset`` is any name accepted by
    :func:`canonical_dataset`, or ``None`` to use each row's ``dataset`` field.
    """
    from rlm_rig.records.trajectory import atomic_write_text

    if dataset is not None:
        canonical_dataset(dataset)  # fail on a bad name before reading anything
    in_path = Path(in_path)
    scored = list(score_rows(dataset, _read_rows(in_path), where=str(in_path)))
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in scored)
    if out_path is None:
        sys.stdout.write(lines)
        sys.stdout.flush()
    else:
        atomic_write_text(out_path, lines)
    return sum(r["score"] for r in scored) / len(scored) if scored else 0.0

