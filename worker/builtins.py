"""Where the builtin models (``tiny[:seed]``, ``smollm2``) live once built, without building them."""
from __future__ import annotations

from pathlib import Path

from worker.cache import models_root
from worker.smollm2 import smollm2_dir
from worker.tiny import TINY_MODEL_DIRNAME


def built_model_folder(ref: str) -> Path | None:
    """The cached folder of a builtin model (``tiny[:seed]``, ``smollm2``) if it was built; never builds."""
    name, _, arg = ref.strip().partition(":")
    if name == "tiny":
        folder = models_root() / TINY_MODEL_DIRNAME.format(seed=int(arg or 0))
    elif name == "smollm2":
        folder = smollm2_dir()
    else:
        return None
    return folder if (folder / "config.json").is_file() else None
