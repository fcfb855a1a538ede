"""The rig's shared statistics: the one percentile-bootstrap resampler and the mean with its CI.

WHY in the records room: run reports (experiments.analysis) and interp's tables both summarise
records with CIs; one resampler means one seed convention and one memory bound for both.
"""
from __future__ import annotations

import math

import numpy as np


def bootstrap_means(x: np.ndarray, *, n_boot: int, seed: int, max_cells: int = 2_000_000) -> np.ndarray:
    """The percentile bootstrap's draws: `n_boot` means of `x` resampled with replacement, drawn in
    batches so the index matrix stays under `max_cells` (~16 MB). The one resampler of the rig: run
    reports (experiments.analysis) and interp's CIs both use it."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, max_cells // max(1, x.size))
    for i in range(0, n_boot, step):
        k = min(step, n_boot - i)
        means[i : i + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    return means


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
    boots = bootstrap_means(x, n_boot=n_boot, seed=seed)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return m, float(lo), float(hi)
