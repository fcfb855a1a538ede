"""Which weights an interp output was computed with: the model's path and a checksum of its files.

The checksum is sha256 over the sorted (name, sha256) of the model folder's weight, config and
tokenizer files, so a pairs file names the exact model a reviewer must load to rebuild it.
"""
from __future__ import annotations

from rlm_rig.worker.models import weights_checksum


def model_provenance(model) -> dict:
    """{model, model_path, model_checksum, dtype} of a ReplayModel."""
    return {"model": model.name, "model_path": str(model.path), "model_checksum": weights_checksum(str(model.path)),
            "dtype": str(model.dtype)}
