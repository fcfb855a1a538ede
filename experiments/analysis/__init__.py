"""Reading finished runs: metrics with CIs, controller strategies, failure classes, paired comparisons, reports."""
from experiments.analysis.paired import mcnemar_exact, paired_stats, paired_table, plot_score_vs_length
from experiments.analysis.report import summarize_run, write_report

__all__ = ["mcnemar_exact", "paired_stats", "paired_table", "plot_score_vs_length", "summarize_run", "write_report"]
