"""Per-sample and per-run figures from a run folder: scores with bootstrap CIs, sub_calls, code
execution success, runtime, tokens and context utilization.

A run folder is read as written by :class:`records.runlog.RunFolder`; a run still in
progress (or killed) is fine: the torn last line of ``samples.jsonl`` is dropped and a missing
trajectory only costs that row its trajectory-derived figures (the row's own counts stand in).

Context utilization, per sample: the fraction of the document's characters that lie inside at
least one sub_call chunk (the union of the ``[chunk_start, chunk_end)`` spans over ``doc_chars``).
A chunk whose text was not found verbatim in the document has no span and does not count.
Two readings:

* ``utilization``: the spans the root handed down (every root sub_call, nested or not).
* ``leaf_utilization``: the spans a worker model actually read. A nested trajectory's spans are
  relative to its own document, which is its parent's chunk, so they are shifted by the parent's
  ``chunk_start`` (and clipped to the parent chunk); a nested run under a chunk without a span
  cannot be placed and is left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from rlm_rig.records.trajectory import SampleRow, Trajectory
from rlm_rig.records.runlog import RunFolder, is_worker_invalid
from rlm_rig.records.stats import bootstrap_means
from rlm_rig.experiments.analysis.failures import classify_failure, count_format_errors, model_sub_calls
from rlm_rig.experiments.analysis.code_strategies import classify_trajectory

BOOTSTRAP_RESAMPLES = 2000
DEFAULT_SEED = 0
# Group key for a missing question_type / episode list / length (not "n/a": pandas reads that back as NaN).
MISSING = "unknown"


# ----------------------------------------------------------------------------- statistics
def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean. Deterministic for a seed; ``(x, x)`` for one value,
    ``(nan, nan)`` for none."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    means = bootstrap_means(x, n_boot=n_resamples, seed=seed)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return (float(lo), float(hi))


# ----------------------------------------------------------------------------- trajectories
def covered_chars(spans: Iterable[tuple[int, int]], length: int) -> int:
    """Characters of ``[0, length)`` inside the union of half-open spans (overlaps count once)."""
    clipped = sorted((max(0, s), min(length, e)) for s, e in spans if min(length, e) > max(0, s))
    total = 0
    cur_s = cur_e = None
    for s, e in clipped:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s  # type: ignore[operator]
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s  # type: ignore[operator]
    return total


def root_spans(traj: Trajectory) -> list[tuple[int, int]]:
    return [(sc.chunk_start, sc.chunk_end) for sc in traj.sub_calls if sc.chunk_start is not None and sc.chunk_end is not None]


def leaf_spans(traj: Trajectory, offset: int = 0, limit: int | None = None) -> list[tuple[int, int]]:
    """Spans read by a worker, in the coordinates of the root document (see module doc)."""
    out: list[tuple[int, int]] = []
    for sc in traj.sub_calls:
        if sc.chunk_start is None or sc.chunk_end is None:
            continue
        s, e = offset + sc.chunk_start, offset + sc.chunk_end
        if limit is not None:
            s, e = max(s, offset), min(e, limit)
        if sc.nested_trajectory is None:
            out.append((s, e))
        else:
            out.extend(leaf_spans(sc.nested_trajectory, offset=s, limit=e))
    return out


def utilization(traj: Trajectory | None) -> float:
    if traj is None or traj.doc_chars <= 0:
        return math.nan
    return covered_chars(root_spans(traj), traj.doc_chars) / traj.doc_chars


def leaf_utilization(traj: Trajectory | None) -> float:
    if traj is None or traj.doc_chars <= 0:
        return math.nan
    return covered_chars(leaf_spans(traj), traj.doc_chars) / traj.doc_chars


def cell_ok(cell: Any) -> bool:
    """A cell 'executed successfully': no error, not timed out, kernel not restarted."""
    return cell.error is None and not cell.timed_out and not cell.restarted


# ----------------------------------------------------------------------------- run folders
@dataclass
class RunData:
    path: Path
    name: str
    method: str
    max_depth: int | None
    status: str
    config: dict[str, Any]
    results: dict[str, Any]
    rows: list[SampleRow]
    trajectories: dict[str, Trajectory | None]
    warnings: list[str] = field(default_factory=list)
    label: str = ""
    # rows hit by worker failures (error="worker"): not valid answers, kept out of every score
    invalid_rows: list[SampleRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.label:
            depth = "?" if self.max_depth is None else str(self.max_depth)
            self.label = f"{self.name} ({self.method}, depth {depth})"


def load_run(run_dir: str | Path, *, trajectories: bool = True) -> RunData:
    """Read one run folder through the run log. Rows keep the first line of each id."""
    path = Path(run_dir)
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a run folder (no such directory)")
    folder = RunFolder(path)
    if not folder.is_run():
        raise FileNotFoundError(f"{path} is not a run folder: no samples.jsonl, config.yaml or trajectory.json")
    config = folder.read_config()
    res = folder.read_results()
    results = res.model_dump(exclude_unset=True) if res is not None else {}
    spec = folder.read_spec()
    picked = folder.sample_rows()
    rows = [r for r in picked if not is_worker_invalid(r)]
    invalid = [r for r in picked if is_worker_invalid(r)]
    warnings: list[str] = []
    trajs: dict[str, Trajectory | None] = {}
    for row in rows:
        trajs[row.id] = None
        tp = folder.trajectory_file(row) if trajectories else None
        if tp is None:
            continue
        if not tp.exists():
            warnings.append(f"{row.id}: trajectory {row.trajectory} is missing")
            continue
        try:
            trajs[row.id] = Trajectory.load(tp)
        except ValueError as e:
            warnings.append(f"{row.id}: trajectory {row.trajectory} does not load ({str(e).splitlines()[0]})")
    methods = sorted({r.method for r in rows}) or [
        (spec.method if spec else None) or (config.get("eval") or {}).get("method") or "?"]
    depth = (config.get("rlm") or {}).get("max_depth")
    return RunData(
        path=path,
        name=path.name,
        method="+".join(methods),
        max_depth=int(depth) if depth is not None else None,
        status=str(results.get("status", "unknown")),
        config=config,
        results=results,
        rows=rows,
        trajectories=trajs,
        warnings=warnings,
        invalid_rows=invalid,
    )


TOKEN_COLUMNS = ["controller_tokens_in", "controller_tokens_out", "worker_tokens_in", "worker_tokens_out"]
# Tokens over every depth, recomputed from the trajectories (rows written by older runners count the root only).
ALL_DEPTH_TOKEN_COLUMNS = [f"{c}_all_depths" for c in TOKEN_COLUMNS]

SAMPLE_COLUMNS = [
    "run", "run_folder", "id", "dataset", "method", "question_type", "n_episodes", "context_chars", "context_tokens",
    "score", "exact", "lenient_score", "has_answer", "n_sub_calls", "n_sub_calls_all_depths", "n_cells",
    "n_cells_ok", "wall_s", "controller_tokens_in", "controller_tokens_out", "worker_tokens_in",
    "worker_tokens_out", *ALL_DEPTH_TOKEN_COLUMNS, "utilization", "leaf_utilization", "max_depth_reached", "has_trajectory",
    "n_format_errors", "strategy", "strategy_labels", "failure", "failure_labels",
]


def sample_frame(run: RunData) -> pd.DataFrame:
    """One row per sample with every per-sample figure the report uses."""
    recs = []
    for row in run.rows:
        traj = run.trajectories.get(row.id)
        trajs = list(traj.walk()) if traj is not None else []
        if traj is not None:
            n_cells = sum(len(t.cells) for t in trajs)
            n_ok = sum(cell_ok(c) for t in trajs for c in t.cells)
            n_sub_all = sum(len(model_sub_calls(t)) for t in trajs)
            tok_all = [*traj.controller_tokens(), *traj.worker_tokens()]  # these recurse into nested runs
            depth_reached = max(t.depth for t in trajs) + (1 if any(t.sub_calls for t in trajs) else 0)
        else:
            n_cells, n_ok = row.n_cells, row.n_cells - row.n_cell_errors
            n_sub_all, depth_reached = row.n_sub_calls, math.nan
            tok_all = [row.controller_tokens_in, row.controller_tokens_out, row.worker_tokens_in, row.worker_tokens_out]
        strat = classify_trajectory(traj)
        fail = classify_failure(row, traj)
        recs.append(
            {
                "run": run.label,
                "run_folder": run.name,
                "id": row.id,
                "dataset": row.dataset,
                "method": row.method,
                "question_type": row.question_type or MISSING,
                "n_episodes": len(row.episodes) if row.episodes is not None else math.nan,
                "context_chars": row.context_chars,
                "context_tokens": row.context_tokens if row.context_tokens is not None else math.nan,
                "score": float(row.score),
                "exact": float(row.score >= 1.0),
                "lenient_score": row.lenient_score if row.lenient_score is not None else math.nan,
                "has_answer": row.answer is not None,
                "n_sub_calls": row.n_sub_calls,
                "n_sub_calls_all_depths": n_sub_all,
                "n_cells": n_cells,
                "n_cells_ok": n_ok,
                "wall_s": row.wall_s,
                "controller_tokens_in": row.controller_tokens_in,
                "controller_tokens_out": row.controller_tokens_out,
                "worker_tokens_in": row.worker_tokens_in,
                "worker_tokens_out": row.worker_tokens_out,
                **dict(zip(ALL_DEPTH_TOKEN_COLUMNS, tok_all)),
                "utilization": utilization(traj),
                "leaf_utilization": leaf_utilization(traj),
                "max_depth_reached": depth_reached,
                "has_trajectory": traj is not None,
                "n_format_errors": count_format_errors(traj),
                "strategy": strat.primary,
                "strategy_labels": strat.label_string,
                "failure": fail.primary or "",
                "failure_labels": fail.label_string,
            }
        )
    return pd.DataFrame(recs, columns=SAMPLE_COLUMNS)


def _mean(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else math.nan


def summarize_frame(df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The run-level figures of a sample frame (or any subset of one)."""
    lo, hi = bootstrap_ci(df["score"].to_numpy(float), seed=seed)
    n_cells = int(df["n_cells"].sum())
    return {
        "n": int(len(df)),
        "mean_score": _mean(df["score"]),
        "ci_low": lo,
        "ci_high": hi,
        "exact_accuracy": _mean(df["exact"]),
        "mean_lenient_score": _mean(df["lenient_score"]),
        "avg_sub_calls": _mean(df["n_sub_calls"]),
        "avg_sub_calls_all_depths": _mean(df["n_sub_calls_all_depths"]),
        "code_success_rate": (int(df["n_cells_ok"].sum()) / n_cells) if n_cells else math.nan,
        "avg_cells": _mean(df["n_cells"]),
        "mean_wall_s": _mean(df["wall_s"]),
        "median_wall_s": float(df["wall_s"].median()) if len(df) else math.nan,
        "total_wall_s": float(df["wall_s"].sum()),
        "controller_tokens_in": _mean(df["controller_tokens_in"]),
        "controller_tokens_out": _mean(df["controller_tokens_out"]),
        "worker_tokens_in": _mean(df["worker_tokens_in"]),
        "worker_tokens_out": _mean(df["worker_tokens_out"]),
        "mean_utilization": _mean(df["utilization"]),
        "mean_leaf_utilization": _mean(df["leaf_utilization"]),
        "n_failed": int((df["score"] < 1.0).sum()),
        # failed under the official parse, full marks under the lenient one: the answer format alone
        "n_format_only": int(((df["score"] < 1.0) & (df["lenient_score"] >= 1.0)).sum()),
    }


