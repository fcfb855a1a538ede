"""PNG figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rlm_rig.interp.stats.means import KL_METRIC, RATIO_METRIC  # noqa: E402

POSITION_ORDER = ["chunk_before", "edit", "edit_next", "chunk_after", "post_chunk", "last", "all", "none"]



def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (110 dpi) and close a figure: every interp figure is saved this one way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def _pos_key(p: str) -> tuple[int, int]:
    if p in POSITION_ORDER:
        return (POSITION_ORDER.index(p), 0)
    if p.startswith("last-"):
        return (POSITION_ORDER.index("last"), -int(p.split("-")[1]))
    return (len(POSITION_ORDER), 0)


def heatmap(agg: pd.DataFrame, path: str | Path, *, title: str = "", value: str = "mean") -> Path:
    """Positions (rows) x layers (columns) of an aggregated table for one component/direction."""
    positions = sorted(agg["position"].unique(), key=_pos_key)
    layers = sorted(agg["layer"].unique())
    grid = np.full((len(positions), len(layers)), np.nan)
    for _, r in agg.iterrows():
        grid[positions.index(r["position"]), layers.index(r["layer"])] = r[value]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(layers) + 2.5), max(2.2, 0.45 * len(positions) + 1.2)))
    im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
    ax.set_yticks(range(len(positions)), positions, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="normalized patch effect (0 corrupt, 1 clean)")
    return save_figure(fig, path)


def heatmaps(agg: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """One heatmap per (component, direction)."""
    out = []
    for (comp, direction), grp in agg.groupby(["component", "direction"]):
        out.append(heatmap(grp, Path(out_dir) / f"heatmap_{comp}_{direction}.png",
                           title=f"{comp} patching, {direction} (ratio of sums over pairs)"))
    return out


def probe_plot(table: pd.DataFrame, path: str | Path) -> Path:
    """Probe accuracy per layer against the control task and the worker's text accuracy."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    t = table.sort_values("layer")
    ax.plot(t["layer"], t["probe_acc"], marker="o", label="probe (count)")
    ax.plot(t["layer"], t["control_acc"], marker="x", ls="--", label="control (shuffled labels)")
    ax.plot(t["layer"], t["worker_acc"], ls=":", color="k", label="worker text answer")
    if "rnv_rate" in t:
        ax.bar(t["layer"], t["rnv_rate"], alpha=0.25, color="tab:red", label="represented, not verbalized")
    ax.set_xticks(list(t["layer"]))
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy (test chunks)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


# -- the map jobs' figures: token x layer attribution maps, layer x head heatmaps, logit-lens curves --------
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)
