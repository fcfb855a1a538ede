"""The map jobs over long chunks: attribution patching (+ exact follow-up), per-head patching, logit lens.

Each writes into a staged folder (nothing appears unless finished) and refuses a run with nothing to
study, naming the reasons with counts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from .attribution import attribute_pair, compare, exact_sites, top_k_sites
from .config import InterpConfig, WorkerModelSpec
from .fanout import PairMapper, local_map
from .jobs import dtype_name, load_model, study_items, study_pairs
from .lens import lens_one
from .model import ReplayModel
from .outputs import claim_out, staged_dir
from .pairs import Pair
from .plots_maps import attribution_map, head_heatmap, lens_plot
from .provenance import model_provenance
from .selection import NothingToStudyError, Selection
from .heatmap_structure import kl_recovery
from .stats import KL_METRIC, RATIO_METRIC, aggregate_ratio, pair_denominator_warnings

ATTR_FILE = "attribution.parquet"
ATTR_TOPK_FILE = "attribution_topk_exact.parquet"
ATTR_CMP_FILE = "attribution_vs_exact.parquet"
HEADS_FILE = "heads.parquet"
HEADS_AGG_FILE = "heads_agg.parquet"
LENS_FILE = "logit_lens.parquet"
LENS_AGG_FILE = "logit_lens_by_layer.parquet"


@dataclass
class MapSummary:
    out_dir: str
    n_pairs: int
    n_rows: int
    figures: list[str]
    summary: dict
    warnings: list[str] = field(default_factory=list)  # printed by the CLI, kept in the job's json


def attribute_job(run_dir, out_dir, cfg: InterpConfig, spec: WorkerModelSpec, *, selection: Selection | None = None,
                  model: ReplayModel | None = None, pairs: list[Pair] | None = None, progress=None,
                  mapper: PairMapper | None = None) -> MapSummary:
    """Attribution patching of every pair (token x layer x component), exact patching of the top-k
    sites per (component, layer), and, for pairs up to `attr_validate_max_tokens`, exact patching of
    every site to measure how well the linear estimate ranks and signs the true effects."""
    out_dir = claim_out(out_dir, "interp attribute", [run_dir])
    model = model or load_model(cfg, spec)
    pairs, skipped, faith = study_pairs(run_dir, cfg, model, selection, pairs)
    vlayers = model.resolve_layers(cfg.attr_validate_layers)  # checked before any pair runs
    per_pair = (mapper or local_map)(partial(attribute_pair_all, cfg=cfg, vlayers=vlayers), pairs, model,
                                     (lambda k, _: progress(k, len(pairs))) if progress else None)
    rows, topk, cmp, figs_data = [], [], [], []
    for n, (pair, got) in enumerate(zip(pairs, per_pair)):
        f = faith.get((pair.sample, pair.sub_call))
        for direction, fr, small, tk_rows, cmp_rows, res in got:
            fr["faithful"] = None if f is None else f.faithful
            fr["small_denominator"] = small
            rows.append(fr)
            topk += tk_rows
            cmp += cmp_rows
            if n < 3:
                figs_data.append((n, direction, res))
    df, tk, cm = pd.concat(rows, ignore_index=True), pd.DataFrame(topk), pd.DataFrame(cmp)
    summ = _cmp_summary(cm)
    warn = pair_denominator_warnings(df, dtype_name(model), cfg.min_denominator)
    with staged_dir(out_dir, "interp attribute") as out:
        df.to_parquet(out / ATTR_FILE, index=False)
        tk.to_parquet(out / ATTR_TOPK_FILE, index=False)
        cm.to_parquet(out / ATTR_CMP_FILE, index=False)
        cm.to_csv(out / "attribution_vs_exact.csv", index=False)
        figs = []
        for n, direction, res in figs_data:
            for c in res.attr:
                figs.append(attribution_map(res, c, out / f"attr_pair{n}_{c}_{direction}.png").name)
        (out / "attribute.json").write_text(json.dumps(dict(
            **model_provenance(model), n_pairs=len(pairs), skipped=skipped, comparison=summ, warnings=warn,
            pairs=[p.record() for p in pairs], config=cfg.model_dump(mode="json")), indent=1, default=str))
    return MapSummary(str(out_dir), len(pairs), len(df), figs, summ, warn)


def attribute_pair_all(model: ReplayModel, pair: Pair, *, cfg: InterpConfig, vlayers: list[int]) -> list[tuple]:
    """One pair, each direction: the attribution map, exact patching of its top-k sites (and of every site of a
    short pair), and their comparison rows. The caller adds the pair's faithfulness."""
    out = []
    for direction in cfg.directions:
        res = attribute_pair(model, pair, components=cfg.attr_components, direction=direction,
                             offload=cfg.offload_reference)
        small = abs(res.denominator) < cfg.min_denominator
        fr = res.frame()
        exact = exact_sites(model, pair, top_k_sites(res, cfg.attr_top_k), direction=direction,
                            batch_size=cfg.batch_size)
        topk = [dict(pair=pair.pair_id, chunk=pair.chunk, direction=direction, component=c, layer=li, token=t,
                     attr=float(res.attr[c][li, t]), exact=e, denominator=res.denominator)
                for (c, li, t), e in exact.items()]
        scope = [("top_k", exact)]
        if cfg.attr_validate_max_tokens and pair.seq_len <= cfg.attr_validate_max_tokens:
            every = [(c, li, t) for c in res.attr for li in vlayers for t in range(pair.seq_len)]
            scope.append(("all_sites", exact_sites(model, pair, every, direction=direction, batch_size=cfg.batch_size)))
        cmp = [dict(r, scope=name, small_denominator=small) for name, ex in scope for r in compare(res, ex, k=cfg.attr_top_k)]
        out.append((direction, fr, small, topk, cmp, res))
    return out


