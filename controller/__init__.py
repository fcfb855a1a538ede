"""The RLM loop: controller backends, system prompt, parsing, caps, the context guard, the `Rig`.

The records it writes (trajectory, sample row, run folder) live in the records room (`records/`).
Names load lazily, so importing the package does not pull in the sandbox or the model backends.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Rig": "rig",
    "RLM": "loop", "RunContext": "loop",
    "ReplayLM": "backends", "TransformersLM": "backends", "OpenAILM": "backends", "load_replay": "backends",
    "ReplayExhausted": "backends", "Generation": "backends", "ControllerLM": "backends",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    return getattr(importlib.import_module(f"controller.{_EXPORTS[name]}"), name)
