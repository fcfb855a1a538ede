"""`rlm-rig interp patch|attribute|heads ... --ray ADDRESS|local`: the pairs' sweeps as Ray tasks.

The job itself (pair building, faithfulness, aggregation, plots, the staged output folder) runs in the driver as on
one node; only the per-pair function goes out (interp.fanout). The pairs are cut into contiguous slices, one task
per slice, as many slices as the cluster has task slots (GPUs when the replay runs on CUDA, else CPUs); each task
loads the replay model once and returns its slice's results, which the driver puts back in pair order. Same
function, same pairs, same order: the merged tables are the files a single-node run writes.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

from rlm_rig.experiments.runs.cluster import ClusterError, check_reachable, connect, disconnect
from rlm_rig.interp.config import InterpConfig
from rlm_rig.interp.profile import WorkerModelSpec
from rlm_rig.interp.fanout import PairFn, Tick, run_slice


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Joined to (or running) a cluster for the block; a local cluster this process started ends with it."""
    check_reachable(address)
    started = connect(address, local_cpus=1)
    try:
        yield
    finally:
        disconnect(started)


class RayPairMapper:
    """A PairMapper that runs slices of the pairs as Ray tasks, each with the profile's share of a node: one GPU
    when the replay device is CUDA, else one CPU."""

    def __init__(self, cfg: InterpConfig, spec: WorkerModelSpec, address: str):
        self.cfg, self.spec, self.address = cfg, spec, address
        self.gpus = 1 if str(cfg.device).startswith("cuda") else 0

    def slots(self) -> int:
        import ray

        res = ray.cluster_resources()
        n = int(res.get("GPU", 0)) if self.gpus else int(res.get("CPU", 0))
        if n < 1:
            raise ClusterError(f"--ray {self.address}: the cluster has no {'GPU' if self.gpus else 'CPU'} for the "
                               f"replay on {self.cfg.device}")
        return n

    def __call__(self, fn: PairFn, pairs: list, model: Any, tick: Tick | None = None) -> list[Any]:
        import ray

        if not pairs:
            return []
        k = min(len(pairs), self.slots())
        bounds = [round(i * len(pairs) / k) for i in range(k + 1)]
        slices = [pairs[bounds[i]:bounds[i + 1]] for i in range(k)]
        task = ray.remote(run_slice).options(num_cpus=1, num_gpus=self.gpus, max_retries=1)
        print(f"ray: {len(pairs)} pairs in {k} task(s) on {self.address}", file=sys.stderr, flush=True)
        refs = [task.remote(self.spec.model, self.spec.dtype, self.cfg.device, fn, sl) for sl in slices]
        results: dict[int, list[Any]] = {}
        pending, done = list(refs), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = refs.index(ready[0])
            results[i] = ray.get(ready[0])
            for got in results[i]:
                done += 1
                if tick:
                    tick(done, got)
        return [r for i in range(k) for r in results[i]]
