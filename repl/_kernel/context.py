"""Rebuild a list or dict context from the flat text and the layout the parent sent (repl/context.py).

Runs in the kernel with the standard library only, before any model code, once per kernel start.
"""
from __future__ import annotations

import json


def unpack(flat: str, layout: dict | None):
    """The value model code sees: `flat` itself, or the list / dict sliced out of it."""
    if not layout:
        return flat
    lengths = layout.get("lengths") or []
    as_json = set(layout.get("json_items") or [])
    items = []
    pos = 0
    for i, n in enumerate(lengths):
        text = flat[pos:pos + n]
        pos += n
        items.append(json.loads(text) if i in as_json else text)
    if layout.get("kind") == "dict":
        return dict(zip(layout.get("keys") or [], items))
    return items


def snapshot(value) -> tuple | None:
    """The objects a list/dict context holds (a dict's keys, then its values), to find in-place changes;
    None for a str (immutable)."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return tuple(value) + tuple(value.values())
    return None


def altered(value, snap: tuple | None) -> bool:
    """Whether a list/dict context lost, gained or replaced an item since `snap` (identity, O(items))."""
    if snap is None:
        return False
    now = snapshot(value)
    return now is None or len(now) != len(snap) or any(a is not b for a, b in zip(now, snap))


def put_back(value, snap: tuple) -> None:
    """Restore a list/dict context in place, so references model code holds see the original again."""
    if isinstance(value, list):
        value[:] = list(snap)
    else:
        half = len(snap) // 2
        dict.clear(value)
        dict.update(value, zip(snap[:half], snap[half:]))
