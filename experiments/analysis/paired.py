"""Paired comparisons of runs on the ids they share: what a reviewer asks for when two methods were
run on the same questions.

For every run after the first (the reference), on the shared ids, overall, per ``question_type`` and
per context-length bin (tokens of the worker's tokenizer when every row has them):

- the paired difference of mean official scores (run minus reference) with a percentile bootstrap CI
  over ids (the CI of the mean of per-id differences: ``experiments.analysis.metrics.bootstrap_ci``);
- an exact paired test for exact accuracy (score == 1): McNemar's exact test, i.e. a two-sided
  binomial test of the discordant pairs against p = 1/2 (ties carry no information).

WHY paired: two methods on the same 50 questions differ far less by chance than two independent
samples of 50; the unpaired CIs of each run's mean overstate the noise in their difference.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from rlm_rig.experiments.analysis.metrics import DEFAULT_SEED, bootstrap_ci, length_bucket_order

PAIRED_COLUMNS = [
    "reference", "run", "by", "group", "n_shared", "mean_reference", "mean_run", "diff", "ci_low", "ci_high",
    "exact_reference", "exact_run", "only_reference_exact", "only_run_exact", "mcnemar_p",
]


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_stats(a: pd.DataFrame, b: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Figures for two frames indexed by id holding ``score`` and ``exact`` (same ids, any order)."""
    ids = a.index.intersection(b.index)
    sa = a.loc[ids, "score"].to_numpy(float)
    sb = b.loc[ids, "score"].to_numpy(float)
    ea = a.loc[ids, "exact"].to_numpy(float) >= 1
    eb = b.loc[ids, "exact"].to_numpy(float) >= 1
    diff = sb - sa
    lo, hi = bootstrap_ci(diff, seed=seed)
    only_a, only_b = int((ea & ~eb).sum()), int((eb & ~ea).sum())
    n = len(ids)
    return {
        "n_shared": n,
        "mean_reference": float(sa.mean()) if n else math.nan,
        "mean_run": float(sb.mean()) if n else math.nan,
        "diff": float(diff.mean()) if n else math.nan,
        "ci_low": lo,
        "ci_high": hi,
        "exact_reference": float(ea.mean()) if n else math.nan,
        "exact_run": float(eb.mean()) if n else math.nan,
        "only_reference_exact": only_a,
        "only_run_exact": only_b,
        "mcnemar_p": mcnemar_exact(only_a, only_b) if n else math.nan,
    }


def paired_table(frames: dict[str, pd.DataFrame], *, unit: str = "tokens", seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Every run against the first, overall and per group. ``frames``: label -> sample frame (with
    ``id``, ``score``, ``exact``, ``question_type``, ``length_bucket``)."""
    labels = list(frames)
    recs: list[dict[str, Any]] = []
    if len(labels) < 2:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    ref_label = labels[0]
    ref = frames[ref_label].drop_duplicates("id").set_index("id")
    order = length_bucket_order(unit)
    for lab in labels[1:]:
        run = frames[lab].drop_duplicates("id").set_index("id")
        shared = ref.index.intersection(run.index)
        base = {"reference": ref_label, "run": lab}
        recs.append({**base, "by": "all", "group": "all", **paired_stats(ref.loc[shared], run.loc[shared], seed=seed)})
        for by in ("question_type", "length_bucket"):
            if by not in ref.columns:
                continue
            keys = ref.loc[shared, by].astype(str)
            groups = sorted(keys.unique(), key=lambda k: order.index(k) if by == "length_bucket" and k in order else 0)
            for g in groups:
                ids = keys.index[keys == g]
                recs.append({**base, "by": by, "group": g, **paired_stats(ref.loc[ids], run.loc[ids], seed=seed)})
    return pd.DataFrame(recs, columns=PAIRED_COLUMNS)


def paired_markdown(table: pd.DataFrame) -> str:
    """The report's section: one table per compared run."""
    from rlm_rig.experiments.analysis.render import fmt as _fmt, md_table

    if table.empty:
        return "_one run, or no shared ids: nothing to pair_"
    out = []
    for (ref, run), t in table.groupby(["reference", "run"], sort=False):
        out.append(f"\n**{run}** minus **{ref}** (shared ids: {int(t.iloc[0].n_shared)})\n")
        rows = [[r.by, r.group, str(int(r.n_shared)), _fmt(r.mean_reference), _fmt(r.mean_run),
                 f"{_fmt(r.diff, '+.3f')} [{_fmt(r.ci_low, '+.3f')}, {_fmt(r.ci_high, '+.3f')}]",
                 f"{_fmt(r.exact_reference)} / {_fmt(r.exact_run)}", f"{int(r.only_reference_exact)} / {int(r.only_run_exact)}",
                 _fmt(r.mcnemar_p, ".4f")] for r in t.itertuples()]
        out.append(md_table(["by", "group", "n", "mean ref", "mean run", "diff [95% CI]", "exact ref / run",
                             "exact only ref / only run", "McNemar exact p"], rows))
    return "\n".join(out)


def plot_score_vs_length(frames: dict[str, pd.DataFrame], unit: str, path: Any, *, seed: int = DEFAULT_SEED) -> Any:
    """One line per run: mean score per context-length bin with its 95% bootstrap CI, drawn at the
    bin's median length (log x); the points are the examples."""
    from rlm_rig.experiments.analysis.render import figure as _figure, save as _save

    col = "context_tokens" if unit == "tokens" else "context_chars"
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    drawn = False
    for i, (label, df) in enumerate(frames.items()):
        d = df[[col, "score", "length_bucket"]].dropna()
        d = d[d[col] > 0]
        if d.empty:
            continue
        drawn = True
        color = f"C{i % 10}"
        ax.scatter(d[col], d["score"], s=10, alpha=0.25, color=color)
        xs, ys, los, his = [], [], [], []
        for _, g in sorted(d.groupby("length_bucket"), key=lambda kv: float(kv[1][col].median())):
            lo, hi = bootstrap_ci(g["score"].to_numpy(float), seed=seed)
            xs.append(float(g[col].median()))
            ys.append(float(g["score"].mean()))
            los.append(lo)
            his.append(hi)
        y = np.array(ys)
        yerr = np.vstack([np.nan_to_num(y - np.array(los)), np.nan_to_num(np.array(his) - y)]).clip(min=0)
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, color=color, label=label)
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(f"context length ({unit}{' of the worker tokenizer' if unit == 'tokens' else ''})")
    ax.set_ylabel("official score")
    ax.set_title("Score vs context length (lines: mean per length bin, 95% bootstrap CI)")
    ax.legend(fontsize=7)
    return _save(fig, path)
