"""Token counts of any span of a document from one tokenization of the whole document.

The router must know a chunk's size in worker tokens *before* sending it (the chunk cap), and the
runner wants the context's token count. Tokenizing the document once, with offsets, answers both
for every chunk that is a slice of ``prompt``: a span's count is two binary searches instead of a
fresh tokenization per sub_call. Counts at span edges can differ from tokenizing the slice alone
by a token or two, so callers re-count exactly near a limit.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np


class DocTokenIndex:
    def __init__(self, text: str, tokenizer: Any):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        self.starts = np.fromiter((s for s, _ in enc["offset_mapping"]), dtype=np.int64)
        self.n_tokens = int(self.starts.shape[0])
        self.n_chars = len(text)

    def count(self, start: int, end: int) -> int:
        return int(np.searchsorted(self.starts, end, "left") - np.searchsorted(self.starts, start, "left"))

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / max(1, self.n_tokens)


class DocTokenCache:
    """A few recent documents' indexes: the questions of one OOLONG window share one document."""

    def __init__(self, tokenizer: Any, size: int = 4):
        self.tokenizer = tokenizer
        self.size = size
        self._items: OrderedDict[str, DocTokenIndex] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, text: str) -> DocTokenIndex:
        key = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        idx = DocTokenIndex(text, self.tokenizer)
        with self._lock:
            self._items[key] = idx
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return idx


def counter_for(tokenizer: Any) -> Callable[[str], int]:
    return lambda s: len(tokenizer(s, add_special_tokens=False, verbose=False)["input_ids"])
