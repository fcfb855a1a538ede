"""A context that is not one string (a list or a dict), packed for the kernel and mapped back.

WHY one flat string: the kernel already loads a 5M-character `prompt` as one raw byte frame (no
JSON escaping, no per-item framing), so a list or dict travels the same way: its items' texts
joined, plus a small layout (kind, per-item lengths, the dict's keys). The kernel slices the items
back out; the parent keeps the flat text to place a sub_call's chunk, and the item starts to name
the item and the offset inside it. A string item is its own text; any other JSON value travels as
its JSON text and is decoded by the kernel.
"""
from __future__ import annotations

import bisect
import itertools
import json
from dataclasses import dataclass, field
from typing import Any


class ContextError(ValueError):
    """The value cannot be a REPL context (not a str, list or dict, or not JSON-serialisable)."""


@dataclass
class PackedContext:
    flat: str  # every item's text, joined with nothing between them
    kind: str  # "str" | "list" | "dict"
    lengths: list[int] = field(default_factory=list)  # per item (list/dict), in characters of `flat`
    keys: list[str] | None = None  # the dict's keys, in order
    json_items: list[int] = field(default_factory=list)  # items that travel as JSON text (not a str)
    starts: list[int] = field(default_factory=list)

    @property
    def structured(self) -> bool:
        return self.kind != "str"

    def layout(self) -> dict[str, Any] | None:
        """What the kernel needs to rebuild the value (None for a plain string)."""
        if not self.structured:
            return None
        return {"kind": self.kind, "lengths": self.lengths, "keys": self.keys, "json_items": self.json_items}

    def summary(self) -> dict[str, Any]:
        """Type, length and per-item sizes: what the trajectory (and the controller) may know."""
        if not self.structured:
            return {"type": "str", "length": len(self.flat)}
        out: dict[str, Any] = {"type": self.kind, "length": len(self.lengths), "item_chars": self.lengths}
        if self.keys is not None:
            out["keys"] = self.keys
        return out

    def clip_to_item(self, start: int, end: int) -> tuple[int, int]:
        """A span cut to the item holding its middle (a span found by growing a match may spill a few
        characters into the next item when they happen to agree)."""
        if not self.structured or not self.starts:
            return start, end
        i = max(0, bisect.bisect_right(self.starts, (start + end) // 2) - 1)
        lo, hi = self.starts[i], self.starts[i] + self.lengths[i]
        return max(start, lo), min(end, hi)

    def locate(self, start: int) -> tuple[int | str | None, int | None]:
        """(item index or dict key, offset inside it) of a position in `flat`."""
        if not self.structured or not self.starts:
            return None, None
        i = bisect.bisect_right(self.starts, start) - 1
        if i < 0:
            return None, None
        return (self.keys[i] if self.keys is not None else i), start - self.starts[i]


def _item_text(value: Any, i: int, json_items: list[int]) -> str:
    if isinstance(value, str):
        return value
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ContextError(f"context item {i} is not JSON-serialisable ({exc})") from None
    if json.loads(text) != value:  # a tuple, a non-str dict key...: the kernel would see another value
        raise ContextError(f"context item {i} ({type(value).__name__}) does not survive JSON unchanged (tuples and "
                           "non-str dict keys, even nested, are not allowed): use lists and str keys")
    json_items.append(i)
    return text


def pack_context(value: Any) -> PackedContext:
    """A str stays as it is; a list or a dict (str keys) is packed; anything else is refused."""
    if isinstance(value, str):
        return PackedContext(flat=value, kind="str")
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ContextError("a dict context needs str keys (as JSON objects have)")
        keys: list[str] | None = list(value)
        items = list(value.values())
        kind = "dict"
    elif isinstance(value, (list, tuple)):
        keys, items, kind = None, list(value), "list"
    else:
        raise ContextError(f"a context must be a str, a list or a dict, not {type(value).__name__}")
    json_items: list[int] = []
    if all(type(v) is str for v in items):  # the common case, at C speed: 500,000 items in ~50 ms
        texts = items
    else:
        texts = [_item_text(v, i, json_items) for i, v in enumerate(items)]
    lengths = list(map(len, texts))
    starts = [0, *itertools.accumulate(lengths)][:-1] if lengths else []
    return PackedContext(flat="".join(texts), kind=kind, lengths=lengths, keys=keys, json_items=json_items,
                         starts=starts)
