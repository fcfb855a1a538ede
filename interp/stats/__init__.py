"""interp's statistics over per-pair tables: means with CIs by site, patch metrics, heatmap structure."""
