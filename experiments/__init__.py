"""experiments: on top of everything. `datasets/` (loaders, official scorers, one registry), `runs/`
(methods, the eval loop, run folders, resume, shards), `analysis/` (metrics, strategies, failures,
reports), `studies/` (counting, SmolLM2) and `cli/` (the one `rlm-rig` command line).

What a notebook needs is exported here; names load lazily, so `rlm-rig --help` does not pay for
pandas and matplotlib.
"""
