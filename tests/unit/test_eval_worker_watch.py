"""Issue 12 §5, no server needed: the watch against an attached url where nothing listens (a real
client, a real closed loopback port). It notices /health failing, waits, declares the worker dead,
and from then on fails every call at once with WorkerDeadError; errors are sorted into kinds."""
from __future__ import annotations

from rlm_rig.worker.errors import ContextLengthError, WorkerError, WorkerRequestError
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.client import WorkerClient
from rlm_rig.worker.server import find_free_port
from rlm_rig.worker.watch import WorkerDeadError, WorkerWatch, failure_kind


def test_failure_kinds():
    assert failure_kind(WorkerError("down")) == "worker"
    assert failure_kind(TimeoutError("slow")) == "worker"
    assert failure_kind(ContextLengthError("long", status=400)) == "context_length"
    assert failure_kind(WorkerRequestError("bad", status=400)) == "request"
    assert failure_kind(ValueError("x")) == "other"


def test_attached_worker_gone_is_declared_dead(tmp_path):
    port = find_free_port()
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    sync = SyncWorker(WorkerClient(url, "tiny", max_retries=0, timeout_s=5))
    watch = WorkerWatch(sync, server=None, health_url=url, log=lines.append, backoff_s=0.1, attached_wait_s=0.5, retries=2)
    try:
        res = watch.chat_many([[{"role": "user", "content": "hi"}]] * 2, max_tokens=4)
        assert all(isinstance(r, WorkerDeadError) for r in res)
        assert watch.dead and "not the rig's own" in watch.dead and "/health failed" in watch.dead
        assert [e["event"] for e in watch.events] == ["down", "dead"] and len(lines) == 2
        sent = sync.worker.http_attempts
        again = watch.chat_many([[{"role": "user", "content": "hi"}]], max_tokens=4)
        assert isinstance(again[0], WorkerDeadError) and sync.worker.http_attempts == sent  # nothing sent
        assert failure_kind(again[0]) == "worker"
    finally:
        watch.close()
