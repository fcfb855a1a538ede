"""The four interp jobs as functions (the CLI is a thin shell around these)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
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
from .outputs import claim_out, staged_dir
from .selection import Selection, collect_sub_calls, load_gold_file
from .faithfulness import Faithfulness, check_one, faithfulness_flags, flag_faithful
from .fanout import PairMapper, local_map
from .provenance import model_provenance
from .selection import NothingToStudyError
from .stats import aggregate_ratio, pair_denominator_warnings, small_denominator_pairs

PATCH_FILE = "patching.parquet"
AGG_FILE = "patching_agg.parquet"
PROBE_FILE = "probes.parquet"


def load_model(cfg: InterpConfig, spec: WorkerModelSpec) -> ReplayModel:
    return ReplayModel(spec.model, dtype=spec.dtype, device=cfg.device)


def capture_job(
    run_dir: str | Path, out_dir: str | Path, cfg: InterpConfig, spec: WorkerModelSpec, *,
    selection: Selection | None = None, gold_file: str | Path | None = None, model: ReplayModel | None = None,
) -> CaptureSummary:
    out_dir = claim_out(out_dir, "interp capture", [run_dir])  # before any model loads
    items, tally = collect_sub_calls(run_dir, selection)  # refuses an empty run before loading a model
    gold = load_gold_file(gold_file) if gold_file else None
    model = model or load_model(cfg, spec)
    with staged_dir(out_dir, "interp capture") as tmp:
        s = run_capture(model, items, tmp, cfg, gold_map=gold, tally=tally, run_dir=run_dir)
    s.out_dir = Path(out_dir)
    return s


@dataclass
class PatchSummary:
    out_dir: Path
    n_pairs: int
    n_rows: int
    skipped: dict[str, int]
    heatmaps: list[str]
    warnings: list[str] = field(default_factory=list)  # printed by the CLI, kept in patch.json


def study_items(run_dir, cfg: InterpConfig, model: ReplayModel, selection: Selection | None, *, what: str
                ) -> tuple[list, Counter, dict[tuple[str, int], Faithfulness]]:
    """The run's replayable sub_calls with gold attached and, under `faithful_only`, only the faithful
    ones. Raises NothingToStudyError (reasons with counts) when none is left."""
    items, tally = collect_sub_calls(run_dir, selection, what=what)
    items = [attach_gold(i) for i in items]
    faith: dict[tuple[str, int], Faithfulness] = {}
    if cfg.faithful_only:
        kept = []
        for it in items:
            f = check_one(model, it, max_dlogprob=cfg.faithful_max_dlogprob, require_argmax=cfg.faithful_require_argmax)
            faith[(it.sample, it.sub_call)] = f
            if f.faithful:
                kept.append(it)
            else:
                tally["unfaithful"] += 1
        if not kept:
            raise NothingToStudyError(what, run_dir, tally)
        items = kept
    return items, tally, faith


def _faith_for(model, cfg, items_by_ref, faith, refs) -> dict[tuple[str, int], Faithfulness]:
    for ref in refs:
        if ref not in faith and ref in items_by_ref:
            faith[ref] = check_one(model, items_by_ref[ref], max_dlogprob=cfg.faithful_max_dlogprob, require_argmax=cfg.faithful_require_argmax)
    return faith


def study_pairs(run_dir, cfg: InterpConfig, model: ReplayModel, selection: Selection | None,
                pairs: list[Pair] | None = None) -> tuple[list[Pair], dict[str, int], dict[tuple[str, int], Faithfulness]]:
    """The default counting pairs of a run (or the given ones), the builder's skip tally and the
    faithfulness of every sub_call a pair came from. NothingToStudyError names why there are none."""
    skipped: dict[str, int] = {}
    faith: dict[tuple[str, int], Faithfulness] = {}
    items_by_ref: dict = {}
    if pairs is None:
        items, tally, faith = study_items(run_dir, cfg, model, selection, what="sub_calls to pair")
        items_by_ref = {(i.sample, i.sub_call): i for i in items}
        pairs, skipped = build_counting_pairs(model, items, n_pairs=cfg.n_pairs, corruptions=cfg.corruptions,
                                              seed=cfg.seed, max_tokens=cfg.max_pair_tokens)
        if not pairs:
            raise NothingToStudyError("clean/corrupt pairs (patching needs sub_calls whose instruction counts rolls "
                                      "and a chunk edit that keeps the token length)", run_dir, tally + Counter(skipped))
    if not pairs:
        raise ValueError("no pairs given")
    faith = _faith_for(model, cfg, items_by_ref, faith, {(p.sample, p.sub_call) for p in pairs})
    return pairs, skipped, faith


def patch_job(
    run_dir: str | Path, out_dir: str | Path, cfg: InterpConfig, spec: WorkerModelSpec, *,
    selection: Selection | None = None, model: ReplayModel | None = None, pairs: list[Pair] | None = None,
    progress: Callable[[int, int, int], None] | None = None, mapper: PairMapper | None = None,
) -> PatchSummary:
    """Build default counting pairs from the run (unless `pairs` is given), sweep, aggregate, plot. The sweep of
    each pair runs where `mapper` sends it (default: here; interp.fanout).

    Output appears only when finished (staged folder). Each row carries its pair's chunk and the
    faithfulness of the sub_call it came from; pairs below `min_denominator` are reported and left out."""
    out_dir = claim_out(out_dir, "interp patch", [run_dir])
    model = model or load_model(cfg, spec)
    pairs, skipped, faith = study_pairs(run_dir, cfg, model, selection, pairs)
    layers = model.resolve_layers(cfg.layers)
    n_rows = 0

    def tick(k: int, got: list[dict]) -> None:
        nonlocal n_rows
        n_rows += len(got)
        if progress:
            progress(k, len(pairs), n_rows)  # pairs done, pairs, patches done

    per_pair = (mapper or local_map)(partial(patch_pair_rows, layers=layers, cfg=cfg), pairs, model, tick)
    rows: list[dict] = []
    for pair, got in zip(pairs, per_pair):
        f = faith.get((pair.sample, pair.sub_call))
        for r in got:
            r.update(chunk=pair.chunk, faithful=None if f is None else f.faithful,
                     max_abs_dlogprob=None if f is None else f.max_abs_dlogprob)
            rows.append(r)
    df = pd.DataFrame(rows)
    df["denominator"] = df["logit_diff_clean"] - df["logit_diff_corrupt"]
    df["small_denominator"] = df["denominator"].abs() < cfg.min_denominator
    df.loc[df["small_denominator"], "normalized"] = float("nan")  # reported, never averaged
    excluded = small_denominator_pairs(df, cfg.min_denominator)
    warn = pair_denominator_warnings(df, dtype_name(model), cfg.min_denominator)
    agg = aggregate_ratio(df, min_denominator=cfg.min_denominator, method=cfg.ci, level=cfg.ci_level,
                          n_boot=cfg.n_boot, seed=cfg.seed)
    prov = model_provenance(model)
    with staged_dir(out_dir, "interp patch") as out:
        df.to_parquet(out / PATCH_FILE, index=False)
        agg.to_parquet(out / AGG_FILE, index=False)
        pngs = [Path(out_dir) / p.name for p in heatmaps(agg, out)]
        with open(out / "pairs.jsonl", "w") as fh:
            for p in pairs:
                f = faith.get((p.sample, p.sub_call))
                fh.write(json.dumps(dict(p.record(), **prov, faithful=None if f is None else f.faithful)) + "\n")
        (out / "patch.json").write_text(json.dumps(dict(
            **prov, n_pairs=len(pairs), n_chunks=len({p.chunk for p in pairs}), n_rows=len(df), skipped=skipped,
            layers=layers, min_denominator=cfg.min_denominator,
            excluded_small_denominator=excluded.to_dict("records"), warnings=warn,
            unfaithful_pairs=[p.pair_id for p in pairs if (f := faith.get((p.sample, p.sub_call))) and not f.faithful],
            config=cfg.model_dump(mode="json")), indent=1))
    return PatchSummary(Path(out_dir), len(pairs), len(df), skipped, [str(p) for p in pngs], warn)


def patch_pair_rows(model: ReplayModel, pair: Pair, *, layers: list[int], cfg: InterpConfig) -> list[dict]:
    """One pair's patching sweep (every layer, component, position and direction the config asks for)."""
    specs = sweep_specs(pair, layers, cfg.components, cfg.patch_positions, cfg.attn_mlp_positions)
    return list(patch_pair(model, pair, specs, directions=cfg.directions, batch_size=cfg.batch_size,
                           offload_reference=cfg.offload_reference))


