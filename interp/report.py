"""One folder that answers "where was the count lost?": tables (CSV + Markdown) and plots.

It only reads what capture / patch / probe wrote (any may be missing) plus the run's trajectories
for the controller-aggregation check, so it is cheap and needs no model.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .aggregation import diagnose_aggregation
from .capture import REPLAY_FILE
from .jobs import AGG_FILE, PROBE_FILE
from .plots import heatmaps, probe_plot
from .replay import ReplayResult, agreement_summary
from .runs import load_gold_file


def _md(df: pd.DataFrame, max_rows: int = 40) -> str:
    if df.empty:
        return "_(empty)_\n"
    d = df.head(max_rows)
    cols = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in d.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"


def build_report(
    run_dir: str | Path, out_dir: str | Path, *, capture_dir: str | Path | None = None,
    patch_dir: str | Path | None = None, probe_dir: str | Path | None = None, gold_file: str | Path | None = None,
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# interp report: {Path(run_dir).name}\n"]
    sections: dict[str, str] = {}

    if capture_dir and (Path(capture_dir) / REPLAY_FILE).exists():
        rep = pd.read_parquet(Path(capture_dir) / REPLAY_FILE)
        if not rep.empty:
            rep.to_csv(out / "replay_agreement.csv", index=False)
            summ = agreement_summary([ReplayResult(**r) for r in rep.to_dict("records")])
            (out / "replay_agreement.json").write_text(json.dumps(summ, indent=1))
            md += ["## Replay agreement (transformers greedy vs recorded vLLM answer)\n",
                   f"n={summ['n']}, exact match {summ['exact_match_rate']:.3f}, no diverging token "
                   f"{summ['token_match_rate']:.3f}, prefix agreement {summ['prefix_match_rate']:.3f}, "
                   f"median first divergence {summ['median_first_divergence']}\n",
                   _md(rep[["sample", "sub_call", "exact_match", "first_divergence", "prefix_match", "truncated",
                            "recorded_tokens", "replayed_tokens"]]), ""]
            sections["replay"] = "replay_agreement.csv"

    if patch_dir and (Path(patch_dir) / AGG_FILE).exists():
        agg = pd.read_parquet(Path(patch_dir) / AGG_FILE)
        agg.to_csv(out / "patching_agg.csv", index=False)
        pngs = heatmaps(agg, out)
        md += ["## Activation patching (normalized: 0 = corrupt, 1 = clean; mean and CI over pairs)\n"]
        md += [f"![{p.stem}]({p.name})\n" for p in pngs]
        md += [_md(agg.sort_values("mean", ascending=False)), ""]
        sections["patching"] = "patching_agg.csv"

    if probe_dir and (Path(probe_dir) / PROBE_FILE).exists():
        pt = pd.read_parquet(Path(probe_dir) / PROBE_FILE)
        pt.to_csv(out / "probes.csv", index=False)
        png = probe_plot(pt, out / "probe_accuracy.png")
        md += ["## Probes: count decodable per layer vs the worker's text answer\n",
               "rnv_rate = probe right while the worker's answer is wrong (represented, not verbalized).\n",
               f"![probes]({png.name})\n", _md(pt), ""]
        sections["probes"] = "probes.csv"

    try:
        per_sample, per_sub = diagnose_aggregation(run_dir, load_gold_file(gold_file) if gold_file else None)
    except ValueError as exc:
        md += [f"## Controller aggregation\n\n(skipped: {exc})\n"]
    else:
        per_sample.to_csv(out / "aggregation_by_sample.csv", index=False)
        per_sub.to_csv(out / "aggregation_by_sub_call.csv", index=False)
        counts = per_sample["category"].value_counts().rename_axis("category").reset_index(name="n")
        md += ["## Controller aggregation (worker answers vs chunk gold vs final answer)\n", _md(counts), "",
               _md(per_sample), ""]
        sections["aggregation"] = "aggregation_by_sample.csv"

    (out / "README.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps({"sections": sections}, indent=1))
    return out
