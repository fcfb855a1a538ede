"""Running evaluations: methods (the RLM and baselines), the eval loop, run folders, resume, shards."""
