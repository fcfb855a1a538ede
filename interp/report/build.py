"""One folder that answers "where was the count lost?": tables (CSV + Markdown) and plots.

It only reads what capture / patch / probe wrote (any may be missing) plus the run's trajectories
for the controller-aggregation check, so it is cheap and needs no model.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rlm_rig.interp.methods.aggregation import diagnose_aggregation
from rlm_rig.interp.methods.faithfulness import FAITHFULNESS_FILE, faithfulness_flags, flag_faithful, summary
from rlm_rig.interp.methods.capture import REPLAY_FILE
from rlm_rig.interp.jobs import AGG_FILE, PROBE_FILE
from rlm_rig.interp.report.plots import heatmaps, probe_plot
from rlm_rig.interp.methods.replay import ReplayResult, agreement_summary
from rlm_rig.interp.outputs import claim_out, staged_dir
from rlm_rig.interp.data.selection import load_gold_file, trajectory_paths
from rlm_rig.interp.report.controller import controller_section
from rlm_rig.interp.report.tables import md_table as _md


def build_report(
    run_dir: str | Path, out_dir: str | Path, *, capture_dir: str | Path | None = None,
    patch_dir: str | Path | None = None, probe_dir: str | Path | None = None, gold_file: str | Path | None = None,
    attribute_dir: str | Path | None = None, heads_dir: str | Path | None = None, lens_dir: str | Path | None = None,
    controller_dir: str | Path | None = None,
) -> Path:
    trajectory_paths(run_dir)  # refuses a folder that is not a run before anything is written
    reads = [d for d in (capture_dir, patch_dir, probe_dir, attribute_dir, heads_dir, lens_dir, controller_dir)
             if d is not None]
    out_dir = claim_out(out_dir, "interp report", [run_dir, *reads])
    with staged_dir(out_dir, "interp report") as tmp:
        _build(run_dir, tmp, capture_dir, patch_dir, probe_dir, gold_file, attribute_dir, heads_dir, lens_dir,
               controller_dir)
    return Path(out_dir)


# long: one block per interp output in report order, each a few lines over a file that may be missing
def _build(run_dir, out: Path, capture_dir, patch_dir, probe_dir, gold_file, attribute_dir, heads_dir, lens_dir,
           controller_dir=None) -> None:
    md = [f"# interp report: {Path(run_dir).name}\n"]
    sections: dict[str, str] = {}
    md += faithfulness_section(capture_dir, out, sections)

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
        md += ["## Activation patching (normalized: 0 = corrupt, 1 = clean)\n",
               "`mean` is a ratio of sums over pairs, sum(LD - LD_corrupt) / sum(LD_clean - LD_corrupt); `den_sum` and "
               "`den_mean` are its denominator; CIs resample chunks; `n_excluded` pairs had |denominator| under the "
               "floor and are left out.\n"]
        md += _patch_provenance(Path(patch_dir))
        md += [f"![{p.stem}]({p.name})\n" for p in pngs]
        cols = [c for c in ("component", "layer", "position", "direction", "n", "n_chunks", "n_excluded", "mean",
                            "ci_low", "ci_high", "den_sum", "den_mean") if c in agg.columns]
        md += [_md(agg.sort_values("mean", ascending=False)[cols]), ""]
        sections["patching"] = "patching_agg.csv"

    if probe_dir and (Path(probe_dir) / PROBE_FILE).exists():
        pt = pd.read_parquet(Path(probe_dir) / PROBE_FILE)
        pt.to_csv(out / "probes.csv", index=False)
        png = probe_plot(pt, out / "probe_accuracy.png")
        md += ["## Probes: count decodable per layer vs the worker's text answer\n",
               "rnv_rate = probe right while the worker's answer is wrong (represented, not verbalized).\n",
               f"![probes]({png.name})\n", _md(pt), ""]
        sections["probes"] = "probes.csv"

    md += maps_sections(attribute_dir, heads_dir, lens_dir, out, sections)
    md += controller_section(controller_dir, out, sections)

    try:
        per_sample, per_sub = diagnose_aggregation(run_dir, load_gold_file(gold_file) if gold_file else None)
    except ValueError as exc:
        md += [f"## Controller aggregation\n\n(skipped: {exc})\n"]
    else:
        per_sub = flag_faithful(per_sub, faithfulness_flags(capture_dir))
        per_sample.to_csv(out / "aggregation_by_sample.csv", index=False)
        per_sub.to_csv(out / "aggregation_by_sub_call.csv", index=False)
        counts = per_sample["category"].value_counts().rename_axis("category").reset_index(name="n")
        md += ["## Controller aggregation (worker answers vs chunk gold vs final answer)\n", _md(counts), "",
               _md(per_sample), ""]
        sections["aggregation"] = "aggregation_by_sample.csv"

    (out / "README.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps({"sections": sections}, indent=1))


def _patch_provenance(patch_dir: Path) -> list[str]:
    meta_path = patch_dir / "patch.json"
    if not meta_path.exists():
        return []
    meta = json.loads(meta_path.read_text())
    ex = meta.get("excluded_small_denominator") or []
    lines = [f"model `{meta.get('model_path', meta.get('model'))}` (sha256 {str(meta.get('model_checksum'))[:16]}…), "
             f"{meta.get('n_pairs')} pairs from {meta.get('n_chunks', '?')} chunks; denominator floor "
             f"{meta.get('min_denominator')} logits.\n"]
    if ex:
        lines.append("Pairs left out for a small denominator: " + ", ".join(
            f"{e['pair']} ({e['denominator']:.2e})" for e in ex) + "\n")
    if meta.get("unfaithful_pairs"):
        lines.append(f"Pairs from sub_calls whose replay is NOT faithful (flagged, kept): {meta['unfaithful_pairs']}\n")
    return lines


# -- sections for faithfulness and the map jobs (attribution, heads, logit lens) ----------------------------
def _copy_pngs(src: Path, out: Path) -> list[str]:
    names = []
    for p in sorted(src.glob("*.png")):
        shutil.copy2(p, out / p.name)
        names.append(p.name)
    return names


def faithfulness_section(capture_dir, out: Path, sections: dict) -> list[str]:
    path = Path(capture_dir) / FAITHFULNESS_FILE if capture_dir else None
    if path is None or not path.exists():
        return []
    df = pd.read_parquet(path)
    if df.empty:
        return []
    df.to_csv(out / "faithfulness.csv", index=False)
    s = summary(df.to_dict("records"))
    (out / "faithfulness.json").write_text(json.dumps(s, indent=1, default=str))
    sections["faithfulness"] = "faithfulness.csv"
    return ["## Faithfulness (teacher-forced replay of the recorded tokens)\n",
            f"n={s['n']} sub_calls, {s['recorded']} with vLLM's recorded ids; faithful {s['faithful']} "
            f"({s['faithful_rate']:.3f}); replay argmax = recorded token everywhere: {s['argmax_agrees_everywhere']}; "
            f"median max|Δlogprob| {s['median_max_abs_dlogprob']}, worst {s['worst_max_abs_dlogprob']}, "
            f"mean of mean|Δlogprob| {s['mean_mean_abs_dlogprob']}.\n",
            _md(df[["sample", "sub_call", "source", "n_tokens", "prompt_match", "max_abs_dlogprob",
                    "mean_abs_dlogprob", "first_argmax_divergence", "faithful"]]), ""]


@dataclass(frozen=True)
class MapSection:
    """One map job's section: its table (Parquet, copied as CSV), title, intro, sort and figures."""

    key: str
    table: str
    title: str
    intro: tuple[str, ...] = ()
    sort_by: str | None = None
    meta: str | None = None  # a JSON file whose "comparison" is shown under the intro


