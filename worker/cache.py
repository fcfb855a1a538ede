"""The model cache shared by every locally built model (tiny, SmolLM2): one root, one checksum helper."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["file_sha256", "models_root"]


def models_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir` if given, else `$RLM_RIG_CACHE/models`, else `~/.cache/rlm-rig/models`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("RLM_RIG_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "rlm-rig"
    return base / "models"


def file_sha256(path: Path) -> str:
    """Streamed in 1 MiB blocks: model files are hundreds of MB."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_ours(target: Path, marker: str) -> None:
    """A cache folder is replaced only if the rig built it (its marker is there): a build lands whole by a rename
    after the marker is written, so a folder without one is somebody else's and is never deleted."""
    if not (target / marker).is_file():
        raise FileExistsError(f"{target} exists and was not built by rlm-rig (no {marker}); move it away or set "
                              f"RLM_RIG_CACHE to another folder")
