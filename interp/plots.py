"""PNG figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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
