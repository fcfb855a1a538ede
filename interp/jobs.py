"""The interp jobs as functions, one per method (the CLI is a thin shell around these).

capture, patch, probe and aggregation over the run's sub_calls; then the map jobs over long chunks:
attribution patching (+ exact follow-up), per-head patching, logit lens. Each writes into a staged
folder (nothing appears unless finished) and refuses a run with nothing to study, naming the reasons
with counts."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from rlm_rig.interp.methods.aggregation import diagnose_aggregation
from rlm_rig.interp.methods.capture import CaptureSummary, attach_gold, run_capture
from .config import InterpConfig
from .profile import WorkerModelSpec
from .model import ReplayModel
from rlm_rig.interp.data.pairs import Pair, build_counting_pairs
from rlm_rig.interp.methods.patching import patch_pair, sweep_specs
from rlm_rig.interp.methods.probes import run_probes
from .outputs import claim_out, staged_dir
from .fanout import PairMapper, local_map
from rlm_rig.interp.data.selection import NothingToStudyError, Selection, collect_sub_calls, load_gold_file
from rlm_rig.interp.methods.faithfulness import Faithfulness, check_one, faithfulness_flags, flag_faithful
from .provenance import model_provenance
from rlm_rig.interp.stats.means import KL_METRIC, RATIO_METRIC, aggregate_ratio, pair_denominator_warnings, small_denominator_pairs
from rlm_rig.interp.methods.attribution import attribute_pair, compare, exact_sites, top_k_sites
from rlm_rig.interp.methods.lens import lens_one
from rlm_rig.interp.report.plots import attribution_map, head_heatmap, heatmaps, lens_plot, probe_plot
from rlm_rig.interp.stats.heatmap_structure import kl_recovery

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


# -- the map jobs ----------------------------------------------------------------------------------
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


def attribute_pair_all(model: ReplayModel, pair: Pair, *, cfg: InterpConfig, vlayers: list[int],
                       exact_fn: Callable = exact_sites) -> list[tuple]:
    """One pair, each direction: the attribution map, exact patching of its top-k sites (and of every site of a
    short pair), and their comparison rows. The caller adds the pair's faithfulness. A plain function of
    (model, pair), so a mapper can run it anywhere (interp.fanout). `exact_fn`: the exact patcher (the nnsight
    path; the controller's long conversations use `prefix_exact.exact_sites_prefix`, same contract)."""
    out = []
    for direction in cfg.directions:
        res = attribute_pair(model, pair, components=cfg.attr_components, direction=direction,
                             offload=cfg.offload_reference)
        small = abs(res.denominator) < cfg.min_denominator
        fr = res.frame()
        exact = exact_fn(model, pair, top_k_sites(res, cfg.attr_top_k), direction=direction,
                         batch_size=cfg.batch_size)
        topk = [dict(pair=pair.pair_id, chunk=pair.chunk, direction=direction, component=c, layer=li, token=t,
                     attr=float(res.attr[c][li, t]), exact=e, denominator=res.denominator)
                for (c, li, t), e in exact.items()]
        scope = [("top_k", exact)]
        if cfg.attr_validate_max_tokens and pair.seq_len <= cfg.attr_validate_max_tokens:
            every = [(c, li, t) for c in res.attr for li in vlayers for t in range(pair.seq_len)]
            scope.append(("all_sites", exact_fn(model, pair, every, direction=direction,
                                                batch_size=cfg.batch_size)))
        cmp = [dict(r, scope=name, small_denominator=small) for name, ex in scope
               for r in compare(res, ex, k=cfg.attr_top_k)]
        out.append((direction, fr, small, topk, cmp, res))
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


def kl_mean(df: pd.DataFrame, by: tuple[str, ...]) -> pd.DataFrame:
    """Mean `kl_recovery` per group over all pairs. WHY beside the ratio of sums: a model whose edit barely
    moves the two answer tokens (SmolLM2: |LD_clean - LD_corrupt| mostly under the 0.1 floor) leaves the
    normalized map empty, while this bounded whole-distribution view needs no floor."""
    g = df.groupby(list(by), sort=True)
    out = g.agg(n=("pair", "nunique"), n_chunks=("chunk", "nunique"), mean=("kl_recovery", "mean")).reset_index()
    return out.assign(metric=KL_METRIC, n_excluded=0)


def heads_pair_rows(model: ReplayModel, pair: Pair, *, layers: list[int], cfg: InterpConfig) -> list[dict]:
    """One pair's per-head patching at every position group and direction (a plain function of (model, pair))."""
    from rlm_rig.interp.methods.heads import patch_heads

    return list(patch_heads(model, pair, layers, cfg.head_positions, directions=list(cfg.directions),
                            batch_size=cfg.batch_size, min_denominator=cfg.min_denominator))


def lens_job(run_dir, out_dir, cfg: InterpConfig, spec: WorkerModelSpec, *, selection: Selection | None = None,
             model: ReplayModel | None = None, gold_map: dict | None = None) -> MapSummary:
    """Logit lens at the answer position of every sub_call whose answer has a number."""
    from rlm_rig.interp.methods.capture import attach_gold
    from rlm_rig.interp.methods.faithfulness import check_one

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
