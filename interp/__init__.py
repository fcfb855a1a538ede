"""interp: replay recorded worker sub_calls in transformers+nnsight to find where a count was lost.

capture (activations + teacher-forced faithfulness to what vLLM generated), patch (exact activation
patching), attribute (attribution patching), heads (per-head patching), lens (logit lens), probe
(linear probes per layer), report. Imports `worker`, `configs` and the controller's record leaves.
Heavy dependencies (torch, nnsight, sklearn) load lazily on first use of a name that needs them.
"""
from __future__ import annotations

import importlib
from typing import Any

# What a user calls: one job per study (each writes its folder and returns a summary), the config,
# the selection of sub_calls, the extension points for new corruptions, and the errors to catch.
# Everything else is reachable through its module (interp.methods.patching, interp.stats.means, ...).
_EXPORTS = {
    "InterpConfig": "config", "load_interp_config": "profile", "InterpConfigError": "config",
    "Selection": "data.selection", "SubCallRef": "data.selection", "RunDirError": "data.selection",
    "NothingToStudyError": "data.selection",
    "capture_job": "jobs", "patch_job": "jobs", "probe_job": "jobs", "aggregation_job": "jobs",
    "attribute_job": "jobs", "heads_job": "jobs", "lens_job": "jobs",
    "build_report": "report.build",
    "ReplayModel": "model",
    "ChunkCorruption": "data.pairs", "TokenCorruption": "data.pairs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
