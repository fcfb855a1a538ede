"""experiments: on top of everything. `datasets/` (loaders, official scorers, one registry), `runs/`
(methods, the eval loop, run folders, resume, shards), `analysis/` (metrics, strategies, failures,
reports), `studies/` (counting, SmolLM2) and `cli/` (the one `rlm-rig` command line).

What a notebook needs is exported here; names load lazily, so `rlm-rig --help` does not pay for
pandas and matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalSpec": "runs", "RunFolder": "runs", "run_eval": "runs", "resume_eval": "runs", "merge_runs": "runs",
    "load_examples": "datasets", "score_output": "datasets",
    "write_report": "analysis",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(f"experiments.{_EXPORTS[name]}"), name)
