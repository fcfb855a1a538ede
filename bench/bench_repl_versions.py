"""Kernel start-up and REPL round-trip of this tree against another checkout, side by side.

Why: on a shared 2-core machine the absolute figures move by several times between runs, so a
before/after comparison is only meaningful when the two versions alternate within one run. Each
round runs `bench_repl.py --json` once with the other tree's `repl` package and once with ours
(order alternating), and the medians and the per-round ratios are printed, for wall time and for the
CPU time of parent + kernel per cell (which the load from other processes disturbs far less).

Run: python bench/bench_repl_versions.py --base /path/to/old/checkout [--rounds 5] [--launchers bwrap]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
KEYS = ("start_ms", "start5m_ms", "cell_ms", "subcall_cell_ms", "cell_cpu_us", "subcall_cpu_us")


def one(tree: Path, launchers: str, cells: int, starts: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(HERE / "bench" / "bench_repl.py"), "--json", "--launchers", launchers,
                          "--cells", str(cells), "--starts", str(starts)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", required=True, type=Path, help="checkout of the older version")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--launchers", default="bwrap")
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--starts", type=int, default=5)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    for i in range(args.rounds):
        order = [("base", args.base), ("new", HERE)] if i % 2 == 0 else [("new", HERE), ("base", args.base)]
        for name, tree in order:
            runs[name].append(one(tree, args.launchers, args.cells, args.starts))
    print(f"{args.rounds} interleaved rounds; medians (ms; CPU of parent + kernel per cell in us) and median of "
          f"per-round ratios new/base; 1-min load average {os.getloadavg()[0]:.1f} at the end")
    for launcher in args.launchers.split(","):
        print(f"[{launcher}]")
        for key in KEYS:
            b = [r[launcher][key] for r in runs["base"]]
            n = [r[launcher][key] for r in runs["new"]]
            ratio = statistics.median(x / y for x, y in zip(n, b))
            print(f"  {key:16} base {statistics.median(b):9.3f}  new {statistics.median(n):9.3f}  ratio {ratio:5.2f}")


if __name__ == "__main__":
    main()
