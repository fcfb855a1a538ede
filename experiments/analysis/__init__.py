"""Reading finished runs: metrics with CIs, controller strategies, failure classes, reports."""
from experiments.analysis.report import summarize_run, write_report

__all__ = ["summarize_run", "write_report"]
