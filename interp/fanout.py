"""Where the per-pair work of `patch`, `attribute` and `heads` runs.

Each job turns one clean/corrupt pair into its rows with a plain function ``fn(model, pair)``; a *mapper* runs that
function over the pairs and returns the results in pair order. The default runs here, on the job's model, one pair
after another. `--ray` passes a mapper (experiments/runs/cluster_interp.py) that sends contiguous slices of the pairs
to Ray tasks, each loading its own copy of the model: the same function on the same pairs, so the merged outputs are
the files a single-node run writes. WHY interp does not import Ray itself: interp may import only the worker and the
controller's leaves (docs/ARCHITECTURE.md); the cluster lives on top, in experiments/.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from .model import ReplayModel
from rlm_rig.interp.data.pairs import Pair

PairFn = Callable[[ReplayModel, Pair], Any]
Tick = Callable[[int, Any], None]  # (pairs done so far, the result just finished)


class PairMapper(Protocol):
    def __call__(self, fn: PairFn, pairs: list[Pair], model: ReplayModel, tick: Tick | None = None) -> list[Any]: ...


def local_map(fn: PairFn, pairs: list[Pair], model: ReplayModel, tick: Tick | None = None) -> list[Any]:
    """Every pair here, in order, on the job's model."""
    out = []
    for k, pair in enumerate(pairs):
        out.append(fn(model, pair))
        if tick:
            tick(k + 1, out[-1])
    return out


def run_slice(model_path: str, dtype: str, device: str, fn: PairFn, pairs: list[Pair]) -> list[Any]:
    """One remote task's share: load the replay model once, then each pair of the slice in order."""
    model = ReplayModel(model_path, dtype=dtype, device=device)
    return [fn(model, p) for p in pairs]
