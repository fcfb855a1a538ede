"""One reader of vLLM's /metrics gauges for the tests that must see server-side concurrency."""
from __future__ import annotations

import threading

import httpx


def metric(c: httpx.Client, root: str, name: str) -> float:
    """The first sample of `name` (a gauge or a counter) on the server's /metrics."""
    for line in c.get(root + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"the server's /metrics has no {name}")


def running(c: httpx.Client, root: str) -> float:
    """vLLM's gauge of requests being decoded right now."""
    return metric(c, root, "vllm:num_requests_running")


def running_on_server(root: str, ready: threading.Event, stop: threading.Event, seen: list[float]) -> None:
    """Poll the gauge. `ready` fires after the first reading, so the caller can start its load under
    observation (a slow start of this thread once let a fast load finish unobserved); one last reading
    follows `stop`."""
    with httpx.Client(trust_env=False, timeout=30) as c:
        seen.append(running(c, root))
        ready.set()
        while not stop.is_set():
            seen.append(running(c, root))
        seen.append(running(c, root))
