"""The oolong-real dataset: its loader (`load`) and official scorer (`score`)."""
