"""Give freed heap back to the operating system between examples.

WHY: glibc keeps the arenas a finished example freed (its document, chunks, replies), so over several
5M-character documents one eval process grew from ~0.6 to ~2 GB resident though it held no more
data. ``malloc_trim(0)`` returns the free pages; it is a no-op where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def trim_heap() -> bool:
    """True when the C library released something (glibc's malloc_trim), False otherwise."""
    lib = _libc()
    return bool(lib.malloc_trim(0)) if lib is not None else False
