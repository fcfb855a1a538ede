"""The oolong-synth dataset: its loader (`load`) and official scorer (`score`)."""
