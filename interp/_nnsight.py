"""Import nnsight without breaking the worker's async client in the same process.

nnsight 0.8 gives every object a ``save`` attribute. anyio defines its ``TypedAttributeSet`` subclasses
lazily (on the first async socket use), and their check then fails with "Attribute 'save' is missing
its type annotation", so every httpx call in the process dies. Loading those anyio modules before
nnsight avoids it; import nnsight from here, never directly.
"""
from __future__ import annotations

try:  # anyio ships with httpx; without it there is nothing to protect
    import anyio._backends._asyncio  # noqa: F401
    import anyio.abc  # noqa: F401
    import anyio.streams.tls  # noqa: F401
except ImportError:  # pragma: no cover
    pass

import nnsight  # noqa: E402

__all__ = ["nnsight"]
