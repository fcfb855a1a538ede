"""Tables and the two-seed heatmap figure for experiments.studies.smollm2_interp (kept apart from the driver).

WHY: the driver runs models; this reads its outputs (patching.parquet per seed, probes.parquet,
samples.jsonl) and turns them into the numbers docs/INTERP_SMOLLM2.md quotes, so the doc can be
regenerated from a finished run without touching a model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rlm_rig.experiments.analysis.render import md_table
from rlm_rig.records.runlog import RunFolder

from rlm_rig.interp.config import PATCH_POSITIONS
from rlm_rig.interp.stats.heatmap_structure import Heatmap, focus_table, heatmap_correlation, heatmap_from_rows

FOCUS = ("edit", "last")
GROUPS = tuple(p for p in PATCH_POSITIONS if p != "all")  # the heatmap columns, in reading order


def _groups(rows: pd.DataFrame) -> list[str]:
    """The position groups of a patching table in reading order (the same rows and columns for every seed)."""
    have = set(rows["position"])
    return [g for g in GROUPS if g in have] + sorted(have - set(GROUPS) - {"all", "none"})


def _pairs(pdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (pdir / "pairs.jsonl").read_text().splitlines() if line.strip()]


# (metric, aggregate over pairs): kl_recovery is bounded; `normalized` divides by a logit gap that is
# near 0 for SmolLM2, so its mean is dominated by a few pairs and its median is given beside it.
VIEWS = (("kl_recovery", "mean"), ("normalized", "median"), ("normalized", "mean"))


def _view_name(metric: str, agg: str) -> str:
    return f"{metric}_{agg}"


def structure_summary(patch_dirs: Sequence[Path], *, component: str = "resid", direction: str = "denoise") -> dict:
    """Per seed and view: focus shares per layer and the heatmap; per seed: the pairs' logit gaps;
    across the first two seeds: the heatmap correlation per view and the sub_calls their pairs share."""
    out: dict[str, Any] = {"focus": list(FOCUS), "seeds": {}, "seed_correlation": {}}
    maps: dict[str, list[Heatmap]] = {}
    for pdir in patch_dirs:
        rows = pd.read_parquet(Path(pdir) / "patching.parquet")
        gap = rows.groupby("pair")[["logit_diff_clean", "logit_diff_corrupt"]].first()
        gap = (gap["logit_diff_clean"] - gap["logit_diff_corrupt"]).abs().to_numpy()
        seed: dict[str, Any] = {
            "n_pairs": int(rows["pair"].nunique()),
            "corruptions": rows.groupby("corruption")["pair"].nunique().to_dict(),
            "abs_logit_gap": {"median": float(np.median(gap)), "min": float(gap.min()), "max": float(gap.max())},
            "views": {},
        }
        for metric, agg in VIEWS:
            hm = heatmap_from_rows(rows, component=component, direction=direction, metric=metric, agg=agg,
                                   positions=_groups(rows))
            maps.setdefault(_view_name(metric, agg), []).append(hm)
            seed["mean_tokens"] = dict(zip(hm.positions, np.round(hm.n_tokens, 2).tolist()))
            seed["views"][_view_name(metric, agg)] = {
                "heatmap": {str(li): dict(zip(hm.positions, np.round(v, 4).tolist()))
                            for li, v in zip(hm.layers, hm.values)},
                "focus": focus_table(hm, FOCUS).to_dict(orient="records"),
            }
        out["seeds"][Path(pdir).name] = seed
    if len(patch_dirs) >= 2:
        a, b = (_pairs(Path(p)) for p in patch_dirs[:2])
        shared = {(r["sample"], r["sub_call"]) for r in a} & {(r["sample"], r["sub_call"]) for r in b}
        out["shared_sub_calls"] = len(shared)
        for name, hms in maps.items():
            out["seed_correlation"][name] = heatmap_correlation(hms[0], hms[1])
    return out


def two_seed_figure(patch_dirs: Sequence[Path], path: Path, *, component: str = "resid",
                    direction: str = "denoise") -> Path:
    """Rows: kl_recovery (mean) and normalized (median); columns: the seeds. Position groups x layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = VIEWS[:2]
    rows = [pd.read_parquet(Path(p) / "patching.parquet") for p in patch_dirs]
    fig, axes = plt.subplots(len(views), len(rows), figsize=(4.6 * len(rows), 2.5 * len(views)), squeeze=False)
    im = None
    for i, (metric, agg) in enumerate(views):
        for j, (r, p) in enumerate(zip(rows, patch_dirs)):
            hm = heatmap_from_rows(r, component=component, direction=direction, metric=metric, agg=agg,
                                   positions=_groups(r))
            ax = axes[i][j]
            im = ax.imshow(hm.values.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            if not np.isfinite(hm.values).any():  # every pair under min_denominator: say so, not a blank panel
                ax.text(0.5, 0.5, "no pair above min_denominator", ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)
            ax.set_xticks(range(len(hm.layers)), [str(x) for x in hm.layers], fontsize=7)
            ax.set_yticks(range(len(hm.positions)), hm.positions, fontsize=7)
            if i == len(views) - 1:
                ax.set_xlabel("layer", fontsize=8)
            used = r.loc[r[metric].notna(), "pair"].nunique() if metric in r.columns else r["pair"].nunique()
            ax.set_title(f"{Path(p).name} ({used} of {r['pair'].nunique()} pairs): {metric} {agg}", fontsize=8)
    fig.subplots_adjust(hspace=0.5)
    fig.colorbar(im, ax=[a for row in axes for a in row], label="0 = corrupt, 1 = clean", shrink=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _cell(v: Any, floatfmt: str, col: str) -> str:
    if isinstance(v, float) and v.is_integer() and (col.startswith("n_") or col in ("layer", "head", "n")):
        return str(int(v))
    return format(v, floatfmt) if isinstance(v, float) else str(v)


def _md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    return md_table(cols, [[_cell(v, floatfmt, c) for c, v in zip(cols, r)] for _, r in df.iterrows()])


def write_summary_md(out: Path, summary: dict) -> Path:
    """OUT/summary.md: answer accuracy, probes, focus shares per seed, seed correlation."""
    parts = ["# SmolLM2-135M-Instruct: interp on the counting set\n"]
    samples = RunFolder(out / "run").rows()
    acc = float(np.mean([s["score"] for s in samples]))
    parts.append(f"Worker exact-match accuracy: {acc:.3f} over {len(samples)} sub_calls.\n")
    if (out / "probe" / "probes.parquet").exists():
        pt = pd.read_parquet(out / "probe" / "probes.parquet")
        cols = ["layer", "probe_acc", "control_acc", "selectivity", "majority_acc", "worker_acc", "rnv_rate",
                "rnv_given_worker_wrong"]
        parts.append("## Probes (count, resid at the last prompt token)\n\n" + _md_table(pt[cols]) + "\n")
    st = summary.get("structure") or {}
    for name, seed in st.get("seeds", {}).items():
        parts.append(f"## {name}: {seed['n_pairs']} pairs {seed['corruptions']}\n\nmean tokens per group: "
                     f"{seed['mean_tokens']}; |logit gap| LD_clean-LD_corrupt: {seed['abs_logit_gap']}\n")
        for view, v in seed["views"].items():
            hm = pd.DataFrame(v["heatmap"]).T.rename_axis("layer").reset_index()
            ft = pd.DataFrame(v["focus"])
            parts.append(f"### {view}\n\n" + _md_table(hm) + "\n\nfocus share (edit + last):\n\n"
                         + _md_table(ft) + "\n")
    if st.get("seed_correlation"):
        ct = pd.DataFrame(st["seed_correlation"]).T.rename_axis("view").reset_index()
        parts.append(f"## Seed reproducibility (shared sub_calls: {st.get('shared_sub_calls')})\n\n"
                     + _md_table(ct) + "\n")
    if summary.get("maps"):
        parts += maps_md(summary["maps"])
    path = out / "summary.md"
    path.write_text("\n".join(parts))
    return path



def _group_of(positions: dict[str, list[int]], seq_len: int) -> np.ndarray:
    """Each token's position group (the patching heatmap's columns); later groups win on overlap, so the
    single `last` token is `last` even though it also closes `post_chunk`."""
    lab = np.array(["other"] * seq_len, dtype=object)
    for g in GROUPS:
        for t in positions.get(g, []):
            if 0 <= t < seq_len:
                lab[t] = g
    return lab


def attribution_summary(adir: Path) -> dict:
    """What the attribution step says, in the terms docs/INTERP_SMOLLM2.md quotes:
    - `every_token`: per (component, layer) of the every-token validation, the median over pairs of the
      Spearman correlation after the edit and the mean sign agreement on the top-k sites by |exact|;
    - `top_k`: per component, over all layers, the mean sign agreement on the top-k attribution sites and
      the share of layers where every such site has the right sign;
    - `group_share`: per (component, layer), the share of Σ|attr| (summed over pairs) in each position
      group, to set beside the exact patching heatmap of the same groups;
    - `denominators`: each pair's LD_clean - LD_corrupt (units of every raw effect above)."""
    cm = pd.read_parquet(adir / "attribution_vs_exact.parquet")
    meta = json.loads((adir / "attribute.json").read_text())
    out: dict[str, Any] = {"n_pairs": meta["n_pairs"], "comparison": meta.get("comparison", {})}
    ev = cm[cm["scope"] == "all_sites"]
    if len(ev):
        out["every_token"] = (ev.groupby(["component", "layer"])
                              .agg(n_pairs=("pair", "nunique"), spearman_after_edit=("spearman_after_edit", "median"),
                                   spearman_all=("spearman", "median"), sign_top_k=("sign_agreement_top_k", "mean"))
                              .reset_index().to_dict("records"))
    tk = cm[cm["scope"] == "top_k"]
    out["top_k"] = (tk.groupby("component")
                    .agg(n_layers=("layer", "nunique"), sign_top_k=("sign_agreement_top_k", "mean"),
                         layers_all_right=("sign_agreement_top_k", lambda s: float((s == 1.0).mean())),
                         sign_top_k_min=("sign_agreement_top_k", "min"))
                    .reset_index().to_dict("records"))
    attr = pd.read_parquet(adir / "attribution.parquet")
    labels = {p["pair"]: _group_of(p["positions"], p["seq_len"]) for p in meta["pairs"]}
    attr["group"] = [labels[p][t] for p, t in zip(attr["pair"], attr["token"])]
    attr["abs"] = attr["attr"].abs()
    tot = attr.groupby(["component", "layer", "group"])["abs"].sum().unstack("group").fillna(0.0)
    share = tot.div(tot.sum(axis=1), axis=0)
    out["group_share"] = share[[g for g in GROUPS if g in share.columns]].reset_index().to_dict("records")
    dens = attr.groupby("pair")[["denominator", "small_denominator"]].first().reset_index()
    out["denominators"] = dens.to_dict("records")
    return out


def lens_summary(ldir: Path) -> dict:
    """The logit lens per layer (as written by `interp lens`) and how many sub_calls it read."""
    meta = json.loads((ldir / "lens.json").read_text())
    return {"n_sub_calls": meta.get("n_sub_calls"), "left_out": meta.get("left_out"),
            "by_layer": pd.read_parquet(ldir / "logit_lens_by_layer.parquet").to_dict("records")}


def heads_summary(hdir: Path, top: int = 10) -> dict:
    """The strongest heads per position (ratio of sums over pairs) and how many pairs the floor left out."""
    agg = pd.read_parquet(hdir / "heads_agg.parquet")
    out: dict[str, Any] = {"n_pairs": json.loads((hdir / "heads.json").read_text()).get("n_pairs"), "top": {}}
    for (metric, pos), g in agg.groupby(["metric", "position"]):
        g = g[g["mean"].notna()]
        if len(g):
            g = g.assign(absmean=g["mean"].abs()).sort_values("absmean", ascending=False).head(top)
            cols = [c for c in ("layer", "head", "mean", "n", "n_excluded", "ci_low", "ci_high", "den_sum")
                    if c in g.columns and g[c].notna().any()]
            g = g[cols].astype({c: int for c in ("layer", "head", "n", "n_excluded") if c in cols})
            out["top"][f"{metric} at {pos}"] = g.to_dict("records")
    return out


def maps_summary(out: Path) -> dict:
    """attribution, lens and heads summaries for whichever of those steps finished."""
    res: dict[str, Any] = {}
    for name, marker, fn in (("attribution", "attribute/attribute.json", attribution_summary),
                             ("lens", "lens/lens.json", lens_summary), ("heads", "heads/heads.json", heads_summary)):
        if (out / marker).exists():
            res[name] = fn((out / marker).parent)
    return res


def maps_md(maps: dict) -> list[str]:
    """summary.md sections for `maps_summary`."""
    parts = []
    a = maps.get("attribution")
    if a:
        parts.append(f"## Attribution vs exact patching ({a['n_pairs']} pairs)\n")
        if a.get("every_token"):
            parts.append("every token at the validated layers:\n\n" + _md_table(pd.DataFrame(a["every_token"])) + "\n")
        parts.append("top-k attribution sites, all layers:\n\n" + _md_table(pd.DataFrame(a["top_k"])) + "\n")
        gs = pd.DataFrame(a["group_share"])
        parts.append("share of Σ|attr| per position group (resid):\n\n"
                     + _md_table(gs[gs["component"] == "resid"].drop(columns=["component"])) + "\n")
        parts.append("denominators:\n\n" + _md_table(pd.DataFrame(a["denominators"]), ".4f") + "\n")
    if maps.get("lens"):
        parts.append(f"## Logit lens ({maps['lens']['n_sub_calls']} sub_calls)\n\n"
                     + _md_table(pd.DataFrame(maps["lens"]["by_layer"])) + "\n")
    h = maps.get("heads")
    if h:
        for name, rows in h["top"].items():
            parts.append(f"## Heads: {name} ({h['n_pairs']} pairs; top by |mean|)\n\n"
                         + _md_table(pd.DataFrame(rows)) + "\n")
    return parts