def _cmp_summary(cm: pd.DataFrame) -> dict:
    """Median over pairs and layers of the rank correlation and sign agreement, per scope and component."""
    if cm.empty:
        return {}
    out = {}
    for (scope, comp), g in cm.groupby(["scope", "component"]):
        out[f"{scope}/{comp}"] = dict(
            n=int(len(g)), median_spearman=float(np.nanmedian(g["spearman"])) if g["spearman"].notna().any() else None,
            median_spearman_after_edit=(float(np.nanmedian(g["spearman_after_edit"]))
                                        if g["spearman_after_edit"].notna().any() else None),
            mean_sign_agreement_top_k=(float(np.nanmean(g["sign_agreement_top_k"]))
                                       if g["sign_agreement_top_k"].notna().any() else None))
    return out


def heads_job(run_dir, out_dir, cfg: InterpConfig, spec: WorkerModelSpec, *, selection: Selection | None = None,
              model: ReplayModel | None = None, pairs: list[Pair] | None = None, progress=None,
              mapper: PairMapper | None = None) -> MapSummary:
    """Patch every attention head (layer x head) at each of `head_positions`; heatmaps per position."""
    out_dir = claim_out(out_dir, "interp heads", [run_dir])
    model = model or load_model(cfg, spec)
    pairs, skipped, faith = study_pairs(run_dir, cfg, model, selection, pairs)
    layers = model.resolve_layers(cfg.layers)
    per_pair = (mapper or local_map)(partial(heads_pair_rows, layers=layers, cfg=cfg), pairs, model,
                                     (lambda k, _: progress(k, len(pairs))) if progress else None)
    rows = []
    for pair, got in zip(pairs, per_pair):
        f = faith.get((pair.sample, pair.sub_call))
        for r in got:
            r["faithful"] = None if f is None else f.faithful
            rows.append(r)
    df = pd.DataFrame(rows)
    df["kl_recovery"] = kl_recovery(df)
    by = ("component", "layer", "head", "position", "direction")
    ratio = aggregate_ratio(df, by=by, min_denominator=cfg.min_denominator, method=cfg.ci, level=cfg.ci_level,
                            n_boot=cfg.n_boot, seed=cfg.seed)
    agg = pd.concat([ratio, kl_mean(df, by)], ignore_index=True)
    warn = pair_denominator_warnings(df, dtype_name(model), cfg.min_denominator)
    with staged_dir(out_dir, "interp heads") as out:
        df.to_parquet(out / HEADS_FILE, index=False)
        agg.to_parquet(out / HEADS_AGG_FILE, index=False)
        figs = [head_heatmap(g, out / f"heads_{pos}_{d}{'' if m == RATIO_METRIC else '_kl'}.png", metric=m,
                             title=f"head patching at {pos}, {d}").name
                for (m, pos, d), g in agg.groupby(["metric", "position", "direction"]) if g["mean"].notna().any()]
        (out / "heads.json").write_text(json.dumps(dict(**model_provenance(model), n_pairs=len(pairs),
                                                        skipped=skipped, layers=layers, warnings=warn), indent=1))
    return MapSummary(str(out_dir), len(pairs), len(df), figs, {}, warn)


