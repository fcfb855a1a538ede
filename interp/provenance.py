"""Which weights an interp output was computed with: the model's path and a checksum of its files.

The checksum is sha256 over the sorted (name, sha256) of the model folder's weight, config and
tokenizer files, so a pairs file names the exact model a reviewer must load to rebuild it.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from rlm_rig.worker.cache import file_sha256

_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def _local_dir(path: str) -> Path | None:
    p = Path(path)
    if p.is_dir():
        return p
    try:  # a hub id: its cached snapshot, never a download
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:
        return None


@lru_cache(maxsize=8)
def model_checksum(path: str) -> str | None:
    """None when the files cannot be found locally."""
    d = _local_dir(path)
    if d is None:
        return None
    files = sorted({f for pat in _FILES for f in d.glob(pat) if f.is_file()})
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_sha256(f.resolve())}\n".encode())
    return h.hexdigest()


def model_provenance(model) -> dict:
    """{model, model_path, model_checksum, dtype} of a ReplayModel."""
    return {"model": model.name, "model_path": str(model.path), "model_checksum": model_checksum(str(model.path)),
            "dtype": str(model.dtype)}
