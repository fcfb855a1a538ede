"""The rig against the official RLM library (`rlms`) and DSPy's `dspy.RLM`, side by side in one run.

Every harness answers the same question with the same program, each in its own dialect: the scripted
controller (``stubs.py``) splits the document into K chunks, sends all K to the worker in one batched
call, sums the replies and answers. The stub worker answers at once, so what is timed is the harness.

- warm: one process per harness and row; the first example warms it, the median of the next three is
  reported. Each example has its own document. Twice: examples back to back, and with a 1 s untimed
  pause between them (a real example spends seconds in the models; the rig boots the next example's
  sandbox kernel meanwhile, and back to back that boot is what the rig waits for).
- cold: a fresh process answering one question (the rig: ``rlm-rig ask``, the CLI), servers excluded.
- memory: the private (resident minus shared) peak of the harness's whole process tree, sampled.
- concurrency: the same program against a worker that takes 0.25 s a request; the most requests the
  worker had in flight at once (the rig's cap is worker.max_connections = 8).
- ``--real-worker URL``: one row against a real vLLM-CPU server (serving the tiny model as "worker").

    python bench/peers/bench_peers.py [--peers-python bench/peers/.venv/bin/python] [--quick]

Run it through ``make bench-peers``, which builds the peers' own environment first.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HARNESSES = ("rig", "rlms", "dspy")
ROWS = [(100_000, 16), (100_000, 128), (1_000_000, 16), (1_000_000, 128), (5_000_000, 16), (5_000_000, 128)]
PAGE = os.sysconf("SC_PAGE_SIZE")


def private_bytes(pid: int) -> int:
    """Resident minus shared pages (/proc/PID/statm): what this process alone holds."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            parts = fh.read().split()
        return (int(parts[1]) - int(parts[2])) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreePeak:
    """Samples a process tree's private memory every 20 ms; ``peak`` is the largest sum seen."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pids = [self.root.pid] + [c.pid for c in self.root.children(recursive=True)]
            except psutil.Error:
                pids = [self.root.pid]
            self.peak = max(self.peak, sum(private_bytes(p) for p in pids))
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_tree(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[str, float, int, int]:
    """(stdout, wall seconds, peak private bytes of the tree, return code)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    peak = TreePeak(p.pid)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        mem = peak.stop()
        if p.poll() is None:
            p.kill()
    if p.returncode:
        sys.stderr.write(f"[{cmd[1:3]}] exit {p.returncode}: {err[-1500:]}\n")
    return out, time.perf_counter() - t0, mem, p.returncode


class Stubs:
    def __init__(self, python: str, delay: float = 0.0):
        self.proc = subprocess.Popen([python, str(HERE / "stubs.py"), "--delay", str(delay)], stdout=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline().split()  # type: ignore[union-attr]
        if not line or line[0] != "READY":
            raise RuntimeError("the stub servers did not start")
        self.controller = f"http://127.0.0.1:{line[1]}/v1"
        self.worker = f"http://127.0.0.1:{line[2]}/v1"

    def stats(self, url: str | None = None) -> dict:
        base = (url or self.worker).removesuffix("/v1")
        return httpx.get(base + "/stats", timeout=10).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def python_for(harness: str, peers_python: str) -> str:
    return sys.executable if harness == "rig" else peers_python


def peer_env(peers_python: str) -> dict:
    return {"PATH": str(Path(peers_python).parent) + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO)}


def warm(harness: str, chars: int, k: int, stubs: Stubs, worker: str, args: argparse.Namespace,
         pause: float = 0.0) -> dict:
    py = python_for(harness, args.peers_python)
    stubs.stats(), stubs.stats(stubs.controller)  # reset the counters
    cmd = [py, str(HERE / "harnesses.py"), harness, "--controller", stubs.controller, "--worker", worker,
           "--chars", str(chars), "--k", str(k), "--examples", str(args.examples), "--pause", str(pause)]
    out, _, mem, rc = run_tree(cmd, peer_env(args.peers_python))
    rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    times = [r["seconds"] for r in (rows[1:] if len(rows) > 1 else rows)]
    ok = rc == 0 and len(rows) == args.examples and all(r["answer"].strip() == str(k) for r in rows)
    if not ok:
        sys.stderr.write(f"[{harness} {chars} K={k}] exit {rc}, answers {[r['answer'][:80] for r in rows]}\n")
    stats = stubs.stats() if worker == stubs.worker else {}
    return {"s": statistics.median(times) if times else float("nan"), "mb": mem / 2**20, "ok": ok, **stats}


def cold(harness: str, chars: int, k: int, stubs: Stubs, worker: str, args: argparse.Namespace, doc: Path) -> dict:
    sys.path.insert(0, str(HERE))
    from harnesses import QUESTION, rig_overrides

    q = QUESTION.format(k=k)
    if harness == "rig":
        sets = [x for o in rig_overrides(stubs.controller, worker) for x in ("--set", o)]
        out_dir = Path(tempfile.mkdtemp(prefix="peers-ask-"))
        cmd = [sys.executable, "-m", "rlm_rig.experiments.cli", "ask", "--config", "cpu-tiny", "--doc", str(doc), "-q", q,
               "--out", str(out_dir / "run"), *sets]
    else:
        cmd = [args.peers_python, str(HERE / "harnesses.py"), harness, "--controller", stubs.controller,
               "--worker", worker, "--doc", str(doc), "--k", str(k)]
    out, wall, mem, rc = run_tree(cmd, peer_env(args.peers_python))
    if harness == "rig":
        shutil.rmtree(out_dir, ignore_errors=True)
    ok = rc == 0 and (f'"answer": "{k}"' in out or f"answer: {k}" in out)
    return {"s": wall, "mb": mem / 2**20, "ok": ok}