def group_scores(df: pd.DataFrame, by: str, *, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """n, mean score, its CI and exact accuracy per value of column ``by`` (NaN keys become 'unknown')."""
    cols = ["group", "n", "mean_score", "ci_low", "ci_high", "exact_accuracy"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    keys = df[by].map(_group_key)
    out = []
    for key in sorted(keys.unique(), key=_sort_key):
        sub = df[keys == key]
        lo, hi = bootstrap_ci(sub["score"].to_numpy(float), seed=seed)
        out.append([key, len(sub), float(sub["score"].mean()), lo, hi, float(sub["exact"].mean())])
    return pd.DataFrame(out, columns=cols)


def _group_key(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _sort_key(k: str) -> tuple[int, float, str]:
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)


# ----------------------------------------------------------------------------- context length
_TOKEN_EDGES = [0, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000, 1_024_000]


def _fmt_k(n: float) -> str:
    return f"{n / 1_000_000:g}M" if n >= 1_000_000 else f"{n / 1000:g}K" if n >= 1000 else f"{n:g}"


def length_bucket(n: float, unit: str = "tokens") -> str:
    """A power-of-two bucket label such as ``"64K-128K"`` (chars use edges 4x the token edges)."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return MISSING
    scale = 4 if unit == "chars" else 1
    edges = [e * scale for e in _TOKEN_EDGES]
    for lo, hi in zip(edges, edges[1:]):
        if n < hi:
            return f"{_fmt_k(lo)}-{_fmt_k(hi)}"
    return f">={_fmt_k(edges[-1])}"


def length_bucket_order(unit: str = "tokens") -> list[str]:
    scale = 4 if unit == "chars" else 1
    edges = [e * scale for e in _TOKEN_EDGES]
    return [f"{_fmt_k(lo)}-{_fmt_k(hi)}" for lo, hi in zip(edges, edges[1:])] + [f">={_fmt_k(edges[-1])}", MISSING]


def length_unit(df: pd.DataFrame) -> str:
    """Bucket by tokens when every row has a token count, else by characters."""
    if len(df) and df["context_tokens"].notna().all():
        return "tokens"
    return "chars"


def add_length_buckets(df: pd.DataFrame, unit: str) -> pd.DataFrame:
    col = "context_tokens" if unit == "tokens" else "context_chars"
    df = df.copy()
    df["length_bucket"] = [length_bucket(v, unit) for v in df[col]]
    return df


# ----------------------------------------------------------------------------- summaries
def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    return v


def _groups_dict(df: pd.DataFrame, by: str, seed: int) -> dict[str, Any]:
    g = group_scores(df, by, seed=seed)
    return {
        r.group: {"n": int(r.n), "mean_score": r.mean_score, "ci95": [r.ci_low, r.ci_high], "exact_accuracy": r.exact_accuracy}
        for r in g.itertuples()
    }


def summarize_frame_json(df: pd.DataFrame, *, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    s = summarize_frame(df, seed=seed)
    s["ci95"] = [s.pop("ci_low"), s.pop("ci_high")]
    s["by_question_type"] = _groups_dict(df, "question_type", seed)
    s["by_episodes"] = _groups_dict(df, "n_episodes", seed)
    failed = df[df["score"] < 1.0]
    s["failures"] = {k: int(v) for k, v in failed["failure"].value_counts().items()}
    s["strategies"] = {k: int(v) for k, v in df["strategy"].value_counts().items()}
    return _jsonable(s)


def summarize_run(run_dir: str | Path, *, trajectories: bool = True, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """JSON-ready summary for results.json: n, mean official score with a 95% bootstrap CI, exact
    accuracy, the four metrics, tokens, utilization, and per question_type / episode-count scores.
    NaN (no data) is written as null. ``trajectories=False`` skips reading trajectories (faster;
    code success then comes from the rows' cell counts, utilization is null and the strategy is
    "no-controller")."""
    run = load_run(run_dir, trajectories=trajectories)
    return {**summarize_frame_json(sample_frame(run), seed=seed), **worker_failure_summary(run)}


def worker_failure_summary(run: RunData) -> dict[str, Any]:
    """Samples kept out of the scores for worker failures, and failed sub_calls by kind over all rows."""
    kinds: dict[str, int] = {}
    for r in [*run.rows, *run.invalid_rows]:
        for k, v in r.sub_call_failures.items():
            kinds[k] = kinds.get(k, 0) + int(v)
    return {
        "n_worker_invalid": len(run.invalid_rows),
        "worker_invalid_ids": [r.id for r in run.invalid_rows],
        "n_sub_call_failures": sum(kinds.values()),
        "sub_call_failures": kinds,
    }
