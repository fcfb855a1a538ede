"""Time-sharing the worker GPU: stop the vLLM worker server before loading the replay copy.

On the dual-A4500 rig GPU 1 holds the FP16 worker under vLLM and cannot hold a second FP16 copy,
so interp jobs first stop the server. Only a process whose command line contains
`expect_cmdline` ("vllm" by default) is ever stopped, together with its children (vLLM's engine
core runs in a child process), SIGTERM first and SIGKILL after `timeout_s`.

Where the server is found, first match wins:
1. an explicit target (``--stop-server URL|PID``);
2. ``interp.server_pid_file`` (JSON ``{"pid": N}`` or a bare pid);
3. with ``interp.stop_server: true``: ``<RUN_DIR>/worker-server.pid`` if present, else the
   process listening on ``worker.server.url`` or ``worker.server.host:port`` of the profile.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil

from rlm_rig.worker.server import terminate_procs

from rlm_rig.records.runlog import RunFolder

from .config import InterpConfig

class ReleaseError(RuntimeError):
    """The server to stop could not be found, or is not a vLLM process."""


def read_pid_file(path: str | Path) -> int:
    p = Path(path)
    if not p.exists():
        raise ReleaseError(f"pid file {p} does not exist")
    text = p.read_text().strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = text
    pid = data.get("pid") if isinstance(data, dict) else data
    try:
        return int(pid)
    except (TypeError, ValueError):
        raise ReleaseError(f"pid file {p} holds no pid: {text[:80]!r}") from None


def pid_listening_on(url: str) -> int | None:
    """The pid listening on the URL's port on this machine (None if nobody listens)."""
    u = urlparse(url if "://" in url else f"http://{url}")
    if u.port is None:
        raise ReleaseError(f"URL {url!r} has no port")
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == u.port and c.pid:
            return int(c.pid)
    return None


def stop_process(pid: int, *, expect_cmdline: str = "vllm", timeout_s: float = 30.0) -> list[int]:
    """Stop `pid` and its children; returns the pids that were stopped."""
    try:
        proc = psutil.Process(pid)
        cmd = " ".join(proc.cmdline())
    except psutil.NoSuchProcess:
        return []
    if expect_cmdline and expect_cmdline not in cmd:
        raise ReleaseError(f"refusing to stop pid {pid}: its command line does not contain {expect_cmdline!r}: {cmd[:200]}")
    procs = proc.children(recursive=True) + [proc]
    terminate_procs(procs, timeout_s)
    return [p.pid for p in procs]


def _resolve_target(target: str) -> int | None:
    target = target.strip()
    if target.isdigit():
        return int(target)
    return pid_listening_on(target)


def release_worker_gpu(
    config: InterpConfig,
    *,
    target: str | None = None,
    run_dir: str | Path | None = None,
    profile: dict[str, Any] | None = None,
    expect_cmdline: str = "vllm",
    timeout_s: float = 30.0,
) -> list[int]:
    """Stop the worker server if asked to; returns the stopped pids ([] when nothing had to stop)."""
    pid: int | None = None
    if target:
        pid = _resolve_target(target)
        if pid is None:
            return []  # nothing listens there: the GPU is already free
    elif config.server_pid_file:
        pid = read_pid_file(config.server_pid_file)
    elif config.stop_server:
        pf = RunFolder(run_dir).worker_pid_path if run_dir is not None else None
        if pf is not None and pf.exists():
            pid = read_pid_file(pf)
        else:
            server = ((profile or {}).get("worker") or {}).get("server") or {}
            url = server.get("url") or (f"{server.get('host', '127.0.0.1')}:{server['port']}" if server.get("port") else None)
            if url is None:
                raise ReleaseError("interp.stop_server is set but no pid file, worker.server.url or port is known")
            pid = _resolve_target(url)
            if pid is None:
                return []
    if pid is None:
        return []
    return stop_process(pid, expect_cmdline=expect_cmdline, timeout_s=timeout_s)
