"""Means with confidence intervals over pairs (percentile bootstrap or Student t)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def mean_ci(values, *, method: str = "bootstrap", level: float = 0.95, n_boot: int = 2000, seed: int = 0):
    """(mean, low, high) of the finite values; NaNs (undefined metrics) are dropped first."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if n == 1:
        return m, float("nan"), float("nan")
    alpha = 1.0 - level
    if method == "t":
        from scipy import stats

        half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
        return m, m - half, m + half
    if method != "bootstrap":
        raise ValueError(f"unknown CI method {method!r}; choose bootstrap or t")
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return m, float(lo), float(hi)


def aggregate(
    df: pd.DataFrame,
    *,
    by: tuple[str, ...] = ("component", "layer", "position", "direction"),
    metric: str = "normalized",
    method: str = "bootstrap",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per group: n, mean, ci_low, ci_high of `metric` over pairs."""
    if df.empty:
        return pd.DataFrame(columns=[*by, "metric", "n", "mean", "ci_low", "ci_high"])
    missing = [c for c in (*by, metric) if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the patching table")
    rows = []
    for key, grp in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        vals = grp[metric].to_numpy(dtype=float)
        m, lo, hi = mean_ci(vals, method=method, level=level, n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(by, key)), "metric": metric, "n": int(np.isfinite(vals).sum()), "mean": m,
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)
