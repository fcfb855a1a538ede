"""The RLM loop: controller backends, system prompt, parsing, caps, the `Rig`, and the record schemas.

Names load lazily: `controller.records` and `controller.runlog` are leaves that interp and the
viewer import without pulling in the loop, the sandbox or the model backends.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Rig": "rig", "package_versions": "runlog",
    "RLM": "loop", "RunContext": "loop",
    "ReplayLM": "backends", "TransformersLM": "backends", "OpenAILM": "backends", "load_replay": "backends",
    "ReplayExhausted": "backends", "Generation": "backends", "ControllerLM": "backends",
    "Trajectory": "records", "SampleRow": "records", "SubCallRecord": "records", "CellRecord": "records",
    "ControllerTurn": "records", "CapEvent": "records", "SCHEMA_VERSION": "records", "read_jsonl": "records",
    "append_jsonl": "records", "atomic_write_text": "records",
    "RunFolder": "runlog", "EvalSpec": "runlog", "RunResults": "runlog", "RunEnv": "runlog",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    return getattr(importlib.import_module(f"controller.{_EXPORTS[name]}"), name)
