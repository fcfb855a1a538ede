"""The sub_call tape: every worker reply of a run, keyed by exactly what decides it.

A reply is a function of the weights, the messages, the sampling parameters and the seed, so the
key is a hash of those four and nothing else. A rerun with ``--tape RUN`` answers a sub_call from
RUN's tape only when all four match; the rest go to the model. A tape recorded with other weights
or other sampling therefore never answers silently (and ``Rig`` refuses such a tape outright, see
:meth:`Tape.check_compatible`).

One JSONL file per run folder (``RunFolder.tape_path``); :class:`Tape` is its one reader and writer.
Each line is one :class:`TapeEntry`: reply text, the token ids the server generated and their logprobs.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rlm_rig.records.trajectory import append_jsonl, read_jsonl


class TapeMismatch(ValueError):
    """A tape recorded with other weights or other sampling than the run that would read it."""


def canonical(value: Any) -> str:
    """The one serialization hashed into a key: sorted keys, no spaces, non-ASCII kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tape_key(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any], seed: int | None) -> str:
    """sha256 over (weights identity, exact messages, sampling parameters, seed)."""
    blob = canonical({"model": model, "messages": messages, "sampling": sampling, "seed": seed})
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class TapeEntry(BaseModel):
    """One worker reply and what it was a reply to."""

    key: str
    model: str = Field(description="the worker's weights: sha256:<checksum of its files>, or hub:<id> when not local")
    sampling: dict[str, Any] = Field(description="temperature, max_tokens and any other request parameter")
    seed: int | None = None
    messages: list[dict[str, Any]]
    text: str
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class Tape:
    """The replies in one tape file: look up by key, append new ones (each key once, thread-safe)."""

    def __init__(self, path: str | Path, *, keep: bool = True):
        """``keep=False``: a tape that is only written (a run's own) holds its keys, not its replies, in memory."""
        self.path = Path(path)
        self.keep = keep
        self._lock = threading.Lock()
        self.entries: dict[str, TapeEntry] = {}
        self._keys: set[str] = set()
        for i, raw in enumerate(read_jsonl(self.path), 1):
            try:
                e = TapeEntry.model_validate(raw)
            except ValueError as exc:
                raise ValueError(f"{self.path}: line {i} is not a tape entry ({str(exc).splitlines()[0]})") from None
            self._remember(e)

    def _remember(self, e: TapeEntry) -> bool:
        if e.key in self._keys:
            return False
        self._keys.add(e.key)
        if self.keep:
            self.entries[e.key] = e
        return True

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> set[str]:
        return set(self._keys)

    def get(self, key: str) -> TapeEntry | None:
        return self.entries.get(key)

    def add(self, entry: TapeEntry) -> None:
        """Append ``entry`` unless its key is already on the tape (replies for one key are identical by design)."""
        with self._lock:
            if self._remember(entry):
                append_jsonl(self.path, entry.model_dump(mode="json"))

    def check_compatible(self, model: str, sampling: "dict[str, Any] | list[tuple[dict[str, Any], int | None]]",
                         seed: int | None = None) -> None:
        """Raise :class:`TapeMismatch` unless some entry was recorded with these weights and this sampling (or one
        of several (sampling, seed) variants: a profile that samples otherwise at some depths)."""
        variants = sampling if isinstance(sampling, list) else [(sampling, seed)]
        if not self.entries:
            raise TapeMismatch(f"tape {self.path} holds no worker replies")
        models = {e.model for e in self.entries.values()}
        if model not in models:
            raise TapeMismatch(f"tape {self.path} was recorded with worker weights {_short(sorted(models))}; this run's "
                               f"worker is {model}: another model's replies are never reused")
        mine = [e for e in self.entries.values() if e.model == model]
        if not any(e.sampling == smp and e.seed == sd for e in mine for smp, sd in variants):
            seen = canonical(sorted({canonical([e.sampling, e.seed]) for e in mine}))
            raise TapeMismatch(f"tape {self.path} was recorded with sampling {seen}; this run samples "
                               f"{canonical(variants[0])}: replies under other sampling are never reused")


def _short(models: list[str]) -> str:
    return ", ".join(models[:3]) + (f" (+{len(models) - 3} more)" if len(models) > 3 else "")
