"""Reading finished runs: metrics with CIs, controller strategies, failure classes, paired comparisons, reports."""