def probe_job(capture_dir: str | Path, out_dir: str | Path, cfg: InterpConfig) -> pd.DataFrame:
    out_dir = claim_out(out_dir, "interp probe", [capture_dir])
    table = run_probes(capture_dir, component=cfg.probe_component, position=cfg.probe_position,
                       test_size=cfg.probe_test_size, c=cfg.probe_c, seed=cfg.seed,
                       n_splits=cfg.probe_splits, faithful_only=cfg.faithful_only)
    with staged_dir(out_dir, "interp probe") as out:
        table.to_parquet(out / PROBE_FILE, index=False)
        table.to_csv(out / "probes.csv", index=False)
        probe_plot(table, out / "probe_accuracy.png")
    return table


def aggregation_job(run_dir: str | Path, out_dir: str | Path, gold_file: str | Path | None = None) -> pd.DataFrame:
    out_dir = claim_out(out_dir, "interp aggregation", [run_dir])
    per_sample, per_sub = diagnose_aggregation(run_dir, load_gold_file(gold_file) if gold_file else None)
    per_sub = flag_faithful(per_sub, faithfulness_flags(Path(run_dir) / "interp" / "capture"))
    with staged_dir(out_dir, "interp aggregation") as out:
        per_sample.to_csv(out / "aggregation_by_sample.csv", index=False)
        per_sub.to_csv(out / "aggregation_by_sub_call.csv", index=False)
    return per_sample


def dtype_name(model: ReplayModel) -> str:
    """"bfloat16" etc. for the replay's parameters (what bounds the resolution of every logit it reads)."""
    return str(model.dtype).replace("torch.", "")


def summary_dict(obj) -> dict:
    d = asdict(obj)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
