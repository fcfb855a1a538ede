"""Figures of the map jobs: token x layer attribution maps, layer x head heatmaps, logit-lens curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import save_figure as _save  # noqa: E402
from .stats import KL_METRIC, RATIO_METRIC  # noqa: E402


def attribution_map(res, component: str, path: str | Path) -> Path:
    """Layers (rows) x tokens (columns) of one pair's attribution, normalized by its denominator,
    with the edited tokens marked."""
    a = res.attr[component].double().numpy()
    den = res.denominator or float("nan")
    a = a / den
    lim = float(np.nanmax(np.abs(a))) or 1.0
    fig, ax = plt.subplots(figsize=(min(14, 3 + a.shape[1] / 25), 1.2 + 0.3 * a.shape[0]))
    im = ax.imshow(a, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    for t in res.pair.positions.get("edit", []):
        ax.axvline(t, color="k", lw=0.5, ls=":")
    ax.set_xlabel("token")
    ax.set_ylabel("layer")
    ax.set_title(f"attribution, {component}, {res.direction} ({res.pair.pair_id}); dotted = edit", fontsize=8)
    fig.colorbar(im, ax=ax, label="est. normalized effect")
    return _save(fig, path)


def head_heatmap(agg: pd.DataFrame, path: str | Path, *, title: str = "", metric: str = RATIO_METRIC) -> Path:
    """Layer x head map of one metric: the ratio-of-sums normalized effect (diverging, -1..1) or the mean
    KL recovery (0 = corrupt, 1 = clean)."""
    kl = metric == KL_METRIC
    layers = sorted(agg["layer"].unique())
    heads = sorted(agg["head"].unique())
    grid = np.full((len(layers), len(heads)), np.nan)
    for _, r in agg.iterrows():
        grid[layers.index(r["layer"]), heads.index(r["head"])] = r["mean"]
    fig, ax = plt.subplots(figsize=(2.5 + 0.3 * len(heads), 1.5 + 0.3 * len(layers)))
    # KL recovery of one head is small (SmolLM2: <= 0.05), so its scale is 0..max, not 0..1 (the colour bar says it)
    top = float(np.nanmax(grid)) if kl and np.isfinite(grid).any() else 1.0
    im = ax.imshow(grid, aspect="auto", cmap="viridis" if kl else "RdBu_r", vmin=0 if kl else -1,
                   vmax=max(top, 1e-6) if kl else 1, interpolation="nearest")
    ax.set_xticks(range(len(heads)), [str(h) for h in heads], fontsize=6)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="KL recovery (mean over pairs)" if kl else "normalized effect (ratio of sums)")
    return _save(fig, path)


def lens_plot(agg: pd.DataFrame, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(agg["layer"], agg["worker_prob"], marker="o", label="P(worker's own token)")
    ax.plot(agg["layer"], agg["gold_prob"], marker="x", label="P(gold count token)")
    ax.plot(agg["layer"], agg["gold_top1"], ls=":", label="gold token is top-1")
    ax.set_xlabel("layer")
    ax.set_ylabel("probability / rate")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("logit lens at the answer position", fontsize=9)
    return _save(fig, path)
