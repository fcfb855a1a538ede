"""``rlm-rig report RUN [RUN...]``: Markdown + CSV tables + PNG plots comparing run folders.

Everything is recomputed from ``samples.jsonl`` and the trajectories, so a report on a run that is
still going (or was killed) shows what has finished. Each run is one column, labelled
``folder (method, depth max_depth)``. The files written into ``out_dir``:

* ``report.md``: all the tables below, the plots, definitions, and warnings (missing trajectories).
* ``runs.csv`` (one row per run), ``comparison.csv`` (one row per metric, one column per run),
  ``by_question_type.csv``, ``by_episodes.csv``, ``by_length.csv`` (long format: run, group, n,
  mean, CI, exact accuracy), ``tokens.csv``, ``strategies.csv``, ``failures.csv``, ``samples.csv``
  (every per-sample figure, for your own analysis).
* ``score_by_run.png``, ``score_by_question_type.png``, ``score_vs_length.png``,
  ``strategies.png``, ``failures.png``.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rlm_rig.records.outdirs import claim, relocate, staged
from rlm_rig.experiments.analysis.failures import FAILURE_PRECEDENCE
from rlm_rig.experiments.analysis.metrics import (
    ALL_DEPTH_TOKEN_COLUMNS,
    BOOTSTRAP_RESAMPLES,
    TOKEN_COLUMNS,
    DEFAULT_SEED,
    RunData,
    add_length_buckets,
    group_scores,
    length_bucket_order,
    length_unit,
    load_run,
    sample_frame,
    summarize_frame,
    summarize_run,
)
from rlm_rig.experiments.analysis.render import fmt as _fmt, figure as _figure, md_table, save as _save, yerr as _yerr
from rlm_rig.experiments.analysis.paired import paired_markdown, paired_table, plot_score_vs_length
from rlm_rig.experiments.analysis.metrics import worker_failure_summary
from rlm_rig.experiments.analysis.code_strategies import NO_CONTROLLER, STRATEGY_PRECEDENCE
from rlm_rig.records.runlog import RunFolder

# (key in summarize_frame, row label, format)
COMPARISON_METRICS: list[tuple[str, str, str]] = [
    ("n", "n examples", "d"),
    ("mean_score", "accuracy (mean official score)", ".3f"),
    ("ci_low", "95% CI low", ".3f"),
    ("ci_high", "95% CI high", ".3f"),
    ("exact_accuracy", "exact accuracy (score == 1)", ".3f"),
    ("mean_lenient_score", "mean lenient score", ".3f"),
    ("avg_sub_calls", "sub_calls / example (root)", ".2f"),
    ("avg_sub_calls_all_depths", "sub_calls / example (all depths)", ".2f"),
    ("code_success_rate", "code execution success rate", ".3f"),
    ("avg_cells", "cells / example", ".2f"),
    ("mean_wall_s", "runtime / example, mean (s)", ".1f"),
    ("median_wall_s", "runtime / example, median (s)", ".1f"),
    ("controller_tokens_in", "controller tokens in / example", ".0f"),
    ("controller_tokens_out", "controller tokens out / example", ".0f"),
    ("worker_tokens_in", "worker tokens in / example", ".0f"),
    ("worker_tokens_out", "worker tokens out / example", ".0f"),
    ("mean_utilization", "context utilization (root spans)", ".3f"),
    ("mean_leaf_utilization", "context utilization (worker-read spans)", ".3f"),
    ("n_failed", "examples with score < 1", "d"),
    ("n_format_only", "of which failed on the answer format alone (lenient score 1)", "d"),
]
__all__ = ["write_report", "summarize_run", "COMPARISON_METRICS"]



def _score_cell(mean: float, lo: float, hi: float, n: int) -> str:
    if n == 0:
        return "–"
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}] (n={n})"


# ----------------------------------------------------------------------------- tables
def _unique_labels(runs: list[RunData]) -> None:
    """Two runs with the same folder name (different parents) get their parent prefixed."""
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.path.parent.name}/{r.label}"
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.label) > 1:
            r.label = f"{r.label} #{i + 1}"


def _grouped(frames: dict[str, pd.DataFrame], by: str, order: list[str] | None = None) -> pd.DataFrame:
    parts = []
    for label, df in frames.items():
        g = group_scores(df, by)
        g.insert(0, "run", label)
        parts.append(g)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    out = out.rename(columns={"group": by})
    if order and not out.empty:
        rank = {k: i for i, k in enumerate(order)}
        out = out.sort_values(by=[by], key=lambda s: s.map(lambda k: rank.get(k, len(rank))), kind="stable")
    return out.reset_index(drop=True)


def _wide_scores(long: pd.DataFrame, by: str, labels: list[str], order: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    groups = list(dict.fromkeys(long[by])) if not long.empty else []
    if order:
        groups.sort(key=lambda k: order.index(k) if k in order else len(order))
    rows = []
    for g in groups:
        row = [g]
        for lab in labels:
            hit = long[(long[by] == g) & (long["run"] == lab)]
            row.append("–" if hit.empty else _score_cell(*hit.iloc[0][["mean_score", "ci_low", "ci_high", "n"]]))
        rows.append(row)
    return [by, *labels], rows


def _label_counts(frames: dict[str, pd.DataFrame], col: str, order: Sequence[str], only_failed: bool) -> pd.DataFrame:
    """Primary and multi-label counts of a label column, per run."""
    recs = []
    for label, df in frames.items():
        sub = df[df["score"] < 1.0] if only_failed else df
        label_sets = [set(str(s).split(";")) - {""} for s in sub[f"{col}_labels"].fillna("")]
        for name in order:
            prim = sub[sub[col] == name]
            with_label = sum(name in ls for ls in label_sets) if name != NO_CONTROLLER else len(prim)
            if len(prim) == 0 and with_label == 0:
                continue
            recs.append(
                {
                    "run": label,
                    col: name,
                    "n_primary": len(prim),
                    "n_with_label": with_label,
                    "share_primary": len(prim) / len(sub) if len(sub) else math.nan,
                    "mean_score_primary": float(prim["score"].mean()) if len(prim) else math.nan,
                }
            )
    return pd.DataFrame(recs, columns=["run", col, "n_primary", "n_with_label", "share_primary", "mean_score_primary"])


# ----------------------------------------------------------------------------- plots
def _plot_score_by_run(runs_df: pd.DataFrame, path: Path) -> Path:
    fig = _figure(max(5.0, 1.3 * len(runs_df) + 2), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(runs_df))
    means = runs_df["mean_score"].to_numpy(float)
    ax.bar(x, np.nan_to_num(means), yerr=_yerr(means, runs_df["ci_low"].to_numpy(float), runs_df["ci_high"].to_numpy(float)),
           capsize=4, color="tab:blue", alpha=0.8)
    for xi, m, n in zip(x, means, runs_df["n"]):
        ax.text(xi, 0.01, f"n={int(n)}", ha="center", va="bottom", fontsize=8, color="white" if m > 0.08 else "black")
    ax.set_xticks(x, runs_df["run"], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean official score")
    ax.set_title("Score by run (95% bootstrap CI)")
    return _save(fig, path)


def _plot_grouped(long: pd.DataFrame, by: str, value: str, labels: list[str], path: Path, *, title: str,
                  ylabel: str, order: Sequence[str] | None = None, with_ci: bool = False) -> Path:
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}  # one colour per run in every plot
    if not long.empty:
        long = long[long[value].notna() & (long[value] != 0)] if not with_ci else long
        labels = [lab for lab in labels if lab in set(long["run"])]  # runs with nothing to show: no legend entry
    groups = list(dict.fromkeys(long[by])) if not long.empty else []
    if order:
        groups.sort(key=lambda k: list(order).index(k) if k in order else len(order))
    fig = _figure(min(16.0, max(6.0, 0.6 * len(groups) * max(1, len(labels)) ** 0.5 + 3)), 4.8)
    ax = fig.add_subplot()
    if not groups:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(groups))
    for i, lab in enumerate(labels):
        sub = long[long["run"] == lab].set_index(by).reindex(groups)
        vals = sub[value].to_numpy(float)
        kw: dict[str, Any] = {}
        if with_ci:
            kw = {"yerr": _yerr(vals, sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float)), "capsize": 3}
        # a group this run has no examples of stays empty (NaN), unlike a real score of 0
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, label=lab, color=colors[lab], **kw)
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if with_ci:
        ax.set_ylim(0, 1.05)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    ax.legend(fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------- the report
def write_report(run_dirs: list[Path], out_dir: Path, *, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Compare the runs in ``run_dirs`` and write report.md, CSV tables and PNG plots into ``out_dir``.

    Returns ``{"report": path, "tables": {name: path}, "plots": {name: path}, "runs": [per-run
    summary], "warnings": [...]}``.
    """
    if not run_dirs:
        raise ValueError("report needs at least one run folder")
    dest = claim(out_dir, "report", inputs=run_dirs, replace_own=True)  # before any reading: a bad --out is one line
    runs = [load_run(Path(d)) for d in run_dirs]
    _unique_labels(runs)
    with staged(dest, "report", replace_own=True) as tmp:
        res = _write(runs, tmp, seed)
    return relocate(res, tmp, dest.path)


