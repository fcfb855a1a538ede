"""REPL overheads, measured once per launcher: kernel start, start with a 5M-char prompt,
round-trip of a trivial cell, and of a cell making one sub_call (trivial handler); and the start with
a 5M-character LIST context (10,000 items of 500 characters, issue 22) against the 5M-character string,
interleaved, as a ratio of medians.

Run: python bench/bench_repl.py [--cells 300] [--starts 5] [--launchers bwrap,none] [--json]
Prints figures from this one run; ratios are relative to the plain-process launcher ("none").
`--json` prints one JSON object instead (used by bench_repl_versions.py to compare two trees).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.types import SandboxLimits, SubCallReply
from rlm_rig.repl.launch import probe


def echo(reqs):
    return [SubCallReply(text=r.chunk) for r in reqs]


def list_vs_string(lim: SandboxLimits, starts: int) -> tuple[float | None, float | None]:
    """Median start (ms) with a 5M-char string and with a 5M-char list of 10,000 items, interleaved so load
    on the machine hits both alike; each start ends with a cell that reads the context. (None, None) with an
    older `repl` (bench_repl_versions.py runs this file against one) that takes only a str."""
    text, items = "x" * 5_000_000, ["y" * 500] * 10_000
    try:
        Sandbox(["probe"], handler=echo, limits=lim).close()
    except TypeError:
        return None, None
    runs: dict[str, list[float]] = {"str": [], "list": []}
    for _ in range(max(3, starts)):
        for kind, doc in (("str", text), ("list", items)):
            t0 = time.perf_counter()
            box = Sandbox(doc, handler=echo, limits=lim)
            ok = box.run_cell("print(len(prompt))").stdout
            runs[kind].append(time.perf_counter() - t0)
            box.close()
            assert ok == f"{len(doc)}\n", ok
    return 1000 * statistics.median(runs["str"]), 1000 * statistics.median(runs["list"])


def kernel_cpu_s(box: Sandbox) -> float:
    """CPU time (user + system) of the kernel process so far, read from /proc (the deepest live
    descendant of the launcher is the Python kernel)."""
    from rlm_rig.repl.channel import descendants

    pid = [box._kernel.proc.pid, *descendants(box._kernel.proc.pid)][-1]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_cells(box: Sandbox, code: str, cells: int) -> tuple[float, float]:
    """Wall time and CPU time (parent + kernel) per cell, in seconds. CPU time is what a loaded
    machine disturbs least: the wall time of a round trip on a shared box moves by x2 between runs."""
    t0, c0, k0 = time.perf_counter(), time.process_time(), kernel_cpu_s(box)
    for _ in range(cells):
        box.run_cell(code)
    cpu = time.process_time() - c0 + kernel_cpu_s(box) - k0
    return (time.perf_counter() - t0) / cells, cpu / cells


def measure(launcher: str, cells: int, starts: int) -> dict[str, float]:
    lim = SandboxLimits(launcher=launcher, cell_timeout_s=30)
    start_s = []
    for _ in range(starts):
        t0 = time.perf_counter()
        box = Sandbox("small prompt", handler=echo, limits=lim)
        start_s.append(time.perf_counter() - t0)
        box.close()
    big = "x" * 5_000_000
    t0 = time.perf_counter()
    box = Sandbox(big, handler=echo, limits=lim)
    big_start = time.perf_counter() - t0
    try:
        box.run_cell("x = 0")  # warm-up
        cell_rt, cell_cpu = timed_cells(box, "x += 1", cells)
        sub_rt, sub_cpu = timed_cells(box, "y = sub_call('c', 'i')", cells)
        assert box.run_cell("print(x)").stdout == f"{cells}\n"
        iso = box.isolation.summary()
    finally:
        box.close()
    str_ms, list_ms = list_vs_string(lim, starts)
    return {"start_ms": 1000 * statistics.mean(start_s), "start5m_ms": 1000 * big_start,
            "cell_ms": 1000 * cell_rt, "subcall_cell_ms": 1000 * sub_rt, "cell_cpu_us": 1e6 * cell_cpu,
            "subcall_cpu_us": 1e6 * sub_cpu, "start5m_str_cell_ms": str_ms, "start5m_list_cell_ms": list_ms, "iso": iso}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--launchers", default="", help="comma-separated subset (default: every working one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    launchers = [name for name in ("bwrap", "unshare") if probe(name, network=False)] + ["none"]
    if args.launchers:
        launchers = [n for n in args.launchers.split(",") if n in launchers]
    results = {name: measure(name, args.cells, args.starts) for name in launchers}
    if args.json:
        print(json.dumps(results))
        return
    base = results.get("none", next(iter(results.values())))
    print(f"REPL bench: {args.cells} cells, {args.starts} kernel starts per launcher")
    print(f"{'launcher':9} {'start ms':>9} {'start 5M ms':>12} {'cell rt ms':>11} {'sub_call cell ms':>17}"
          f" {'cell CPU us':>12} {'start x':>8} {'cell x':>7}")
    for name, r in results.items():
        print(f"{name:9} {r['start_ms']:9.1f} {r['start5m_ms']:12.1f} {r['cell_ms']:11.3f} "
              f"{r['subcall_cell_ms']:17.3f} {r['cell_cpu_us']:12.1f} {r['start_ms'] / base['start_ms']:8.2f} "
              f"{r['cell_ms'] / base['cell_ms']:7.2f}")
    print("5M-char context, start + one cell reading it (medians, interleaved):")
    for name, r in results.items():
        if r["start5m_list_cell_ms"] is None:
            continue
        print(f"  {name:9} str {r['start5m_str_cell_ms']:.1f} ms, list of 10,000 items "
              f"{r['start5m_list_cell_ms']:.1f} ms: list/str x{r['start5m_list_cell_ms'] / r['start5m_str_cell_ms']:.2f}")
    for name, r in results.items():
        print(f"  {name}: {r['iso']}")


if __name__ == "__main__":
    main()