def fmt(cell: dict) -> str:
    return f"{cell['s']:.2f} s, {cell['mb']:.0f} MB" + ("" if cell["ok"] else " (FAILED)")


def table(title: str, results: dict, rows: list[tuple[int, int]]) -> None:
    print(f"\n### {title}\n")
    print("| document | K | rlm-rig | rlms | DSPy | rig / rlms | rig / DSPy | rig / best peer | memory rig / best peer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for chars, k in rows:
        c = {h: results[(h, chars, k)] for h in HARNESSES if (h, chars, k) in results}
        if len(c) < 3:
            continue
        best = min(c["rlms"]["s"], c["dspy"]["s"])
        best_mb = min(c["rlms"]["mb"], c["dspy"]["mb"])
        print(f"| {chars / 1e6:g}M chars | {k} | {fmt(c['rig'])} | {fmt(c['rlms'])} | {fmt(c['dspy'])} | "
              f"{c['rig']['s'] / c['rlms']['s']:.2f}x | {c['rig']['s'] / c['dspy']['s']:.2f}x | "
              f"{c['rig']['s'] / best:.2f}x | {c['rig']['mb'] / best_mb:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers-python", default=str(HERE / ".venv" / "bin" / "python"))
    ap.add_argument("--examples", type=int, default=4,
                    help="per warm process: 1 warm-up + the rest timed (1: the one example is timed)")
    ap.add_argument("--quick", action="store_true", help="only the 100K and 1M rows at K=16")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--pause", type=float, default=1.0,
                    help="for the second warm table: untimed seconds between examples")
    ap.add_argument("--real-worker", help="a vLLM-CPU server serving the tiny model as 'worker': one row, K=16, 1M")
    args = ap.parse_args()
    rows = [(100_000, 16), (1_000_000, 16)] if args.quick else ROWS
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    stubs = Stubs(sys.executable)
    try:
        if args.real_worker:
            real = {}
            for h in HARNESSES:
                real[(h, 1_000_000, 16)] = warm(h, 1_000_000, 16, stubs, args.real_worker, args)
                print(f"real {h:5s}: {fmt(real[(h, 1_000_000, 16)])}", flush=True)
            n = max(1, args.examples - 1)
            table(f"real vLLM-CPU worker (tiny model), per example, median of {n} (imports and start-up excluded)",
                  real, [(1_000_000, 16)])
            return
        results_w, results_p, results_c = {}, {}, {}
        for chars, k in rows:
            for h in HARNESSES:
                results_w[(h, chars, k)] = warm(h, chars, k, stubs, stubs.worker, args)
                results_p[(h, chars, k)] = warm(h, chars, k, stubs, stubs.worker, args, pause=args.pause)
                print(f"warm {h:5s} {chars:>9,} K={k:<3}: {fmt(results_w[(h, chars, k)])}  "
                      f"worker requests {results_w[(h, chars, k)].get('requests')}; with {args.pause:g} s "
                      f"between examples: {fmt(results_p[(h, chars, k)])}", flush=True)
        table(f"warm per example (median of {args.examples - 1}), back to back, private peak of the process tree",
              results_w, rows)
        table(f"warm per example (median of {args.examples - 1}), {args.pause:g} s between examples (untimed: "
              "the model time of a real example), private peak of the process tree", results_p, rows)
        if not args.skip_cold:
            sys.path.insert(0, str(HERE))
            from harnesses import make_doc

            with tempfile.TemporaryDirectory() as tmp:
                for chars, k in rows:
                    doc = Path(tmp) / f"doc-{chars}.txt"
                    if not doc.exists():
                        doc.write_text(make_doc(chars, seed=99))
                    for h in HARNESSES:
                        results_c[(h, chars, k)] = cold(h, chars, k, stubs, stubs.worker, args, doc)
                        print(f"cold {h:5s} {chars:>9,} K={k:<3}: {fmt(results_c[(h, chars, k)])}", flush=True)
            table("cold: one fresh process, one question (the rig: `rlm-rig ask`), servers excluded", results_c, rows)
    finally:
        stubs.close()
    slow = Stubs(sys.executable, delay=0.25)
    try:
        print("\n### worker taking 0.25 s per request (100K chars, K=16): most requests in flight at once\n")
        print("| harness | per example | worker requests | max in flight |")
        print("|---|---|---|---|")
        a = argparse.Namespace(**{**vars(args), "examples": 2})
        for h in HARNESSES:
            r = warm(h, 100_000, 16, slow, slow.worker, a)
            print(f"| {h} | {r['s']:.2f} s{'' if r['ok'] else ' (FAILED)'} | {r.get('requests')} | {r.get('max_in_flight')} |")
    finally:
        slow.close()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
