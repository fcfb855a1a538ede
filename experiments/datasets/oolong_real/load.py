"""OOLONG-real (``oolongbench/oolong-real``, config ``dnd``) as `Example`s.

The hub splits are ~9 GB JSONL each, so they are read with ``streaming=True`` and
filtered row by row. Local copies (``.jsonl``/``.jsonl.gz`` with the same columns, or
a folder laid out like the hub repo: ``dnd/test.jsonl``) and the bundled samples go
through the same validation and conversion.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from rlm_rig.experiments.datasets.bundled import resolve_bundled
from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.filters import ExampleFilter, apply_filter
from rlm_rig.experiments.datasets.rows import FieldSpec, SchemaError, iter_hf_stream, iter_local, validate_row

DATASET = "oolong-real"
HF_REPO = "oolongbench/oolong-real"
DEFAULT_CONFIG = "dnd"
SPLITS = ("validation", "test")

SCHEMA: tuple[FieldSpec, ...] = (
    FieldSpec("id", (str,)),
    FieldSpec("context_window_id", (str,)),
    FieldSpec("context_window_text", (str,)),
    FieldSpec("question", (str,)),
    FieldSpec("answer", (str,)),
    FieldSpec("question_type", (str,)),
    FieldSpec("episodes", (list,)),
    FieldSpec("campaign", (str,)),
)


def validate_real_row(row: Any, where: str) -> None:
    """Check every OOLONG-real column is present and typed as on the hub."""
    validate_row(row, SCHEMA, where, DATASET)
    eps = row["episodes"]
    if not all(isinstance(e, int) and not isinstance(e, bool) for e in eps):
        raise SchemaError(f"{where}: {DATASET} field 'episodes' should be a list of ints, got {eps!r}")


def real_row_to_example(row: dict[str, Any], where: str = "<row>") -> Example:
    """Validate a raw row and turn it into an `Example` (document =
    ``context_window_text``, gold = ``answer`` verbatim)."""
    validate_real_row(row, where)
    return Example(
        id=row["id"],
        dataset=DATASET,
        context=row["context_window_text"],
        question=row["question"],
        gold=row["answer"],
        question_type=row["question_type"],
        episodes=list(row["episodes"]),
        answer_type=None,
        meta={"context_window_id": row["context_window_id"], "campaign": row["campaign"], "where": where},
    )


def _local_file(source: Path, config: str, split: str) -> Path:
    if source.is_file():
        return source
    for candidate in (
        source / config / f"{split}.jsonl", source / config / f"{split}.jsonl.gz",
        source / f"{split}.jsonl", source / f"{split}.jsonl.gz",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{source}: no {config}/{split}.jsonl(.gz) or {split}.jsonl(.gz) in this folder")


def iter_oolong_real_rows(
    source: str | Path = HF_REPO,
    *,
    split: str = "test",
    config: str = DEFAULT_CONFIG,
    data_files: Any = None,
    revision: str | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Raw ``(where, row)`` pairs from a bundled name (``toy``, ``mini``), a local file
    or folder, or a hub repo id streamed with `datasets` (``hf:`` prefix optional)."""
    bundled = resolve_bundled(DATASET, source) if isinstance(source, str) else None
    if bundled is not None:
        return iter_local(bundled)
    src = str(source)
    if src.startswith("hf:"):
        return iter_hf_stream(src[3:], config, split, data_files=data_files, revision=revision)
    path = Path(src)
    if path.exists():
        return iter_local(_local_file(path, config, split))
    if src.count("/") == 1 and not src.startswith((".", "/")) and not src.endswith((".jsonl", ".gz", ".parquet")):
        if split not in SPLITS and data_files is None:
            raise ValueError(f"oolong-real split must be one of {SPLITS}, got {split!r}")
        return iter_hf_stream(src, config, split, data_files=data_files, revision=revision)
    raise FileNotFoundError(f"{src}: not a bundled sample, local file/folder, or hub repo id")


def load_oolong_real(
    source: str | Path = HF_REPO,
    *,
    split: str = "test",
    config: str = DEFAULT_CONFIG,
    filters: ExampleFilter | None = None,
    data_files: Any = None,
    revision: str | None = None,
) -> Iterator[Example]:
    """OOLONG-real examples, validated and filtered lazily (see `ExampleFilter`)."""
    rows = iter_oolong_real_rows(source, split=split, config=config, data_files=data_files, revision=revision)
    return apply_filter((real_row_to_example(row, where) for where, row in rows), filters)
