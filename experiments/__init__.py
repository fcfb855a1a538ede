"""experiments: datasets, official scoring, methods (RLM and baselines), run folders, reports, the CLI.

Names load lazily, so `rlm-rig --help` does not pay for pandas and matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalSpec": "runfolder", "RunFolder": "runfolder",
    "run_eval": "runner", "resume_eval": "runner", "merge_runs": "runner", "iter_examples": "runner",
    "METHODS": "methods", "run_method": "methods",
    "write_report": "report", "summarize_run": "report",
    "Example": "loaders", "ExampleFilter": "loaders", "load_examples": "loaders",
    "score_output": "scoring", "score_output_lenient": "scoring", "score_file": "scoring",
    "make_counting_set": "counting", "make_count_pair": "counting", "roll_mentions": "counting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(f"experiments.{_EXPORTS[name]}"), name)
