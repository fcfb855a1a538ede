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

from experiments.analysis.render import md_table

from interp.heatmap_structure import Heatmap, focus_table, heatmap_correlation, heatmap_from_rows

FOCUS = ("edit", "last")


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
            hm = heatmap_from_rows(rows, component=component, direction=direction, metric=metric, agg=agg)
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
            hm = heatmap_from_rows(r, component=component, direction=direction, metric=metric, agg=agg)
            ax = axes[i][j]
            im = ax.imshow(hm.values.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks(range(len(hm.layers)), [str(x) for x in hm.layers], fontsize=7)
            ax.set_yticks(range(len(hm.positions)), hm.positions, fontsize=7)
            if i == len(views) - 1:
                ax.set_xlabel("layer", fontsize=8)
            ax.set_title(f"{Path(p).name} ({r['pair'].nunique()} pairs): {metric} {agg}", fontsize=8)
    fig.subplots_adjust(hspace=0.5)
    fig.colorbar(im, ax=[a for row in axes for a in row], label="0 = corrupt, 1 = clean", shrink=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def _cell(v: Any, floatfmt: str, col: str) -> str:
    if isinstance(v, float) and v.is_integer() and (col.startswith("n_") or col == "layer"):
        return str(int(v))
    return format(v, floatfmt) if isinstance(v, float) else str(v)


def _md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    return md_table(cols, [[_cell(v, floatfmt, c) for c, v in zip(cols, r)] for _, r in df.iterrows()])


def write_summary_md(out: Path, summary: dict) -> Path:
    """OUT/summary.md: answer accuracy, probes, focus shares per seed, seed correlation."""
    parts = ["# SmolLM2-135M-Instruct: interp on the counting set\n"]
    samples = [json.loads(x) for x in (out / "run" / "samples.jsonl").read_text().splitlines() if x.strip()]
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
    path = out / "summary.md"
    path.write_text("\n".join(parts))
    return path
