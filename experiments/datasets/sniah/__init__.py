"""The sniah dataset: its loader (`load`) and official scorer (`score`)."""
