"""A DataFrame as a Markdown table, the one way interp's reports print tables."""
from __future__ import annotations

import pandas as pd


def md_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    if df.empty:
        return "_(empty)_\n"
    d = df.head(max_rows)
    cols = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in d.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.tolist()) + " |")
    return "\n".join(lines) + "\n"
