"""Lifecycle of a vLLM OpenAI-compatible server running as a child process.

WHY a child process with its own session: vLLM spawns helpers (EngineCore, resource tracker) and a GPU
server that outlives its parent keeps the card's memory. The server therefore runs in its own process
group, and every way out of the parent (normal exit, exception, Ctrl-C, SIGTERM, the parent being
killed) takes the whole group down with it.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from rlm_rig.worker.errors import ServerStartError, WorkerError, redact
from rlm_rig.worker.settings import DEFAULT_DTYPE, ServerSettings

__all__ = ["ServerSpec", "VLLMServer", "find_free_port", "list_models", "normalize_base_url"]

_ENTRYPOINT = "vllm.entrypoints.openai.api_server"


@dataclass(kw_only=True)
class ServerSpec(ServerSettings):
    """What to serve (the model, its served name and dtype) and how (`ServerSettings`, one set of defaults).

    `port=0` picks a free port at start; `url` is not read here (the Rig attaches instead of starting)."""

    model: str
    served_name: str | None = None  # the name clients send as `model`; defaults to `model`
    dtype: str = DEFAULT_DTYPE
    offline: bool = False  # HF_HUB_OFFLINE=1: never touch the network for config/tokenizer files

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise ValueError("ServerSpec.model must be a non-empty hub id or path")
        if self.model.startswith(("/", "./", "../", "~")):
            path = Path(self.model).expanduser()
            if not path.exists():
                raise ValueError(f"ServerSpec.model: local path {path} does not exist")
            self.model = str(path)
        super().__post_init__()

    @classmethod
    def of(cls, settings: ServerSettings, *, model: str, served_name: str | None, dtype: str, offline: bool) -> "ServerSpec":
        """A profile's server section plus the model it serves (the section is passed whole, never copied by hand)."""
        fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(ServerSettings)}
        fields["extra_args"], fields["env"] = list(settings.extra_args), dict(settings.env)
        return cls(**fields, model=model, served_name=served_name, dtype=dtype, offline=offline)

    @property
    def name(self) -> str:
        return self.served_name or self.model


