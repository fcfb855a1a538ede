"""The worker room's settings: how a vLLM server is started (`ServerSettings`), how the rig calls the
worker (`WorkerSettings`) and what it does when the worker stops answering (`WatchSettings`).

WHY here and not in configs/: a setting lives with the code it configures, and has one default. A
profile's ``worker:`` section *is* a `WorkerSettings` (configs composes it, pydantic validates it),
`ServerSpec` extends `ServerSettings`, and `WorkerClient`, `TransformersWorker` and `WorkerWatch`
take their keyword defaults from these classes, so no second default can drift
(tests/unit/test_settings.py checks it).

Plain dataclasses with pydantic metadata: the worker runs without pydantic validation (tests, bench),
and a profile gets bounds checks and "unknown key" errors from configs' loader.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

# One default for the weights' dtype everywhere (vLLM, the in-process worker, interp's replay): "auto"
# serves the checkpoint as published (bf16 for Qwen2.5 and SmolLM2) instead of silently casting it; a
# profile that wants FP16 (the A4500 rigs: bf16 halves nothing and costs on older cards) says so.
DEFAULT_DTYPE = "auto"

_FORBID = {"extra": "forbid"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(kw_only=True)
class ServerSettings:
    """How to reach an OpenAI-compatible vLLM server: attach by ``url``, or start one with these flags."""

    __pydantic_config__ = _FORBID

    url: str | None = None  # attach to an already-running server instead of starting one
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000  # 0 picks a free port at start
    device: Literal["cpu", "cuda"] = "cpu"
    cuda_visible_devices: str | None = None  # e.g. "1" pins the server to the second GPU
    max_model_len: Annotated[int, Field(ge=128)] = 4096
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    quantization: str | None = None
    max_num_seqs: Annotated[int, Field(ge=1)] | None = None
    enforce_eager: bool = False  # skip graph capture / compile: faster start, slower decode
    # reuse the KV cache of a shared prompt prefix (a controller's growing conversation); None: vLLM's default
    enable_prefix_caching: bool | None = None
    startup_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    cpu_kvcache_space_gb: Annotated[int, Field(ge=1)] = 1  # VLLM_CPU_KVCACHE_SPACE on CPU
    # "vllm" ignores the model's generation_config.json, so requests get exactly the sampling the
    # client asks for (Qwen2.5 ships repetition_penalty=1.05, which would silently skew "greedy").
    generation_config: str = "vllm"
    access_log: bool = False  # uvicorn's per-request log lines cost CPU on small machines
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # applied last, overrides everything
    # A hosted or keyed server: the NAME of the environment variable holding its API key, never the key (a
    # profile is saved into every run folder). A server the rig starts gets the key through vLLM's own
    # VLLM_API_KEY variable, so it never reaches a command line or a log.
    api_key_env: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra HTTP headers on every request (stored: no secrets)
    # secret headers (e.g. a hosted service's `api-key:`): header name -> the environment variable holding its value
    headers_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"server.device must be 'cpu' or 'cuda', got {self.device!r}")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"server.port must be in 0..65535, got {self.port}")
        if self.max_model_len <= 0:
            raise ValueError(f"server.max_model_len must be positive, got {self.max_model_len}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"server.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"server.startup_timeout_s must be positive, got {self.startup_timeout_s}")
        if self.cpu_kvcache_space_gb <= 0:
            raise ValueError(f"server.cpu_kvcache_space_gb must be positive, got {self.cpu_kvcache_space_gb}")
        if isinstance(self.extra_args, str):
            raise ValueError("server.extra_args must be a list of strings, not one string")
        # a value here is often a key pasted by mistake: never echo it
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(str(self.api_key_env)):
            raise ValueError("server.api_key_env is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        for name, var in self.headers_env.items():
            if not _ENV_NAME.fullmatch(str(var)):
                raise ValueError(f"server.headers_env.{name} is not an environment variable name "
                                 "([A-Za-z_][A-Za-z0-9_]*)")

    def api_key(self) -> str | None:
        """The key from the named environment variable (None without ``api_key_env``); MissingSecret when unset
        (as for every ``headers_env`` variable)."""
        self.secret_headers()
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise MissingSecret(f"server.api_key_env names {self.api_key_env}, but that environment variable is unset "
                                "or empty: export it before starting the rig")
        return key

    def auth_headers(self) -> dict[str, str]:
        """The headers every request to this server carries: the profile's extra ones, the secret ones read from
        their variables, and the bearer key."""
        key = self.api_key()
        return {**self.headers, **self.secret_headers(), **({"Authorization": f"Bearer {key}"} if key else {})}

    def secret_headers(self) -> dict[str, str]:
        out = {}
        for name, var in self.headers_env.items():
            value = os.environ.get(var)
            if not value:
                raise MissingSecret(f"server.headers_env.{name} names {var}, but that environment variable is unset or "
                                    "empty: export it before starting the rig")
            out[name] = value
        return out


class MissingSecret(ValueError):
    """A profile names an API-key variable that is not set: one line, exit 2."""


@dataclass(kw_only=True)
class Sampling:
    """How one level samples (``controller.sampling``, ``worker.sampling``): one default per setting.

    WHY a type of its own: the controller, the worker and each sub_call depth may sample differently, and a
    seed must reach the server with the rest so a sampled run can be repeated."""

    __pydantic_config__ = _FORBID

    temperature: Annotated[float, Field(ge=0.0)] = 0.0  # 0: greedy
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    seed: int | None = None  # per-request seed (vLLM); None: the server's own randomness

    def request(self) -> dict[str, float | int]:
        """The request body's sampling fields (seed only when set)."""
        body: dict[str, float | int] = {"temperature": float(self.temperature), "top_p": float(self.top_p)}
        if self.seed is not None:
            body["seed"] = int(self.seed)
        return body


