"""interp: replay recorded worker sub_calls in transformers+nnsight to find where a count was lost.

capture (activations + replay agreement), patch (clean/corrupt activation patching), probe
(linear probes per layer), report. Imports `worker` only; reads trajectories as JSON.
Heavy dependencies (torch, nnsight, sklearn) load lazily on first use of a name that needs them.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "InterpConfig": "config", "InterpConfigError": "config", "WorkerModelSpec": "config",
    "load_interp_config": "config", "parse_interp_config": "config",
    "Selection": "runs", "SubCallItem": "runs", "SubCallRef": "runs", "ChunkLocation": "runs", "RunDirError": "runs",
    "iter_sub_calls": "runs", "locate_chunk": "runs", "load_gold_file": "runs",
    "ROLL_MENTION": "rolls", "find_mentions": "rolls", "count_roll_lines": "rolls", "chunk_gold": "rolls",
    "parse_count": "rolls", "corrupt_remove": "rolls", "corrupt_add": "rolls", "corrupt_alter": "rolls",
    "CORRUPTIONS": "rolls", "ChunkEdit": "rolls", "corrupt_line_remove": "rolls", "corrupt_line_add": "rolls",
    "ReplayModel": "model",
    "ReplayResult": "replay", "replay_one": "replay", "first_divergence": "replay", "agreement_summary": "replay",
    "run_capture": "capture", "attach_gold": "capture", "capture_batch": "capture", "CaptureSummary": "capture",
    "ShardWriter": "shards", "read_index": "shards", "load_rows": "shards",
    "Pair": "pairs", "build_pair": "pairs", "build_token_pair": "pairs", "build_counting_pairs": "pairs",
    "pairs_from_chunk_corruption": "pairs", "ChunkCorruption": "pairs", "TokenCorruption": "pairs",
    "PatchSpec": "patching", "patch_pair": "patching", "sweep_specs": "patching", "patched_logits": "patching",
    "reference_run": "patching",
    "patch_metrics": "metrics", "mean_ci": "stats", "aggregate": "stats",
    "probe_layer": "probes", "run_probes": "probes", "ProbeResult": "probes",
    "diagnose_aggregation": "aggregation",
    "release_worker_gpu": "gpu", "ReleaseError": "gpu",
    "capture_job": "jobs", "patch_job": "jobs", "probe_job": "jobs", "aggregation_job": "jobs",
    "build_report": "report", "make_demo_run": "demo",
    "interp_app": "cli",
    "NothingToStudyError": "runs", "collect_sub_calls": "runs", "REASONS": "runs",
    "Faithfulness": "faithfulness", "check_one": "faithfulness",
    "UnequalLengthError": "pairs", "aggregate_ratio": "stats", "staged_dir": "outputs",
    "attribute_pair": "attribution", "exact_sites": "attribution", "AttributionResult": "attribution",
    "patch_heads": "heads", "lens_one": "lens", "model_checksum": "provenance",
    "attribute_job": "jobs_maps", "heads_job": "jobs_maps", "lens_job": "jobs_maps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
