"""Token counts for the harness without tokenizing whole documents.

WHY: a run used to tokenize its whole document (with offsets) before the first turn, ~5 s and ~2 GB
for a 5M-character document, on every example. What a run must know is smaller:

- the chunk cap: is this chunk at most ``budget`` worker tokens? A chunk's token count is at most its
  (normalized) UTF-8 byte length plus one (:func:`token_bound`), so most chunks pass on a length
  check; only a chunk whose bound is over the cap is tokenized, alone and exactly;
- the chars-per-token the system prompt quotes: a few sampled slices (``estimate_chars_per_token``);
- an eval row's context size in tokens: one exact count per document, cached by its SHA-256 in the
  process and on disk beside the model cache (:class:`DocTokenCounts`), so the ten questions of one
  OOLONG window, and every later eval of it, count it once.

The worker's own ``prompt_tokens`` stay the exact record of what each sub_call cost; a recorded
``chunk_tokens`` is an exact count of the chunk alone, set when the cap check needed one.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

# normalizers that never change an ASCII string, and the Python form that reproduces them otherwise
_UNICODE_FORMS = {"NFC": "NFC", "NFD": "NFD", "NFKC": "NFKC", "NFKD": "NFKD"}


def normalizer_form(tokenizer: Any) -> str | None:
    """'' for no normalizer, a unicodedata form for NFC/NFD/NFKC/NFKD, None for anything else (no bound)."""
    raw = getattr(tokenizer, "backend_tokenizer", tokenizer)  # a transformers fast tokenizer wraps one
    norm = getattr(raw, "normalizer", None)
    if norm is None:
        return ""
    return _UNICODE_FORMS.get(type(norm).__name__)


def token_bound(text: str, form: str | None) -> int | None:
    """An upper bound on the tokens of ``text``, or None when the tokenizer's normalizer is unknown.

    Every token of a byte-level BPE, a SentencePiece model with byte fallback, WordPiece or Unigram
    covers at least one byte of the normalized text, and a pre-tokenizer adds at most one prefix
    piece (a space or "▁"); so tokens <= normalized UTF-8 bytes + 1. ASCII is unchanged by every
    Unicode normal form and ``str.isascii`` is O(1) in CPython, so the usual case costs nothing. Other
    normalizers (replacements, precompiled maps) may lengthen text: no bound, the chunk is counted.
    """
    if form is None:
        return None
    if text.isascii():
        return len(text) + 1
    if form:
        text = unicodedata.normalize(form, text)
    return len(text.encode("utf-8", "surrogatepass")) + 1


def counter_for(tokenizer: Any) -> Callable[[str], int]:
    """Exact tokens of a text (no special tokens added), for a raw ``tokenizers.Tokenizer`` or a
    transformers tokenizer."""
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer: no Python offsets lists built
        return lambda s: len(tokenizer.encode(s, add_special_tokens=False).ids)
    return lambda s: len(tokenizer(s, add_special_tokens=False, verbose=False)["input_ids"])


class ChunkTokens:
    """The router's chunk cap: settle it from the length when the bound allows, count exactly otherwise."""

    def __init__(self, count_tokens: Callable[[str], int], form: str | None = None,
                 count_many: Callable[[list[str]], list[int]] | None = None):
        self.count_tokens = count_tokens
        self.form = form
        # several chunks at once: `tokenizers` spreads a batch over the cores
        self.count_many = count_many or (lambda texts: [count_tokens(t) for t in texts])

    def check(self, chunk: str, budget: int) -> tuple[int | None, bool]:
        """(exact token count or None when not needed, over the budget?)."""
        return self.check_many([chunk], budget)[0]

    def check_many(self, chunks: list[str], budget: int) -> list[tuple[int | None, bool]]:
        """:meth:`check` for a batch; the chunks that need an exact count are counted together."""
        out: list[tuple[int | None, bool] | None] = []
        todo: list[int] = []
        for i, chunk in enumerate(chunks):
            # A chunk 20x over budget in characters is over budget in tokens for any tokenizer we serve;
            # skip tokenizing megabytes just to refuse them (the estimate is only for the message).
            if len(chunk) > 20 * budget:
                out.append((len(chunk) // 4, True))
                continue
            bound = token_bound(chunk, self.form)
            if bound is not None and bound <= budget:
                out.append((None, False))
                continue
            out.append(None)
            todo.append(i)
        for i, n in zip(todo, self.count_many([chunks[i] for i in todo]) if todo else []):
            out[i] = (n, n > budget)
        return out  # type: ignore[return-value]


def batch_counter_for(tokenizer: Any) -> Callable[[list[str]], list[int]] | None:
    """Exact tokens of several texts in one call (a raw ``tokenizers.Tokenizer``: parallel, no offsets)."""
    fast = getattr(tokenizer, "encode_batch_fast", None)
    if fast is None:
        return None
    return lambda texts: [len(e.ids) for e in fast(texts, add_special_tokens=False)]


def _doc_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class DocTokenCounts:
    """Exact token counts of whole documents, by SHA-256, in the process and (optionally) on disk.

    The disk cache is one small file per document under ``folder`` (beside the model cache, one folder
    per tokenizer), so a count survives the process; a torn or foreign file is just recounted.
    """

    def __init__(self, count_tokens: Callable[[str], int], folder: Path | Callable[[], Path | None] | None = None,
                 size: int = 64):
        self.count_tokens = count_tokens
        self._folder = folder  # a callable is resolved on first use: `ask` never needs the folder
        self.size = size
        self._items: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path | None:
        if callable(self._folder):
            self._folder = self._folder()
        return self._folder

    def _read(self, key: str) -> int | None:
        if self.folder is None:
            return None
        try:
            value = json.loads((self.folder / f"{key}.json").read_text())["tokens"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return value if type(value) is int and value >= 0 else None

    def _write(self, key: str, n: int) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps({"tokens": n}))
            os.replace(tmp, self.folder / f"{key}.json")
        except OSError:
            pass  # a read-only cache only costs a recount

    def __call__(self, text: str) -> int:
        key = _doc_key(text)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        n = self._read(key)
        if n is None:
            n = self.count_tokens(text)
            self._write(key, n)
        with self._lock:
            self._items[key] = n
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return n


def token_cache_folder(tokenizer_file: Path | None) -> Path | None:
    """``<model cache>/doc-tokens/<sha256 of tokenizer.json>``: a count is only valid for one tokenizer."""
    if tokenizer_file is None or not tokenizer_file.is_file():
        return None
    from rlm_rig.worker.cache import file_sha256, models_root

    return models_root().parent / "doc-tokens" / file_sha256(tokenizer_file)[:16]
