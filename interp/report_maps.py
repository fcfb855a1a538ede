"""Report sections for faithfulness and the map jobs (attribution, heads, logit lens)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from .faithfulness import FAITHFULNESS_FILE, summary
from .tables import md_table as _md


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


def maps_sections(attribute_dir, heads_dir, lens_dir, out: Path, sections: dict) -> list[str]:
    md: list[str] = []
    a = Path(attribute_dir) if attribute_dir else None
    if a is not None and (a / "attribution_vs_exact.parquet").exists():
        cm = pd.read_parquet(a / "attribution_vs_exact.parquet")
        cm.to_csv(out / "attribution_vs_exact.csv", index=False)
        meta = json.loads((a / "attribute.json").read_text()) if (a / "attribute.json").exists() else {}
        md += ["## Attribution patching (gradient x difference) vs exact patching\n",
               "Per pair, component and layer: Spearman rank correlation of the estimated and the exact effect of "
               "single-token patches (over the top-k sites re-checked exactly, and over every site where validated), "
               "and the share of the top-k sites (by |exact|) whose sign the estimate gets right.\n",
               "```\n" + json.dumps(meta.get("comparison", {}), indent=1) + "\n```\n"]
        md += [f"![{n}]({n})\n" for n in _copy_pngs(a, out)]
        md += [_md(cm), ""]
        sections["attribution"] = "attribution_vs_exact.csv"
    h = Path(heads_dir) if heads_dir else None
    if h is not None and (h / "heads_agg.parquet").exists():
        agg = pd.read_parquet(h / "heads_agg.parquet")
        agg.to_csv(out / "heads_agg.csv", index=False)
        md += ["## Per-head patching (layer x head; ratio of sums over pairs)\n"]
        md += [f"![{n}]({n})\n" for n in _copy_pngs(h, out)]
        md += [_md(agg.sort_values("mean", ascending=False)), ""]
        sections["heads"] = "heads_agg.csv"
    lz = Path(lens_dir) if lens_dir else None
    if lz is not None and (lz / "logit_lens_by_layer.parquet").exists():
        agg = pd.read_parquet(lz / "logit_lens_by_layer.parquet")
        agg.to_csv(out / "logit_lens_by_layer.csv", index=False)
        md += ["## Logit lens at the answer position\n"]
        md += [f"![{n}]({n})\n" for n in _copy_pngs(lz, out)]
        md += [_md(agg), ""]
        sections["logit_lens"] = "logit_lens_by_layer.csv"
    return md
