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


# What a model build writes (a Hugging Face model folder): an older build holding only these may be replaced.
MODEL_BUILD_FILES = frozenset({"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                               "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                               "chat_template.jinja", "added_tokens.json"})


def ensure_ours(target: Path, marker: str) -> None:
    """Called BEFORE a build that would replace ``target``: a cache folder is replaced only if the rig built it
    (a build lands whole by a rename after its marker is written, so a folder without one is somebody else's)
    and it holds nothing but what a build writes (a file the user added there is never deleted)."""
    if not target.exists():
        return
    extra = sorted(str(p.relative_to(target)) for p in target.rglob("*")
                   if not p.is_dir() and str(p.relative_to(target)) not in MODEL_BUILD_FILES | {marker})
    if extra and not (target / marker).is_file():
        raise FileExistsError(f"{target} exists and was not built by rlm-rig (it holds {extra[0]}); move it away or "
                              f"set RLM_RIG_CACHE to another folder")
    if extra:
        raise FileExistsError(f"{target} is an older rlm-rig build but also holds {extra[0]}, which the rig did not "
                              f"write; move it away and run again")
    # only a build's own file names: the rig's build of another recipe, or one that lost its marker
