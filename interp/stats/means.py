"""Aggregates of interp's per-pair tables: means with CIs by site, ratio metrics, denominator warnings.

The resampler and `mean_ci` live in the records room (records.stats), shared with the run reports."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from rlm_rig.records.stats import mean_ci


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


def small_denominator_pairs(df: pd.DataFrame, min_denominator: float) -> pd.DataFrame:
    """One row per pair whose |LD_clean - LD_corrupt| < `min_denominator`: left out of the normalized metric.

    WHY a floor: normalized = (LD - LD_corrupt) / (LD_clean - LD_corrupt). When the edit barely moves the
    logit difference, the ratio amplifies numerical noise and any tiny effect without bound (a 2e-5
    denominator once gave values from -231 to +263 and dominated a 4-pair mean)."""
    if df.empty:
        return pd.DataFrame(columns=["pair", "chunk", "denominator"])
    per = df.groupby("pair", sort=True).agg(
        denominator=("logit_diff_clean", "first"), corrupt=("logit_diff_corrupt", "first"),
        chunk=("chunk", "first") if "chunk" in df.columns else ("pair", "first")).reset_index()
    per["denominator"] = per["denominator"] - per["corrupt"]
    return per.loc[per["denominator"].abs() < min_denominator, ["pair", "chunk", "denominator"]]


def pair_denominator_warnings(df: pd.DataFrame, dtype: str, min_denominator: float) -> list[str]:
    """`denominator_warnings` over a long table with one `denominator` per pair (patch, attribute, heads)."""
    return denominator_warnings(df.groupby("pair")["denominator"].first(), dtype, min_denominator)


def denominator_warnings(denominators: Sequence[float], dtype: str, min_denominator: float) -> list[str]:
    """A line for the user when most pairs fall under the floor, naming the likely cause.

    WHY: on SmolLM2 replayed in bfloat16, 5 of 6 pairs had LD_clean - LD_corrupt of exactly 0: bf16 keeps 8
    significant bits, so a logit of 16-32 moves in steps of 0.125, coarser than the effect of one changed
    roll line (0.003-0.17 logits in float32). The normalized maps were then empty and the exact effects
    were rounding, with nothing on screen saying why."""
    d = np.abs(np.asarray(list(denominators), dtype=float))
    if not len(d):
        return []
    small, zero = int((d < min_denominator).sum()), int((d == 0).sum())
    out = []
    if small * 2 >= len(d):
        out.append(f"{small} of {len(d)} pairs have |LD_clean - LD_corrupt| < min_denominator={min_denominator} "
                   f"and are left out of the normalized metric (kl_recovery and the raw logit differences "
                   f"still cover them)")
    if zero and dtype in ("bfloat16", "float16"):
        step = 2.0 ** -7 if dtype == "bfloat16" else 2.0 ** -10
        out.append(f"{zero} of {len(d)} pairs have a denominator of exactly 0 in {dtype}, whose logits near 16-32 "
                   f"move in steps of {16 * step:g}-{32 * step:g}: replay in float32 (interp.dtype) if it fits")
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    d = den.sum()
    return float(num.sum() / d) if d != 0 else float("nan")


RATIO_METRIC = "normalized_ratio_of_sums"
KL_METRIC = "kl_recovery_mean"  # the bounded view beside it (interp.stats.heatmap_structure.kl_recovery)


# long: ratio of sums per group with its chunk-level bootstrap and the small-denominator exclusions, together
def aggregate_ratio(
    df: pd.DataFrame,
    *,
    by: tuple[str, ...] = ("component", "layer", "position", "direction"),
    min_denominator: float = 0.1,
    method: str = "bootstrap",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Normalized patching effect per group as a ratio of sums over pairs,
    sum(LD_patched - LD_corrupt) / sum(LD_clean - LD_corrupt), with the denominator shown.

    A ratio of sums weighs each pair by how much its edit moved the answer, so no single pair with a
    tiny denominator dominates (a mean of per-pair ratios is kept as `mean_of_ratios` for comparison).
    Pairs below `min_denominator` are left out and counted in `n_excluded`. CIs resample **chunks**, not
    pairs: pairs cut from one chunk share its text and are not independent (`method="t"` uses a Student t
    interval over per-chunk ratios instead)."""
    cols = [*by, "metric", "n", "n_chunks", "n_excluded", "mean", "ci_low", "ci_high", "den_sum", "den_mean",
            "mean_of_ratios"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    need = [c for c in (*by, "pair", "logit_diff", "logit_diff_clean", "logit_diff_corrupt") if c not in df.columns]
    if need:
        raise ValueError(f"columns {need} are not in the patching table")
    if method not in ("bootstrap", "t"):
        raise ValueError(f"unknown CI method {method!r}; choose bootstrap or t")
    d = df.copy()
    if "chunk" not in d.columns:
        d["chunk"] = d["pair"]
    d["num"] = d["logit_diff"] - d["logit_diff_corrupt"]
    d["den"] = d["logit_diff_clean"] - d["logit_diff_corrupt"]
    small = d["den"].abs() < min_denominator
    alpha = 1.0 - level
    rng = np.random.default_rng(seed)
    rows = []
    for key, grp in d.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        keep = grp.loc[~small.loc[grp.index]]
        n_ex = int(grp.loc[small.loc[grp.index], "pair"].nunique())
        num, den = keep["num"].to_numpy(float), keep["den"].to_numpy(float)
        est = _ratio(num, den) if len(keep) else float("nan")
        chunks = keep["chunk"].to_numpy()
        uniq = np.unique(chunks)
        lo = hi = float("nan")
        if len(uniq) >= 2:
            per_chunk = [(num[chunks == c].sum(), den[chunks == c].sum()) for c in uniq]
            cn = np.array([p[0] for p in per_chunk])
            cd = np.array([p[1] for p in per_chunk])
            if method == "bootstrap":
                idx = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
                ds = cd[idx].sum(1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    boots = cn[idx].sum(1) / ds
                boots = boots[np.isfinite(boots)]
                if len(boots):
                    lo, hi = (float(v) for v in np.quantile(boots, [alpha / 2, 1 - alpha / 2]))
            else:
                from scipy import stats

                with np.errstate(divide="ignore", invalid="ignore"):
                    r = cn / cd
                r = r[np.isfinite(r)]
                if len(r) >= 2:
                    half = float(stats.t.ppf(1 - alpha / 2, len(r) - 1)) * float(r.std(ddof=1)) / math.sqrt(len(r))
                    lo, hi = est - half, est + half
        with np.errstate(divide="ignore", invalid="ignore"):
            mor = float(np.mean(num / den)) if len(keep) else float("nan")
        rows.append({**dict(zip(by, key)), "metric": RATIO_METRIC, "n": int(keep["pair"].nunique()),
                     "n_chunks": int(len(uniq)), "n_excluded": n_ex, "mean": est, "ci_low": lo, "ci_high": hi,
                     "den_sum": float(den.sum()) if len(keep) else float("nan"),
                     "den_mean": float(den.mean()) if len(keep) else float("nan"), "mean_of_ratios": mor})
    return pd.DataFrame(rows, columns=cols)
