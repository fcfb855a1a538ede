"""Stream activations to disk: safetensors shards plus a Parquet index, with bounded memory.

A 5M-char run has thousands of sub_calls; holding their activations would not fit. Rows are
buffered until `shard_bytes`, then one shard (one 2-D tensor per component/layer key) and the
matching index rows are written together, so a crash never leaves index rows without tensors.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("sample", pa.string()),
        ("sub_call", pa.int64()),
        ("question_type", pa.string()),
        ("score", pa.float64()),
        ("chunk_start", pa.int64()),
        ("chunk_end", pa.int64()),
        ("chunk_chars", pa.int64()),
        ("gold", pa.int64()),
        ("gold_source", pa.string()),
        ("worker_answer", pa.string()),
        ("worker_count", pa.int64()),
        ("worker_correct", pa.bool_()),
        ("component", pa.string()),
        ("layer", pa.int64()),
        ("position", pa.string()),
        ("token_index", pa.int64()),
        ("answer_offset", pa.int64()),
        ("token_id", pa.int64()),
        ("token", pa.string()),
        ("seq_len", pa.int64()),
        ("shard", pa.string()),
        ("key", pa.string()),
        ("row", pa.int64()),
    ]
)

INDEX_FILE = "index.parquet"


class ShardWriter:
    def __init__(self, out_dir: str | Path, *, shard_bytes: int, dtype: torch.dtype = torch.float16) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = int(shard_bytes)
        self.dtype = dtype
        self._shard = 0
        self._tensors: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._rows_in_key: dict[str, int] = defaultdict(int)
        self._bytes = 0
        self._index: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self.n_rows = 0
        self.shards: list[str] = []

    @property
    def shard_name(self) -> str:
        return f"acts-{self._shard:05d}.safetensors"

    def add(self, key: str, acts: torch.Tensor, rows: list[dict[str, Any]]) -> None:
        """Append `acts` [n, d] under `key`; `rows` (n dicts) get shard/key/row filled in."""
        if acts.ndim != 2 or acts.shape[0] != len(rows):
            raise ValueError(f"acts must be [n, d] with one index row each; got {tuple(acts.shape)} and {len(rows)}")
        t = acts.detach().to("cpu", self.dtype).contiguous()
        start = self._rows_in_key[key]
        for i, r in enumerate(rows):
            r.update(shard=self.shard_name, key=key, row=start + i)
        self._tensors[key].append(t)
        self._rows_in_key[key] += t.shape[0]
        self._bytes += t.numel() * t.element_size()
        self._index.extend(rows)
        if self._bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._index:
            return
        tensors = {k: torch.cat(v, 0) for k, v in self._tensors.items()}
        save_file(tensors, str(self.out_dir / self.shard_name))
        self.shards.append(self.shard_name)
        table = pa.Table.from_pylist(self._index, schema=INDEX_SCHEMA)
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.out_dir / INDEX_FILE), INDEX_SCHEMA)
        self._writer.write_table(table)
        self.n_rows += len(self._index)
        self._shard += 1
        self._tensors.clear()
        self._rows_in_key.clear()
        self._index = []
        self._bytes = 0

    def close(self) -> None:
        self.flush()
        if self._writer is None:  # nothing captured: still leave a valid, empty index
            pq.write_table(INDEX_SCHEMA.empty_table(), str(self.out_dir / INDEX_FILE))
        else:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_index(capture_dir: str | Path):
    """The capture index as a pandas DataFrame."""
    path = Path(capture_dir) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `rlm-rig interp capture` first")
    return pq.read_table(str(path)).to_pandas()


def load_rows(capture_dir: str | Path, rows) -> np.ndarray:
    """Activations for the given index rows (a DataFrame slice), in that order, as float32 [n, d]."""
    capture_dir = Path(capture_dir)
    out: np.ndarray | None = None
    rows = rows.reset_index(drop=True)
    for (shard, key), grp in rows.groupby(["shard", "key"], sort=False):
        with safe_open(str(capture_dir / shard), framework="pt") as f:
            t = f.get_tensor(key).float().numpy()
        block = t[grp["row"].to_numpy()]
        if out is None:
            out = np.zeros((len(rows), t.shape[1]), dtype=np.float32)
        out[grp.index.to_numpy()] = block
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out
