"""Row sources: local JSONL / JSONL.gz / Parquet files and Hugging Face streaming.

Everything here yields rows one at a time, so a 9 GB split is never held in memory.
Each row comes with a ``where`` string (``file:line`` or ``hf:repo[config/split]#i``)
that schema errors quote, so a bad row can be found.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence


class SchemaError(ValueError):
    """A row lacks a field or has one of the wrong type; the message names the row."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    types: tuple[type, ...]
    required: bool = True


def validate_row(row: Any, specs: Sequence[FieldSpec], where: str, dataset: str) -> None:
    """Raise `SchemaError` naming ``where`` and every missing or mistyped field."""
    if not isinstance(row, Mapping):
        raise SchemaError(f"{where}: expected a JSON object ({dataset} row), got {type(row).__name__}")
    missing = [s.name for s in specs if s.required and s.name not in row]
    if missing:
        raise SchemaError(
            f"{where}: {dataset} row is missing field(s) {', '.join(repr(m) for m in missing)} "
            f"(has: {', '.join(sorted(map(str, row)))})"
        )
    for spec in specs:
        if spec.name not in row:
            continue
        value = row[spec.name]
        if not isinstance(value, spec.types) or isinstance(value, bool) and bool not in spec.types:
            names = " or ".join(t.__name__ for t in spec.types)
            raise SchemaError(f"{where}: {dataset} field {spec.name!r} should be {names}, got {type(value).__name__}")


def open_text(path: Path):
    """A text file, gunzipped on the fly when its name ends in .gz."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            yield f"{path}:{lineno}", row


def iter_parquet(
    path: str | Path, *, columns: Sequence[str] | None = None, filters: Sequence[tuple] | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for a Parquet file, read in small batches (needs pyarrow).
    ``filters`` are pyarrow (column, op, value) triples applied while reading."""
    import pyarrow.dataset as pads

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    dataset = pads.dataset(str(path), format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    expr = None
    for col, op, value in filters or ():
        term = _arrow_term(pads.field(col), op, value)
        expr = term if expr is None else expr & term
    i = 0
    for batch in dataset.to_batches(columns=columns, filter=expr, batch_size=batch_size):
        for row in batch.to_pylist():
            yield f"{path}#{i}", row
            i += 1


def _arrow_term(field, op: str, value):
    if op in ("==", "="):
        return field == value
    if op == "in":
        return field.isin(list(value))
    if op == "<=":
        return field <= value
    if op == ">=":
        return field >= value
    raise ValueError(f"unsupported filter operator {op!r}")


def iter_local(path: str | Path, **parquet_kw: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Dispatch on the file name: ``.jsonl``/``.json``(``.gz``) or ``.parquet``."""
    name = Path(path).name
    if name.endswith(".parquet"):
        return iter_parquet(path, **parquet_kw)
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return iter_jsonl(path)
    raise ValueError(f"{path}: unsupported data file type (expected .jsonl, .jsonl.gz or .parquet)")


def iter_hf_stream(
    path: str,
    config: str | None,
    split: str,
    *,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    filters: Sequence[tuple] | None = None,
    revision: str | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` from ``datasets.load_dataset(..., streaming=True)``.

    Streaming reads the split lazily over HTTP (or a local file when ``path`` is a
    packaged builder such as ``"json"`` with ``data_files``), so filtering happens
    row by row without downloading the whole split first. ``columns``/``filters``
    go to the Parquet builder only (they let OOLONG-synth skip the labelled copy of
    the context and unwanted row groups).
    """
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("streaming from the Hugging Face hub needs the `datasets` package (pip install datasets)") from e
    kwargs: dict[str, Any] = {"split": split, "streaming": True}
    if data_files is not None:
        kwargs["data_files"] = data_files
    if revision is not None:
        kwargs["revision"] = revision
    if columns is not None:
        kwargs["columns"] = list(columns)
    if filters is not None:
        kwargs["filters"] = list(filters)
    stream = datasets.load_dataset(path, config, **kwargs)
    label = f"hf:{path}[{config or 'default'}/{split}]"
    for i, row in enumerate(stream):
        yield f"{label}#{i}", row
