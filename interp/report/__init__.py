"""interp's report: the report folder (build), its figures (plots) and tables."""
