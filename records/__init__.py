"""The rig's records: trajectories, sample rows, the run folder, answers, shared statistics."""