def _write(runs: list[RunData], out_dir: Path, seed: int) -> dict[str, Any]:
    labels = [r.label for r in runs]
    frames = {r.label: sample_frame(r) for r in runs}
    unit = length_unit(pd.concat(frames.values(), ignore_index=True))
    frames = {k: add_length_buckets(v, unit) for k, v in frames.items()}
    summaries = [{"run": r.label, "path": str(r.path), "method": r.method, "max_depth": r.max_depth,
                  "status": r.status, **summarize_frame(frames[r.label], seed=seed)} for r in runs]
    tables = _tables(runs, frames, summaries, unit, seed)
    table_paths = {}
    for name, df in tables.items():
        table_paths[name] = out_dir / f"{name}.csv"
        df.to_csv(table_paths[name], index=False)
    plots = _plots(tables, frames, labels, unit, out_dir, seed)
    warnings = _warnings(runs)
    md = _markdown(runs, summaries, labels, frames, tables, unit, warnings, seed)
    md = md.replace("\n## Tokens\n", _paired_and_worker_md(tables["paired"], tables["worker_failures"], unit)
                    + "\n## Tokens\n", 1)
    from rlm_rig.experiments.analysis.boundary import report_sections

    boundary_md, boundary_plots = report_sections(runs, out_dir)  # the loss ledger and worker confidence, where possible
    md += "\n".join(boundary_md) + "\n"
    plots.update(boundary_plots)
    report = out_dir / "report.md"
    report.write_text(md)
    return {
        "report": report,
        "tables": table_paths,
        "plots": plots,
        "runs": [
            {"label": s["run"], "path": s["path"], "status": s["status"], "n": s["n"], "mean_score": s["mean_score"],
             "ci95": [s["ci_low"], s["ci_high"]]}
            for s in summaries
        ],
        "warnings": warnings,
    }