def heads_pair_rows(model: ReplayModel, pair: Pair, *, layers: list[int], cfg: InterpConfig) -> list[dict]:
    """One pair's per-head patching at every position group and direction."""
    from .heads import patch_heads

    return list(patch_heads(model, pair, layers, cfg.head_positions, directions=list(cfg.directions),
                            batch_size=cfg.batch_size, min_denominator=cfg.min_denominator))


def kl_mean(df: pd.DataFrame, by: tuple[str, ...]) -> pd.DataFrame:
    """Mean `kl_recovery` per group over all pairs. WHY beside the ratio of sums: a model whose edit barely
    moves the two answer tokens (SmolLM2: |LD_clean - LD_corrupt| mostly under the 0.1 floor) leaves the
    normalized map empty, while this bounded whole-distribution view needs no floor."""
    g = df.groupby(list(by), sort=True)
    out = g.agg(n=("pair", "nunique"), n_chunks=("chunk", "nunique"), mean=("kl_recovery", "mean")).reset_index()
    return out.assign(metric=KL_METRIC, n_excluded=0)


def lens_job(run_dir, out_dir, cfg: InterpConfig, spec: WorkerModelSpec, *, selection: Selection | None = None,
             model: ReplayModel | None = None, gold_map: dict | None = None) -> MapSummary:
    """Logit lens at the answer position of every sub_call whose answer has a number."""
    from .capture import attach_gold
    from .faithfulness import check_one

    out_dir = claim_out(out_dir, "interp lens", [run_dir])
    model = model or load_model(cfg, spec)
    items, tally, faith = study_items(run_dir, cfg, model, selection, what="sub_calls with a number to read")
    rows = []
    for it in items:
        attach_gold(it, gold_map)
        f = faith.get((it.sample, it.sub_call)) or check_one(model, it, max_dlogprob=cfg.faithful_max_dlogprob, require_argmax=cfg.faithful_require_argmax)
        got = lens_one(model, it, faithful=f.faithful)
        if not got:
            tally["no_number"] += 1
        rows += got
    if not rows:
        raise NothingToStudyError("sub_calls with a number to read", run_dir, tally)
    df = pd.DataFrame(rows)
    agg = lens_by_layer(df)
    with staged_dir(out_dir, "interp lens") as out:
        df.to_parquet(out / LENS_FILE, index=False)
        agg.to_parquet(out / LENS_AGG_FILE, index=False)
        agg.to_csv(out / "logit_lens_by_layer.csv", index=False)
        fig = lens_plot(agg, out / "logit_lens.png").name
        (out / "lens.json").write_text(json.dumps(dict(**model_provenance(model), n_sub_calls=int(df["sub_call"].size
                                                        and df.groupby(["sample", "sub_call"]).ngroups),
                                                        left_out=dict(tally)), indent=1))
    return MapSummary(str(out_dir), 0, len(df), [fig], {})


def lens_by_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer: the worker token's and the gold token's mean probability, median rank, top-1 rate."""
    out = []
    for li, g in df.groupby("layer"):
        gg = g[g["gold_token"].notna()]
        out.append(dict(layer=int(li), n=int(len(g)), n_gold=int(len(gg)),
                        worker_prob=float(g["worker_prob"].mean()), worker_rank_median=float(g["worker_rank"].median()),
                        worker_top1=float((g["worker_rank"] == 0).mean()),
                        gold_prob=float(gg["gold_prob"].mean()) if len(gg) else float("nan"),
                        gold_rank_median=float(gg["gold_rank"].median()) if len(gg) else float("nan"),
                        gold_top1=float((gg["gold_rank"] == 0).mean()) if len(gg) else float("nan")))
    return pd.DataFrame(out)
