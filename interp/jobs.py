"""The four interp jobs as functions (the CLI is a thin shell around these)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from .aggregation import diagnose_aggregation
from .capture import CaptureSummary, attach_gold, run_capture
from .config import InterpConfig, WorkerModelSpec
from .model import ReplayModel
from .pairs import Pair, build_counting_pairs
from .patching import patch_pair, sweep_specs
from .plots import heatmaps, probe_plot
from .probes import run_probes
from .runs import Selection, iter_sub_calls, load_gold_file
from .stats import aggregate

PATCH_FILE = "patching.parquet"
AGG_FILE = "patching_agg.parquet"
PROBE_FILE = "probes.parquet"


def load_model(cfg: InterpConfig, spec: WorkerModelSpec) -> ReplayModel:
    return ReplayModel(spec.model, dtype=spec.dtype, device=cfg.device)


def capture_job(
    run_dir: str | Path, out_dir: str | Path, cfg: InterpConfig, spec: WorkerModelSpec, *,
    selection: Selection | None = None, gold_file: str | Path | None = None, model: ReplayModel | None = None,
) -> CaptureSummary:
    model = model or load_model(cfg, spec)
    gold = load_gold_file(gold_file) if gold_file else None
    return run_capture(model, iter_sub_calls(run_dir, selection), out_dir, cfg, gold_map=gold)


@dataclass
class PatchSummary:
    out_dir: Path
    n_pairs: int
    n_rows: int
    skipped: dict[str, int]
    heatmaps: list[str]


def patch_job(
    run_dir: str | Path, out_dir: str | Path, cfg: InterpConfig, spec: WorkerModelSpec, *,
    selection: Selection | None = None, model: ReplayModel | None = None, pairs: list[Pair] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> PatchSummary:
    """Build default counting pairs from the run (unless `pairs` is given), sweep, aggregate, plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model or load_model(cfg, spec)
    skipped: dict[str, int] = {}
    if pairs is None:
        items = [attach_gold(i) for i in iter_sub_calls(run_dir, selection)]
        pairs, skipped = build_counting_pairs(model, items, n_pairs=cfg.n_pairs, corruptions=cfg.corruptions,
                                              seed=cfg.seed, max_tokens=cfg.max_pair_tokens)
    if not pairs:
        raise ValueError(
            f"no clean/corrupt pairs could be built from {run_dir} (skipped: {skipped}); patching needs sub_calls "
            "whose instruction counts rolls and whose chunk has an equal-token-length edit"
        )
    layers = model.resolve_layers(cfg.layers)
    rows: list[dict] = []
    for k, pair in enumerate(pairs):
        specs = sweep_specs(pair, layers, cfg.components, cfg.patch_positions, cfg.attn_mlp_positions)
        rows += patch_pair(model, pair, specs, directions=cfg.directions, batch_size=cfg.batch_size,
                           offload_reference=cfg.offload_reference)
        if progress:
            progress(k + 1, len(pairs), len(rows))  # pairs done, pairs, patches done
    df = pd.DataFrame(rows)
    df.to_parquet(out / PATCH_FILE, index=False)
    agg = aggregate(df, method=cfg.ci, level=cfg.ci_level, n_boot=cfg.n_boot, seed=cfg.seed)
    agg.to_parquet(out / AGG_FILE, index=False)
    pngs = [str(p) for p in heatmaps(agg, out)]
    with open(out / "pairs.jsonl", "w") as f:
        for p in pairs:
            f.write(json.dumps(dict(pair=p.pair_id, sample=p.sample, sub_call=p.sub_call, corruption=p.corruption,
                                    description=p.description, clean_target=p.clean_target,
                                    corrupt_target=p.corrupt_target, seq_len=p.seq_len,
                                    edit=p.positions.get("edit"))) + "\n")
    (out / "patch.json").write_text(json.dumps(dict(model=model.name, dtype=str(model.dtype), n_pairs=len(pairs),
                                                    n_rows=len(df), skipped=skipped, layers=layers,
                                                    config=cfg.model_dump(mode="json")), indent=1))
    return PatchSummary(out, len(pairs), len(df), skipped, pngs)


def probe_job(capture_dir: str | Path, out_dir: str | Path, cfg: InterpConfig) -> pd.DataFrame:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = run_probes(capture_dir, component=cfg.probe_component, position=cfg.probe_position,
                       test_size=cfg.probe_test_size, c=cfg.probe_c, seed=cfg.seed,
                       n_splits=cfg.probe_splits)
    table.to_parquet(out / PROBE_FILE, index=False)
    table.to_csv(out / "probes.csv", index=False)
    probe_plot(table, out / "probe_accuracy.png")
    return table


def aggregation_job(run_dir: str | Path, out_dir: str | Path, gold_file: str | Path | None = None) -> pd.DataFrame:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_sample, per_sub = diagnose_aggregation(run_dir, load_gold_file(gold_file) if gold_file else None)
    per_sample.to_csv(out / "aggregation_by_sample.csv", index=False)
    per_sub.to_csv(out / "aggregation_by_sub_call.csv", index=False)
    return per_sample


def summary_dict(obj) -> dict:
    d = asdict(obj)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
