"""OOLONG-synth (``oolongbench/oolong-synth``) as `Example`s, e.g. ``trec_coarse`` at one
``context_len``.

Hub layout (dataset card, default config): Parquet shards ``data/validation-*`` and
``data/test-*`` with columns ``id`` (int64), ``context_len`` (int64), ``dataset``,
``context_window_text``, ``context_window_text_with_labels``, ``question``,
``task_group``, ``task``, ``answer`` (a Python list literal such as ``"['entity']"``),
``answer_type`` (``ANSWER_TYPE.NUMERIC`` ...), ``input_subset``, ``num_labels`` (int64),
``context_window_id`` (int64). The official input is ``context_window_text + "\\n" +
question``; the ``_with_labels`` text leaks the gold labels and is never read here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from rlm_rig.experiments.datasets.bundled import resolve_bundled
from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.filters import ExampleFilter, apply_filter
from rlm_rig.experiments.datasets.rows import FieldSpec, iter_hf_stream, iter_local, validate_row

DATASET = "oolong-synth"
HF_REPO = "oolongbench/oolong-synth"
SPLITS = ("validation", "test")

SCHEMA: tuple[FieldSpec, ...] = (
    FieldSpec("id", (int, str)),
    FieldSpec("context_len", (int,)),
    FieldSpec("dataset", (str,)),
    FieldSpec("context_window_id", (int, str)),
    FieldSpec("context_window_text", (str,)),
    FieldSpec("question", (str,)),
    FieldSpec("answer", (str,)),
    FieldSpec("answer_type", (str,)),
    FieldSpec("task_group", (str,)),
    FieldSpec("task", (str,)),
    FieldSpec("num_labels", (int,), required=False),
    FieldSpec("input_subset", (str, bool), required=False),
)

# Everything but the label-leaking copy of the context.
READ_COLUMNS = [s.name for s in SCHEMA]


def validate_synth_row(row: Any, where: str) -> None:
    validate_row(row, SCHEMA, where, DATASET)


def synth_row_to_example(row: dict[str, Any], where: str = "<row>") -> Example:
    """Validate a raw synth row and turn it into an `Example` (question_type = ``task``)."""
    validate_synth_row(row, where)
    return Example(
        id=str(row["id"]),
        dataset=DATASET,
        context=row["context_window_text"],
        question=row["question"],
        gold=row["answer"],
        question_type=row["task"],
        episodes=None,
        answer_type=row["answer_type"],
        meta={
            "source_dataset": row["dataset"],
            "context_len": row["context_len"],
            "context_window_id": row["context_window_id"],
            "task_group": row["task_group"],
            "num_labels": row.get("num_labels"),
            "input_subset": row.get("input_subset"),
            "where": where,
        },
    )


def iter_oolong_synth_rows(
    source: str | Path = HF_REPO,
    *,
    split: str = "test",
    subset: str | None = "trec_coarse",
    context_len: int | None = None,
    data_files: Any = None,
    revision: str | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Raw rows of one ``subset`` (the ``dataset`` column) and ``context_len``.
    Parquet sources get both as pushdown filters; every source is also filtered here."""
    pushdown: list[tuple] = []
    if subset is not None:
        pushdown.append(("dataset", "==", subset))
    if context_len is not None:
        pushdown.append(("context_len", "==", int(context_len)))

    bundled = resolve_bundled(DATASET, source) if isinstance(source, str) else None
    src = str(source)
    if bundled is not None:
        rows = iter_local(bundled)
    elif src.startswith("hf:") or (not Path(src).exists() and src.count("/") == 1 and not src.startswith((".", "/"))
                                   and not src.endswith((".jsonl", ".gz", ".parquet"))):
        repo = src[3:] if src.startswith("hf:") else src
        if split not in SPLITS and data_files is None:
            raise ValueError(f"oolong-synth split must be one of {SPLITS}, got {split!r}")
        is_parquet = data_files is None or "parquet" in repo or "parquet" in str(data_files)
        rows = iter_hf_stream(
            repo, None, split, data_files=data_files, revision=revision,
            columns=READ_COLUMNS if is_parquet else None, filters=(pushdown or None) if is_parquet else None,
        )
    elif Path(src).is_file():
        rows = iter_local(src, columns=READ_COLUMNS, filters=pushdown) if src.endswith(".parquet") else iter_local(src)
    else:
        raise FileNotFoundError(f"{src}: not a bundled sample, local file, or hub repo id")

    return _keep_subset(rows, subset, context_len)


def _keep_subset(
    rows: Iterator[tuple[str, dict[str, Any]]], subset: str | None, context_len: int | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, row in rows:
        if isinstance(row, dict):
            if subset is not None and row.get("dataset") != subset:
                continue
            if context_len is not None and row.get("context_len") != int(context_len):
                continue
        yield where, row


def load_oolong_synth(
    source: str | Path = HF_REPO,
    *,
    split: str = "test",
    subset: str | None = "trec_coarse",
    context_len: int | None = None,
    filters: ExampleFilter | None = None,
    data_files: Any = None,
    revision: str | None = None,
) -> Iterator[Example]:
    """OOLONG-synth examples of ``subset`` at ``context_len``, validated and filtered lazily."""
    rows = iter_oolong_synth_rows(
        source, split=split, subset=subset, context_len=context_len, data_files=data_files, revision=revision
    )
    return apply_filter((synth_row_to_example(row, where) for where, row in rows), filters)
