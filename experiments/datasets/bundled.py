"""Data files shipped inside the package (``experiments/data/``), addressable by a short
name so demos and tests need no download. Provenance: ``experiments/data/README.md``."""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

BUNDLED: dict[str, dict[str, str]] = {
    "oolong-real": {
        "toy": "oolong-real/toy.jsonl",
        "mini": "oolong-real/dnd-mini.jsonl.gz",
    },
    "oolong-synth": {
        "mini": "oolong-synth/trec_coarse-mini.jsonl",
    },
}


def bundled_names(dataset: str) -> list[str]:
    return sorted(BUNDLED.get(dataset, {}))


def resolve_bundled(dataset: str, name: str) -> Path | None:
    """The path of bundled sample ``name`` (also spelled ``bundled:name``) for
    ``dataset``, or ``None`` when ``name`` is not a bundled sample."""
    key = name[len("bundled:"):] if name.startswith("bundled:") else name
    rel = BUNDLED.get(dataset, {}).get(key)
    if rel is None:
        if name.startswith("bundled:"):
            raise ValueError(f"no bundled sample {key!r} for {dataset}; have: {', '.join(bundled_names(dataset))}")
        return None
    path = DATA_DIR / rel
    if not path.is_file():
        raise FileNotFoundError(f"bundled sample {key!r} for {dataset} is missing at {path} (broken install?)")
    return path