def _warnings(runs: list[RunData]) -> list[str]:
    """What a reader of the figures must know: missing trajectories, unfinished runs, unscored samples."""
    warnings = [f"{r.label}: {w}" for r in runs for w in r.warnings]
    for r in runs:
        if not r.rows:
            warnings.append(f"{r.label}: no finished samples in {RunFolder(r.path).samples_path}")
        if r.status not in ("complete", "unknown"):
            warnings.append(f"{r.label}: results.json says status={r.status!r}; figures cover the finished samples only")
        if r.invalid_rows:
            warnings.append(f"{r.label}: {len(r.invalid_rows)} sample(s) hit by worker failures are not scored; "
                            f"rlm-rig eval --resume {r.path} redoes them")
    return warnings


def _tables(runs: list[RunData], frames: dict[str, pd.DataFrame], summaries: list[dict[str, Any]], unit: str,
            seed: int) -> dict[str, pd.DataFrame]:
    """Every table of the report, by CSV name."""
    labels = [r.label for r in runs]
    comparison = pd.DataFrame(
        [[title, *[summaries[i][key] for i in range(len(runs))]] for key, title, _ in COMPARISON_METRICS],
        columns=["metric", *labels],
    )
    token_cols = TOKEN_COLUMNS + ALL_DEPTH_TOKEN_COLUMNS
    tokens = pd.DataFrame(
        [
            {"run": lab, "n": len(df),
             **{f"mean_{c}": float(df[c].mean()) if len(df) else math.nan for c in token_cols},
             **{f"total_{c}": int(df[c].sum()) for c in token_cols}}
            for lab, df in frames.items()
        ]
    )
    failures = _label_counts(frames, "failure", FAILURE_PRECEDENCE, only_failed=True)
    return {
        "runs": pd.DataFrame(summaries),
        "comparison": comparison,
        "by_question_type": _grouped(frames, "question_type"),
        "by_episodes": _grouped(frames, "n_episodes"),
        "by_length": _grouped(frames, "length_bucket", order=length_bucket_order(unit)),
        "tokens": tokens,
        "strategies": _label_counts(frames, "strategy", [*STRATEGY_PRECEDENCE, NO_CONTROLLER], only_failed=False),
        "failures": failures.rename(columns={"share_primary": "share_of_failed"}),
        "paired": paired_table(frames, unit=unit, seed=seed),
        "worker_failures": _worker_table(runs),
        "samples": pd.concat(frames.values(), ignore_index=True),
    }


