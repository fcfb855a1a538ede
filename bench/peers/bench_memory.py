"""The rig's memory over a long run of large documents: flat across documents, bounded at concurrency 4.

The rig runs in this process (as `rlm-rig eval` does) against the benchmark's stub controller and
worker (``stubs.py``): the same split-into-K, batch, sum program as ``bench_peers.py``. It reports
the private memory (resident minus shared) of the whole process tree, parent and kernels:

1. examples one after another, each on its own document: the tree after each example, with the
   heap trimmed after each example (the rig's default) and without (``malloc_trim`` off), in turn;
2. ``eval.max_samples`` 4: examples four at a time, the peak of the tree.

    python bench/peers/bench_memory.py [--chars 5000000] [--k 16] [--examples 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from bench_peers import Stubs, TreePeak, private_bytes  # noqa: E402
from harnesses import QUESTION, make_doc, rig_overrides  # noqa: E402


def tree_now() -> float:
    import psutil

    me = psutil.Process()
    return sum(private_bytes(p) for p in [me.pid] + [c.pid for c in me.children(recursive=True)]) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chars", type=int, default=5_000_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--examples", type=int, default=6)
    args = ap.parse_args()
    from rlm_rig.configs.load import load_config
    import rlm_rig.controller.rig as rig_module
    from rlm_rig.controller.rig import Rig

    stubs = Stubs(sys.executable)
    q = QUESTION.format(k=args.k)
    seed = iter(range(10**6))
    try:
        cfg = load_config("cpu-tiny", rig_overrides(stubs.controller, stubs.worker) + ["eval.max_samples=4"])
        with tempfile.TemporaryDirectory() as tmp, Rig(cfg, run_dir=Path(tmp)) as rig:
            rig.kernels.prefetch = True  # as `rlm-rig eval` sets it
            print(f"load average {os.getloadavg()[0]:.1f}; {args.chars:,}-char documents, K={args.k}")
            print(f"after start-up: {tree_now():.0f} MB")
            trim = rig_module.trim_heap
            for label, fn in (("without malloc_trim", lambda: False), ("with malloc_trim (default)", trim)):
                rig_module.trim_heap = fn
                after = []
                peak = TreePeak(os.getpid())
                for _ in range(args.examples):
                    doc = make_doc(args.chars, next(seed))
                    t = rig.ask(doc, q)
                    assert t.final_answer == str(args.k), t.error
                    del doc, t
                    time.sleep(0.3)  # the retired kernel is killed in the background
                    after.append(tree_now())
                print(f"sequential, {label}: tree after each example (MB): {[round(x) for x in after]}; "
                      f"peak {peak.stop() / 2**20:.0f} MB")
            rig_module.trim_heap = trim
            docs = [make_doc(args.chars, next(seed)) for _ in range(8)]
            base = tree_now()
            peak = TreePeak(os.getpid())
            with ThreadPoolExecutor(4) as ex:
                answers = list(ex.map(lambda d: rig.ask(d, q).final_answer, docs))
            top = peak.stop() / 2**20
            assert answers == [str(args.k)] * 8, answers
            print(f"eval.max_samples 4, 8 examples: tree peak {top:.0f} MB (the 8 documents held by this script: "
                  f"{8 * args.chars / 2**20:.0f} MB of it; before the batch {base:.0f} MB)")
    finally:
        stubs.close()


if __name__ == "__main__":
    main()
