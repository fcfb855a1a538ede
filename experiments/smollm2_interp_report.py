"""Tables and the two-seed heatmap figure for experiments.smollm2_interp (kept apart from the driver).

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

from interp.structure import Heatmap, focus_table, heatmap_correlation, heatmap_from_rows

FOCUS = ("edit", "last")


def _pairs(pdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (pdir / "pairs.jsonl").read_text().splitlines() if line.strip()]


def structure_summary(patch_dirs: Sequence[Path], *, component: str = "resid", direction: str = "denoise") -> dict:
    """Per seed: focus shares per layer and the pairs' logit gaps; across the first two seeds: the
    heatmap correlation and how many sub_calls their pairs share."""
    out: dict[str, Any] = {"focus": list(FOCUS), "seeds": {}}
    maps: list[Heatmap] = []
    for pdir in patch_dirs:
        rows = pd.read_parquet(Path(pdir) / "patching.parquet")
        hm = heatmap_from_rows(rows, component=component, direction=direction)
        maps.append(hm)
        gap = rows.groupby("pair")[["logit_diff_clean", "logit_diff_corrupt"]].first()
        gap = (gap["logit_diff_clean"] - gap["logit_diff_corrupt"]).to_numpy()
        out["seeds"][Path(pdir).name] = {
            "n_pairs": int(rows["pair"].nunique()),
            "corruptions": rows.groupby("corruption")["pair"].nunique().to_dict(),
            "positions": hm.positions,
            "mean_tokens": dict(zip(hm.positions, np.round(hm.n_tokens, 2).tolist())),
            "heatmap": {str(li): dict(zip(hm.positions, np.round(v, 4).tolist())) for li, v in zip(hm.layers, hm.values)},
            "focus": focus_table(hm, FOCUS).to_dict(orient="records"),
            "logit_gap": {"median": float(np.median(gap)), "min": float(gap.min()), "max": float(gap.max()),
                          "share_positive": float((gap > 0).mean())},
        }
    if len(maps) >= 2:
        a, b = (_pairs(Path(p)) for p in patch_dirs[:2])
        shared = {(r["sample"], r["sub_call"]) for r in a} & {(r["sample"], r["sub_call"]) for r in b}
        out["seed_correlation"] = heatmap_correlation(maps[0], maps[1])
        out["shared_sub_calls"] = len(shared)
    return out


def two_seed_figure(patch_dirs: Sequence[Path], path: Path, *, component: str = "resid",
                    direction: str = "denoise") -> Path:
    """Both seeds' heatmaps side by side (position groups x layers), one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [heatmap_from_rows(pd.read_parquet(Path(p) / "patching.parquet"), component=component,
                              direction=direction) for p in patch_dirs]
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps), 2.9), squeeze=False)
    im = None
    for ax, hm, p in zip(axes[0], maps, patch_dirs):
        im = ax.imshow(hm.values.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(hm.layers)), [str(x) for x in hm.layers], fontsize=7)
        ax.set_yticks(range(len(hm.positions)), hm.positions, fontsize=8)
        ax.set_xlabel("layer")
        ax.set_title(f"{Path(p).name}: {component} {direction}, mean of {len(_pairs(Path(p)))} pairs", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), label="normalized effect")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(format(v, floatfmt) if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


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
    for name, s in st.get("seeds", {}).items():
        ft = pd.DataFrame(s["focus"])
        parts.append(f"## Focus share, {name} ({s['n_pairs']} pairs, {s['corruptions']})\n\n"
                     f"mean tokens per group: {s['mean_tokens']}; logit gap LD_clean-LD_corrupt: {s['logit_gap']}\n\n"
                     + _md_table(ft) + "\n")
    if "seed_correlation" in st:
        parts.append(f"## Seed reproducibility\n\n{st['seed_correlation']}; shared sub_calls: "
                     f"{st['shared_sub_calls']}\n")
    path = out / "summary.md"
    path.write_text("\n".join(parts))
    return path
