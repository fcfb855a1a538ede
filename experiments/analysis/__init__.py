"""Analyses over run folders: paired comparisons (more to move here in the reorganisation)."""
from experiments.analysis.paired import mcnemar_exact, paired_stats, paired_table, plot_score_vs_length

__all__ = ["mcnemar_exact", "paired_stats", "paired_table", "plot_score_vs_length"]
