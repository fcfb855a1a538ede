"""Is a patching heatmap structure or noise? Numbers instead of eyeballing.

Two tests, both on a layer x position-group heatmap of mean effects:

- **focus share**: per layer, the share of the total |effect| that falls on the focus groups (by
  default the edited tokens and the last position). It is compared with the share those groups
  would get under a uniform spread: over groups (what i.i.d. noise per cell gets on average) and
  over tokens (what an effect smeared evenly along the sequence gets). An exact column-permutation
  p-value says how many equally sized sets of groups would have taken at least as large a share.
- **reproducibility**: Pearson and Spearman correlation between two heatmaps built from disjoint
  samples of pairs (two pair-sampling seeds). Noise does not reproduce; structure does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

DEFAULT_FOCUS = ("edit", "last")


@dataclass(frozen=True)
class Heatmap:
    """Mean effect per (layer, position group), plus the mean token count of each group."""

    layers: list[int]
    positions: list[str]
    values: np.ndarray  # [n_layers, n_positions]
    n_tokens: np.ndarray  # [n_positions], mean tokens per group over pairs

    def cell(self, layer: int, position: str) -> float:
        return float(self.values[self.layers.index(layer), self.positions.index(position)])


def kl_recovery(rows: pd.DataFrame) -> pd.Series:
    """KL(P_corrupt||P_patched) / (KL(P_corrupt||P_patched) + KL(P_clean||P_patched)), per patch.

    0 = the patched output distribution is the corrupt one, 1 = the clean one; bounded in [0, 1]. WHY:
    `normalized` divides by the clean-corrupt logit gap of two answer tokens, which is near 0 for a
    model that barely reacts to the count (SmolLM2: median |gap| ~0.05 logits), so a few pairs blow the
    mean up. This reads the whole next-token distribution and cannot blow up (NaN only when both are 0)."""
    a = rows["kl_from_corrupt"].clip(lower=0.0)
    b = rows["kl_from_clean"].clip(lower=0.0)
    tot = a + b
    return (a / tot).where(tot > 0)


def heatmap_from_rows(
    rows: pd.DataFrame,
    *,
    component: str = "resid",
    direction: str = "denoise",
    metric: str = "normalized",
    positions: Sequence[str] | None = None,
    agg: str = "mean",
) -> Heatmap:
    """Average a long patching table (patching.parquet rows) into a layer x position heatmap.

    `metric` is a column, or "kl_recovery" (computed here); `agg` is "mean" or "median" over pairs.
    Sanity groups (`all`, `none`) are left out unless named in `positions`: they are extremes, not
    locations."""
    if agg not in ("mean", "median"):
        raise ValueError(f"agg must be mean or median, got {agg!r}")
    df = rows[(rows["component"] == component) & (rows["direction"] == direction)]
    if metric == "kl_recovery" and "kl_recovery" not in df.columns:
        df = df.assign(kl_recovery=kl_recovery(df))
    if df.empty:
        raise ValueError(f"no rows for component={component!r}, direction={direction!r}")
    pos = list(positions) if positions is not None else [p for p in dict.fromkeys(df["position"])
                                                          if p not in ("all", "none")]
    df = df[df["position"].isin(pos)]
    layers = sorted(int(x) for x in df["layer"].unique())
    grid = df.groupby(["layer", "position"])[metric].agg(agg)
    vals = np.array([[grid.get((li, p), np.nan) for p in pos] for li in layers], dtype=float)
    ntok = df.groupby("position")["n_positions"].mean()
    return Heatmap(layers, pos, vals, np.array([float(ntok.get(p, np.nan)) for p in pos]))


@dataclass(frozen=True)
class FocusShare:
    layer: int | str  # "all" for the whole heatmap
    share: float  # focus |effect| / total |effect|
    uniform_groups: float  # |focus| / n_groups
    uniform_tokens: float  # focus tokens / all tokens
    enrichment: float  # share / uniform_groups
    p_value: float  # exact: share of equally sized column sets with at least this share


def _shares(absval: np.ndarray, cols: Sequence[int]) -> float:
    total = absval.sum()
    return float(absval[..., list(cols)].sum() / total) if total > 0 else float("nan")


def _perm_p(absval: np.ndarray, focus_idx: list[int]) -> float:
    """Exact p over every set of len(focus) columns (same columns in every layer)."""
    obs = _shares(absval, focus_idx)
    if not np.isfinite(obs):
        return float("nan")
    sets = list(combinations(range(absval.shape[-1]), len(focus_idx)))
    return sum(_shares(absval, s) >= obs - 1e-12 for s in sets) / len(sets)


def focus_shares(hm: Heatmap, focus: Sequence[str] = DEFAULT_FOCUS) -> list[FocusShare]:
    """Focus share per layer and over all layers (`layer="all"`). NaN cells count as 0."""
    missing = [f for f in focus if f not in hm.positions]
    if missing:
        raise ValueError(f"focus group(s) {missing} not in the heatmap's positions {hm.positions}")
    idx = [hm.positions.index(f) for f in focus]
    absval = np.nan_to_num(np.abs(hm.values), nan=0.0)
    ntok = np.nan_to_num(hm.n_tokens, nan=0.0)
    u_groups = len(idx) / len(hm.positions)
    u_tokens = float(ntok[idx].sum() / ntok.sum()) if ntok.sum() > 0 else float("nan")
    out = []
    for li, layer in enumerate(hm.layers):
        s = _shares(absval[li], idx)
        out.append(FocusShare(layer, s, u_groups, u_tokens, s / u_groups, _perm_p(absval[li], idx)))
    s = _shares(absval, idx)
    out.append(FocusShare("all", s, u_groups, u_tokens, s / u_groups, _perm_p(absval, idx)))
    return out


def focus_table(hm: Heatmap, focus: Sequence[str] = DEFAULT_FOCUS) -> pd.DataFrame:
    return pd.DataFrame([asdict(f) for f in focus_shares(hm, focus)])


def _rank(x: np.ndarray) -> np.ndarray:
    return pd.Series(x).rank(method="average").to_numpy()


def heatmap_correlation(a: Heatmap, b: Heatmap) -> dict[str, float]:
    """Pearson and Spearman over the cells both heatmaps have (same layers x positions, finite).

    Cells that are constant in both (e.g. `chunk_before`, 0 by causality) add no information but
    inflate the agreement, so the same figures are also given without them."""
    layers = [li for li in a.layers if li in b.layers]
    pos = [p for p in a.positions if p in b.positions]
    x = np.array([[a.cell(li, p) for p in pos] for li in layers]).ravel()
    y = np.array([[b.cell(li, p) for p in pos] for li in layers]).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    out = {"n_cells": int(ok.sum())}
    out.update(_corr(x[ok], y[ok]))
    keep = np.ones(len(layers) * len(pos), dtype=bool)
    xa, ya = x.reshape(len(layers), len(pos)), y.reshape(len(layers), len(pos))
    for j in range(len(pos)):
        if np.nanstd(xa[:, j]) == 0 and np.nanstd(ya[:, j]) == 0:
            keep.reshape(len(layers), len(pos))[:, j] = False
    ok2 = ok & keep
    out["n_cells_varying"] = int(ok2.sum())
    out.update({f"{k}_varying": v for k, v in _corr(x[ok2], y[ok2]).items()})
    return out


def _corr(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(np.corrcoef(x, y)[0, 1]), "spearman": float(np.corrcoef(_rank(x), _rank(y))[0, 1])}
