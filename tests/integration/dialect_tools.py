"""Custom tools for the dialect tests (imported by name: `dialect_tools:lookup`)."""
from __future__ import annotations

TABLE = {"grog": "goliath barbarian", "vex": "half-elf ranger"}


def lookup(name: str, default: str = "unknown") -> dict:
    """Look a character up in the party table; returns {"name", "what"}."""
    return {"name": name, "what": TABLE.get(name.lower(), default)}


def not_json(n: int) -> set:
    """Returns a set, which JSON cannot carry (the rig must say so to the cell)."""
    return set(range(n))


def boom() -> None:
    """Always fails."""
    raise KeyError("no such thing")
