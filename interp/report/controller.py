"""The interp report's section on the controller's side (`rlm-rig interp controller`'s folder): faithfulness of
each teacher-forced turn, attribution vs exact patching, where the final answer's attribution sits (told values,
printed totals, the rest of the cell outputs, everything else), whole-cell exact patches, told-value probes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from rlm_rig.interp.report.tables import md_table as _md

SUMMARY_FILE = "controller.json"  # interp.controller_job.SUMMARY_FILE (not imported: that pulls in torch)


def controller_section(controller_dir, out: Path, sections: dict) -> list[str]:
    d = Path(controller_dir) if controller_dir else None
    if d is None or not (d / SUMMARY_FILE).is_file():
        return []
    meta = json.loads((d / SUMMARY_FILE).read_text())
    s = meta.get("summary", {})
    md = ["## The controller's side (teacher-forced conversation)\n",
          f"Model {meta.get('model')} ({meta.get('dtype')}, quantization {meta.get('quantization')}), "
          f"{s.get('n_samples')} conversations, {s.get('n_pairs')} pairs (one told number +/-1).\n"]
    md += [f"- warning: {w}\n" for w in s.get("warnings", [])]
    tables = (("faithfulness.parquet", "controller_faithfulness.csv", "Faithfulness per turn",
               ["sample", "turn", "n_tokens", "prompt_match", "mean_logprob", "argmax_agreement",
                "first_argmax_divergence", "faithful"]),
              ("attribution_vs_exact.parquet", "controller_attribution_vs_exact.csv", "Attribution vs exact patching",
               None),
              ("cell_exact.parquet", "controller_cell_exact.csv", "Whole cell output patched exactly vs summed "
               "attribution (resid)", None),
              ("probes.parquet", "controller_probes.csv", "Told-value probes per layer and position",
               ["layer", "position", "n_train", "n_test", "probe_acc", "control_acc", "majority_acc", "selectivity"]))
    md += ["Comparison summary:\n", "```\n" + json.dumps(s.get("comparison", {}), indent=1) + "\n```\n",
           "Mean share of |attribution| (resid) per token group:\n",
           "```\n" + json.dumps(s.get("cells", {}), indent=1) + "\n```\n"]
    for src, csv, title, cols in tables:
        if not (d / src).is_file():
            continue
        df = pd.read_parquet(d / src)
        df.to_csv(out / csv, index=False)
        md += [f"### {title}\n", _md(df[[c for c in cols if c in df]] if cols else df), ""]
    for p in sorted(d.glob("*.png")):
        shutil.copy2(p, out / f"controller_{p.name}")
        md.append(f"![controller {p.stem}](controller_{p.name})\n")
    sections["controller"] = "controller_attribution_vs_exact.csv"
    return md