# The map jobs' sections in report order (the report is a loop over this table).
MAP_SECTIONS = (
    MapSection("attribution", "attribution_vs_exact", "Attribution patching (gradient x difference) vs exact patching",
               ("Per pair, component and layer: Spearman rank correlation of the estimated and the exact effect of "
                "single-token patches (over the top-k sites re-checked exactly, and over every site where validated), "
                "and the share of the top-k sites (by |exact|) whose sign the estimate gets right.\n",),
               meta="attribute.json"),
    MapSection("heads", "heads_agg", "Per-head patching (layer x head; ratio of sums over pairs)", sort_by="mean"),
    MapSection("logit_lens", "logit_lens_by_layer", "Logit lens at the answer position"),
)


def maps_sections(attribute_dir, heads_dir, lens_dir, out: Path, sections: dict) -> list[str]:
    md: list[str] = []
    for sec, folder in zip(MAP_SECTIONS, (attribute_dir, heads_dir, lens_dir)):
        d = Path(folder) if folder else None
        if d is None or not (d / f"{sec.table}.parquet").exists():
            continue
        df = pd.read_parquet(d / f"{sec.table}.parquet")
        df.to_csv(out / f"{sec.table}.csv", index=False)
        md += [f"## {sec.title}\n", *sec.intro]
        if sec.meta is not None:
            meta = json.loads((d / sec.meta).read_text()) if (d / sec.meta).exists() else {}
            md += ["```\n" + json.dumps(meta.get("comparison", {}), indent=1) + "\n```\n"]
        md += [f"![{n}]({n})\n" for n in _copy_pngs(d, out)]
        md += [_md(df.sort_values(sec.sort_by, ascending=False) if sec.sort_by else df), ""]
        sections[sec.key] = f"{sec.table}.csv"
    return md