def _plots(tables: dict[str, pd.DataFrame], frames: dict[str, pd.DataFrame], labels: list[str], unit: str,
           out_dir: Path, seed: int) -> dict[str, Path]:
    strategies, failures = tables["strategies"], tables["failures"]
    return {
        "score_by_run": _plot_score_by_run(tables["runs"], out_dir / "score_by_run.png"),
        "score_by_question_type": _plot_grouped(
            tables["by_question_type"], "question_type", "mean_score", labels, out_dir / "score_by_question_type.png",
            title="Score by question type (95% bootstrap CI)", ylabel="mean official score", with_ci=True),
        "score_vs_length": plot_score_vs_length(frames, unit, out_dir / "score_vs_length.png", seed=seed),
        "strategies": _plot_grouped(
            strategies[strategies["strategy"] != NO_CONTROLLER], "strategy", "n_primary", labels,
            out_dir / "strategies.png", title="Primary controller strategy", ylabel="examples",
            order=STRATEGY_PRECEDENCE),
        "failures": _plot_grouped(
            failures, "failure", "n_primary", labels, out_dir / "failures.png",
            title="Primary failure mode (examples with score < 1)", ylabel="examples", order=FAILURE_PRECEDENCE),
    }


def _markdown(runs: list[RunData], summaries: list[dict[str, Any]], labels: list[str], frames: dict[str, pd.DataFrame],
              tables: dict[str, pd.DataFrame], unit: str, warnings: list[str], seed: int) -> str:
    """report.md: one section per kind of figure, each with the words a reader needs to trust it."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out: list[str] = [f"# rlm-rig report\n\nGenerated {now} from {len(runs)} run(s).\n"]
    out.append(md_table(
        ["run", "folder", "method", "max_depth", "status", "n"],
        [[r.label, str(r.path), r.method, _fmt(r.max_depth, "d") if r.max_depth is not None else "?", r.status,
          str(len(r.rows))] for r in runs],
    ))
    out += _md_comparison(summaries, labels, seed)
    out += _md_breakdowns(tables, labels, unit)
    out += _md_tokens(tables["tokens"])
    out += _md_utilization(summaries, labels, frames)
    out += _md_strategies(tables["strategies"], labels)
    out += _md_failures(tables["failures"], labels)
    if warnings:
        out.append("\n## Warnings\n")
        out.extend(f"- {w}" for w in warnings)
    return "\n".join(out) + "\n"


def _md_comparison(summaries: list[dict[str, Any]], labels: list[str], seed: int) -> list[str]:
    out: list[str] = []
    out.append("\n## Comparison\n")
    out.append(
        f"Accuracy is the mean official score; the 95% CI is a percentile bootstrap of the mean "
        f"({BOOTSTRAP_RESAMPLES} resamples, seed {seed}). Exact accuracy counts score == 1. Code execution success = cells with no "
        "error, no timeout and no kernel restart / all cells (all depths; from the rows' counts where a trajectory "
        "is missing). Runtime is the row's wall_s.\n"
    )
    out.append(md_table(["metric", *labels],
                        [[title, *[_fmt(s[key], spec) for s in summaries]] for key, title, spec in COMPARISON_METRICS]))
    out.append("\n![score by run](score_by_run.png)\n")

    return out


def _md_breakdowns(tables: dict[str, pd.DataFrame], labels: list[str], unit: str) -> list[str]:
    out: list[str] = []
    for title, long, by, order, img in [
        ("Score by question type", tables["by_question_type"], "question_type", None, "score_by_question_type.png"),
        ("Score by episode count (len(episodes))", tables["by_episodes"], "n_episodes", None, None),
        (f"Score by context length ({unit})", tables["by_length"], "length_bucket", length_bucket_order(unit), "score_vs_length.png"),
    ]:
        out.append(f"\n### {title}\n")
        out.append("Cells: mean [95% CI] (n).\n")
        header, rows = _wide_scores(long, by, labels, order)
        out.append(md_table(header, rows) if rows else "_no data_")
        if img:
            out.append(f"\n![{title}]({img})\n")

    return out


def _md_tokens(tokens: pd.DataFrame) -> list[str]:
    out: list[str] = []
    out.append(
        "\n## Tokens\n\nMeans per example (totals in tokens.csv). *Row*: the sample rows' counts (the root "
        "trajectory). *All depths*: summed over nested trajectories too (the row's figure where there is no "
        "trajectory); with max_depth 1 the two agree.\n"
    )
    out.append(md_table(
        ["run", "n", "controller in", "controller out", "worker in", "worker out",
         "controller in (all depths)", "controller out (all depths)", "worker in (all depths)", "worker out (all depths)"],
        [[r.run, str(r.n), *[_fmt(getattr(r, f"mean_{c}"), ".0f") for c in TOKEN_COLUMNS + ALL_DEPTH_TOKEN_COLUMNS]]
         for r in tokens.itertuples()],
    ))

    return out


def _md_utilization(summaries: list[dict[str, Any]], labels: list[str], frames: dict[str, pd.DataFrame]) -> list[str]:
    out: list[str] = []
    out.append(
        "\n## Context utilization\n\nFraction of the document's characters inside at least one sub_call chunk "
        "(union of `[chunk_start, chunk_end)` over `doc_chars`; chunks not found verbatim in the document have no "
        "span and do not count). *Root*: spans the top-level controller handed down. *Worker-read*: spans that "
        "reached a worker model, with nested trajectories' spans shifted by their parent chunk's start.\n"
    )
    out.append(md_table(
        ["run", "mean (root)", "mean (worker-read)", "examples with a trajectory"],
        [[lab, _fmt(s["mean_utilization"]), _fmt(s["mean_leaf_utilization"]), str(int(frames[lab]["has_trajectory"].sum()))]
         for lab, s in zip(labels, summaries)],
    ))

    return out


def _md_strategies(strategies: pd.DataFrame, labels: list[str]) -> list[str]:
    out: list[str] = []
    out.append(
        "\n## Strategies\n\nClassified from the AST of the root controller's cells (see experiments/analysis/code_strategies.py). "
        "Each example gets every label that applies and one primary label, the first present in: "
        + ", ".join(f"`{s}`" for s in STRATEGY_PRECEDENCE)
        + f". `{NO_CONTROLLER}`: no controller turns (baselines). Cells: primary count / with the label "
        "(mean score of the primary group).\n"
    )
    out.append(_count_table(strategies, "strategy", [*STRATEGY_PRECEDENCE, NO_CONTROLLER], labels))
    out.append("\n![strategies](strategies.png)\n")

    return out


def _md_failures(failures: pd.DataFrame, labels: list[str]) -> list[str]:
    out: list[str] = []
    out.append(
        "\n## Failure modes (examples with score < 1)\n\nEach failed example gets every label that applies and one "
        "primary label, the first present in this order (causes before symptoms; see experiments/analysis/failures.py): "
        + " > ".join(f"`{f}`" for f in FAILURE_PRECEDENCE)
        + ". Cells: primary count / with the label (mean score of the primary group).\n"
    )
    out.append(_count_table(failures, "failure", list(FAILURE_PRECEDENCE), labels))
    out.append("\n![failure modes](failures.png)\n")

    return out


def _worker_table(runs: list[RunData]) -> pd.DataFrame:
    """Per run: samples kept out of the scores, failed sub_calls by kind, worker restarts."""
    recs = []
    for r in runs:
        w = worker_failure_summary(r)
        events = r.results.get("worker_events") or []
        recs.append({
            "run": r.label,
            "samples_not_scored_worker": w["n_worker_invalid"],
            "failed_sub_calls": w["n_sub_call_failures"],
            "by_kind": "; ".join(f"{k}: {v}" for k, v in sorted(w["sub_call_failures"].items())) or "–",
            "worker_restarts": sum(1 for e in events if e.get("event") == "restarted"),
            "worker_events": "; ".join(f"{e.get('event')}: {e.get('detail')}" for e in events)[:2000],
        })
    return pd.DataFrame(recs, columns=["run", "samples_not_scored_worker", "failed_sub_calls", "by_kind",
                                       "worker_restarts", "worker_events"])


def _paired_and_worker_md(paired: pd.DataFrame, worker: pd.DataFrame, unit: str) -> str:
    out = [
        "\n## Paired comparisons (shared ids)\n",
        "Each run against the first one, on the ids both hold: the mean of per-id score differences (run minus "
        "reference) with a 95% percentile bootstrap CI over ids, and McNemar's exact test on exact accuracy "
        f"(two-sided binomial test of the discordant pairs). Groups: question_type and context length ({unit}).\n",
        paired_markdown(paired),
        "\n## Worker failures\n",
        "Samples whose sub_calls failed because the worker was down (error=worker) are not scored anywhere in this "
        "report; `--resume` redoes them. Failed sub_calls count every depth, by kind (worker: server down or timed "
        "out; context_length / request: the server refused the request; nested: a nested run failed).\n",
        md_table(["run", "samples not scored (worker)", "failed sub_calls", "by kind", "worker restarts"],
                 [[w.run, str(w.samples_not_scored_worker), str(w.failed_sub_calls), w.by_kind, str(w.worker_restarts)]
                  for w in worker.itertuples()]),
    ]
    return "\n".join(out) + "\n"


def _count_table(counts: pd.DataFrame, col: str, order: list[str], labels: list[str]) -> str:
    present = [k for k in order if k in set(counts[col])]
    if not present:
        return "_none_"
    rows = []
    for k in present:
        row = [k]
        for lab in labels:
            hit = counts[(counts[col] == k) & (counts["run"] == lab)]
            if hit.empty:
                row.append("0")
            else:
                h = hit.iloc[0]
                row.append(f"{int(h.n_primary)} / {int(h.n_with_label)} ({_fmt(h.mean_score_primary)})")
        rows.append(row)
    return md_table([col, *labels], rows)
