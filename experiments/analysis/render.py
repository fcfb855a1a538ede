"""Rendering helpers of the reports: number formatting, Markdown tables, matplotlib figures without pyplot.

A leaf of `analysis/`, so every report section (the main report, paired comparisons) renders the
same way without importing each other.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["figure", "fmt", "md_table", "save", "yerr"]


def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "–"
    if spec == "d":
        return str(int(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return format(float(v), spec)
    return str(v)


def md_escape(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (cells already formatted as strings)."""
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def figure(width: float = 8.0, height: float = 4.5) -> Any:
    # Figure + Agg canvas directly: no pyplot global state, no backend switching.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


def yerr(means: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.vstack([np.nan_to_num(means - lo), np.nan_to_num(hi - means)]).clip(min=0)