@dataclass(kw_only=True)
class WatchSettings:
    """What the rig does when its worker stops answering (see worker/watch.py)."""

    __pydantic_config__ = _FORBID

    max_restarts: Annotated[int, Field(ge=0)] = 2  # restarts of a server the rig started itself, per eval
    backoff_s: Annotated[float, Field(ge=0)] = 2.0  # wait before restart k: backoff_s * 2**(k-1)
    attached_wait_s: Annotated[float, Field(ge=0)] = 30.0  # how long to wait for an attached server to come back
    retries: Annotated[int, Field(ge=0)] = 2  # re-sends of a sub_call that failed for worker reasons


@dataclass(kw_only=True)
class WorkerSettings:
    """The worker model and how the rig calls it (a profile's ``worker:`` section)."""

    __pydantic_config__ = _FORBID

    model: Annotated[str, AfterValidator(lambda v: _check(v))]  # hub id, local folder or builtin (worker.models)
    backend: Literal["vllm", "transformers"] = "vllm"
    served_name: str | None = None
    dtype: str = DEFAULT_DTYPE  # weights dtype, for vLLM and for the in-process worker / interp replay
    device: str = "cpu"  # torch device of the in-process worker and of interp's replay copy
    # requests in flight to the worker at once (all examples' sub_calls share them); cf. eval.max_samples
    max_connections: Annotated[int, Field(ge=1)] = 8
    timeout_s: Annotated[float, Field(gt=0)] = 120.0  # one request, retries not included
    max_retries: Annotated[int, Field(ge=0)] = 4  # transport-level re-sends (connection errors, 5xx)
    max_tokens: Annotated[int, Field(ge=1)] = 256  # tokens one sub_call may generate
    sampling: Sampling = field(default_factory=Sampling)  # was worker.temperature (configs.load.RENAMED)
    # sub_calls made at depth d (1: from the root run) sample with sampling_by_depth[d] when it is given
    sampling_by_depth: Annotated[dict[int, Sampling], AfterValidator(lambda v: _call_depths(v))] = field(
        default_factory=dict)
    system_prompt: str | None = None
    default: bool = False  # in a profile's ``workers:`` map, the one worker a call without model= goes to
    replica_urls: list[str] = field(default_factory=list)  # extra vLLM replicas, round-robin
    watch: WatchSettings = field(default_factory=WatchSettings)
    server: ServerSettings = field(default_factory=ServerSettings)

    def __post_init__(self) -> None:
        self.model = _check(self.model)


def _call_depths(v: dict[int, Sampling]) -> dict[int, Sampling]:
    """A key below 1 would never be read (the root run's own calls are depth 1): a typo, not a setting."""
    bad = sorted(d for d in v if d < 1)
    if bad:
        raise ValueError(f"depth {bad[0]} makes no worker calls (1: the calls of the root run; the worker's own "
                         "default is worker.sampling)")
    return v


def _check(ref: str) -> str:
    from rlm_rig.worker.models import check_model_ref

    return check_model_ref(ref)