def find_free_port(host: str = "127.0.0.1", ports: range | None = None) -> int:
    """A port free now (another process may still take it before we bind): the OS's pick, or the
    first free one in ``ports`` (tests and benches keep to their own ranges so they never collide)."""
    for port in ports if ports is not None else [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")  # type: ignore[union-attr]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def normalize_base_url(url: str) -> str:
    """'http://h:p', 'http://h:p/', 'http://h:p/v1/' -> 'http://h:p/v1' (the OpenAI base url)."""
    if not re.match(r"^https?://", url or ""):
        raise ValueError(f"not an http(s) url: {url!r}")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _root(base_url: str) -> str:
    return base_url[: -len("/v1")]


def list_models(url: str, *, timeout_s: float = 5.0) -> list[str]:
    """Model ids served at `url` (GET /v1/models)."""
    base = normalize_base_url(url)
    with httpx.Client(timeout=timeout_s, trust_env=False) as c:
        r = c.get(base + "/models")
        r.raise_for_status()
        return [m["id"] for m in r.json().get("data", [])]


# --------------------------------------------------------------------------------------------------
# process-group teardown, shared by stop(), atexit and the SIGTERM handler
# --------------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_procs(procs: list, grace_s: float, *, before_kill: Any = None) -> None:
    """SIGTERM psutil processes, wait up to ``grace_s``, then SIGKILL the survivors and reap them.

    Shared by the server's own shutdown and by interp, which stops a worker server it did not start.
    """
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    if before_kill is not None:
        before_kill()
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _terminate_tree(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group, wait, then SIGKILL it and any descendant that left the group."""
    pgid = proc.pid  # start_new_session=True makes the leader's pid the group id
    kids = _descendants(proc.pid)
    _signal_group(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    # descendants that called setsid() themselves do not get the group signal; the SIGKILL to the
    # group also reaps helpers orphaned by a leader that already died
    terminate_procs(kids, max(0.5, grace_s / 2), before_kill=lambda: _signal_group(pgid, signal.SIGKILL))
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


_LIVE: dict[int, "VLLMServer"] = {}
_LIVE_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE.values())
    for s in servers:
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _on_sigterm(signum, frame, previous=None) -> None:
    with _LIVE_LOCK:
        procs = [s._proc for s in _LIVE.values() if s._proc is not None]
    for p in procs:
        _terminate_tree(p, grace_s=5.0)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    """atexit always; a SIGTERM handler only from the main thread and only over the default handler
    (or chained to a Python one), so we never silently replace an application's own handling."""
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    prev = signal.getsignal(signal.SIGTERM)
    if prev in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
    elif callable(prev) and getattr(prev, "__name__", "") != "_chained":

        def _chained(signum, frame):
            _on_sigterm(signum, frame, previous=prev)

        signal.signal(signal.SIGTERM, _chained)


# A ~20-line supervisor between us and vLLM, leader of the server's process group. It starts vLLM as its
# child and, if OUR process disappears (even by SIGKILL, when no handler of ours can run), takes the whole
# group down: vLLM ignores SIGTERM while its engine boots, so PR_SET_PDEATHSIG on vLLM itself is not
# enough. It polls getppid(), which tracks the parent process (PDEATHSIG tracks the parent *thread*).
# It has two levels (a fork): a cluster may SIGKILL the direct children of a process it ends (Ray does so for a dead
# actor), and a supervisor killed outright can take nothing down; the inner level then sees its parent go and does.
# vLLM's frontend also gets PDEATHSIG=SIGKILL from the (single-threaded) inner level; vLLM's engine does not follow a
# frontend killed that way, so the group kill stays the real path.
_SUPERVISOR = """
import os, signal, subprocess, sys, time
ppid, grace = int(sys.argv[1]), float(sys.argv[2])
if os.getppid() != ppid:
    sys.exit(70)
inner = os.fork()
if inner:  # outer level: mirrors the inner one; if it is killed outright, the inner one takes the group down
    def fwd(signum, frame):
        try:
            os.kill(inner, signum)
        except ProcessLookupError:
            pass
    signal.signal(signal.SIGTERM, fwd)
    signal.signal(signal.SIGINT, fwd)
    while True:
        pid, status = os.waitpid(inner, os.WNOHANG)
        if pid:
            rc = os.waitstatus_to_exitcode(status)
            sys.exit(rc if rc >= 0 else 128 - rc)
        if os.getppid() != ppid:
            os._exit(0)
        time.sleep(0.5)
ppid, me = os.getppid(), os.getpid()
def tie():  # vLLM gets SIGKILL if this level is itself killed outright
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != me:
        os._exit(70)
child = subprocess.Popen([sys.executable] + sys.argv[3:], preexec_fn=tie)
def down(signum, frame):
    try:
        child.send_signal(signal.SIGTERM)
        child.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, down)
signal.signal(signal.SIGINT, down)
while True:
    rc = child.poll()
    if rc is not None:
        sys.exit(rc if rc >= 0 else 128 - rc)
    if os.getppid() != ppid:
        down(signal.SIGTERM, None)
    time.sleep(0.5)
"""


class VLLMServer:
    """Start, health-check and stop one vLLM server. Use as a context manager.

    Logs go to `<log_dir>/vllm-<name>.log`; a failed start raises ServerStartError with the log's tail.
    """

    def __init__(
        self, spec: ServerSpec, *, log_dir: str | Path, name: str | None = None, grace_s: float = 15.0
    ) -> None:
        if not isinstance(spec, ServerSpec):
            raise TypeError(f"spec must be a ServerSpec, got {type(spec).__name__}")
        self.spec = spec
        self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or spec.name).strip("_") or "server"
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"vllm-{self.name}.log"
        self.port = spec.port
        self.grace_s = grace_s
        self.startup_s: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._lock = threading.RLock()

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """OpenAI base url, e.g. http://127.0.0.1:18100/v1."""
        return f"http://{self.spec.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- command -----------------------------------------------------------------------------------
    def command(self) -> list[str]:
        s = self.spec
        cmd = [
            sys.executable, "-m", _ENTRYPOINT,
            "--model", s.model,
            "--served-model-name", s.name,
            "--host", s.host,
            "--port", str(self.port),
            "--max-model-len", str(s.max_model_len),
            "--dtype", s.dtype,
            "--generation-config", s.generation_config,
        ]  # fmt: skip
        if s.device == "cuda":
            cmd += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
        if s.quantization:
            cmd += ["--quantization", s.quantization]
        if s.enforce_eager:
            cmd.append("--enforce-eager")
        if s.max_num_seqs:
            cmd += ["--max-num-seqs", str(s.max_num_seqs)]
        if s.enable_prefix_caching is not None:
            cmd.append("--enable-prefix-caching" if s.enable_prefix_caching else "--no-enable-prefix-caching")
        if not s.access_log:
            cmd.append("--disable-uvicorn-access-log")
        return cmd + [str(a) for a in s.extra_args]

    def environment(self) -> dict[str, str]:
        s = self.spec
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
        if s.device == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(s.cpu_kvcache_space_gb)
        elif s.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = s.cuda_visible_devices
        if s.offline:
            env["HF_HUB_OFFLINE"] = "1"
            env["TRANSFORMERS_OFFLINE"] = "1"
        env.update({k: str(v) for k, v in s.env.items()})
        key = s.api_key()
        if key:  # vLLM reads it from its environment: no command line, no log line carries it
            env["VLLM_API_KEY"] = key
        return env

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "VLLMServer":
        """Launch and block until /health answers and /v1/models lists the served name."""
        with self._lock:
            if self.running:
                return self
            if self.port == 0:
                self.port = find_free_port(self.spec.host)
            elif _port_in_use(self.spec.host, self.port):
                raise ServerStartError(
                    f"port {self.port} on {self.spec.host} is already in use; use VLLMServer.attach({self.url!r}) "
                    "for a running server or choose another port (port=0 picks a free one)",
                    url=self.url,
                )
            self.log_dir.mkdir(parents=True, exist_ok=True)
            cmd = self.command()
            # appended, never truncated: a restart or a resumed run keeps the earlier server's log
            self._log_fh = open(self.log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._log_fh.write(f"# rlm-rig {self.name}: {shlex.join(cmd)}\n")
            self._log_fh.flush()
            full = [sys.executable, "-c", _SUPERVISOR, str(os.getpid()), str(self.grace_s)] + cmd[1:]
            t0 = time.monotonic()
            try:
                self._proc = subprocess.Popen(
                    full,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_fh,
                    stderr=subprocess.STDOUT,
                    env=self.environment(),
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                self._log_fh.close()
                self._log_fh = None
                raise ServerStartError(f"could not launch vLLM server '{self.name}': {exc}", url=self.url) from exc
            with _LIVE_LOCK:
                _LIVE[id(self)] = self
            _install_hooks()
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.spec.startup_timeout_s
        with httpx.Client(timeout=2.0, trust_env=False) as c:
            while True:
                proc = self._proc
                rc = proc.poll() if proc is not None else None
                if self._proc is None:  # stop() ran (another thread, a signal) while we waited
                    raise ServerStartError(f"vLLM server '{self.name}' was stopped while starting", url=self.url)
                if rc is not None:
                    raise ServerStartError(
                        f"vLLM server '{self.name}' exited with code {rc} before becoming healthy "
                        f"(log: {self.log_path}). Last lines:\n{self.log_tail()}",
                        url=self.url,
                        log_tail=self.log_tail(),
                    )
                try:
                    if c.get(self.root_url + "/health").status_code == 200:
                        listed = c.get(self.url + "/models", headers=self.spec.auth_headers())
                        models = [m["id"] for m in listed.json().get("data", [])]
                        if self.spec.name not in models:
                            raise ServerStartError(
                                f"server at {self.url} is healthy but serves {models}, not {self.spec.name!r}",
                                url=self.url,
                            )
                        return
                except (httpx.TransportError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"vLLM server '{self.name}' not healthy after {self.spec.startup_timeout_s:.0f}s "
                        f"(log: {self.log_path}). Last lines:\n{self.log_tail()}",
                        url=self.url,
                        log_tail=self.log_tail(),
                    )
                time.sleep(0.5)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop the server and every process it started (SIGTERM, then SIGKILL after `grace_s`).
        Idempotent."""
        grace_s = self.grace_s if grace_s is None else grace_s
        with self._lock:
            proc, self._proc = self._proc, None
            with _LIVE_LOCK:
                _LIVE.pop(id(self), None)
            if proc is not None:
                _terminate_tree(proc, grace_s)
            if self._log_fh is not None:
                try:
                    self._log_fh.close()
                finally:
                    self._log_fh = None

    def log_tail(self, n_lines: int = 40, max_bytes: int = 16384) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                data = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(data.splitlines()[-n_lines:])

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; stop() is the real path
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                _signal_group(proc.pid, signal.SIGKILL)
            except Exception:  # noqa: BLE001
                pass

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"VLLMServer(name={self.name!r}, url={self.url!r}, {state})"

    # -- already-running servers -------------------------------------------------------------------
    @staticmethod
    def attach(url: str, *, model: str | None = None, timeout_s: float = 5.0,
               headers: dict[str, str] | None = None) -> str:
        """Check a server someone else started: /health must answer 200 and /v1/models must list
        something (or `model`, when given). Returns the normalized OpenAI base url."""
        base = normalize_base_url(url)
        try:
            with httpx.Client(timeout=timeout_s, trust_env=False) as c:
                h = c.get(_root(base) + "/health")
                if h.status_code != 200:
                    raise WorkerError(f"server at {base}: /health answered HTTP {h.status_code}", url=base)
                r = c.get(base + "/models", headers=headers or {})
                r.raise_for_status()
                models = [m["id"] for m in r.json().get("data", [])]
        except httpx.HTTPError as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", (headers or {}).values())
            raise WorkerError(f"no usable server at {base}: {detail}", url=base) from exc
        if not models:
            raise WorkerError(f"server at {base} serves no models", url=base)
        if model is not None and model not in models:
            raise WorkerError(f"server at {base} serves {models}, not {model!r}", url=base)
        return base
