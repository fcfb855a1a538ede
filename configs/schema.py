"""Validated rig profiles.

Every section forbids unknown keys, so a typo in a YAML profile fails at load time with the
key and the file named, instead of silently falling back to a default mid-run.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Names the rig can build or fetch itself instead of a hub id or a path.
BUILTIN_MODELS = ("tiny", "smollm2")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_model_ref(ref: str, base_dir: Path | None = None) -> str:
    """Accept a hub id (``org/name``), a builtin (``tiny``, ``tiny:SEED``, ``smollm2``) or an existing local path.

    Anything that looks like a path (starts with ``/ . ~`` or exists on disk) must exist and hold a
    ``config.json``, so a wrong path fails before a server or a model load is attempted.
    """
    ref = ref.strip()
    if not ref:
        raise ValueError("model must not be empty")
    if ref.split(":", 1)[0] in BUILTIN_MODELS:
        return ref
    looks_like_path = ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or ref.endswith((".gguf", ".safetensors"))
    p = Path(ref).expanduser()
    if not p.is_absolute() and base_dir is not None and not p.exists() and (base_dir / p).exists():
        p = base_dir / p
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists():
            raise ValueError(f"model path {ref!r} exists but has no config.json")
        return str(p.resolve())
    if looks_like_path or not _HUB_ID.match(ref):
        raise ValueError(f"model path {ref!r} does not exist (and is not a hub id like 'Qwen/Qwen2.5-7B-Instruct')")
    return ref


class ServerConfig(Strict):
    """How to reach an OpenAI-compatible vLLM server: attach by ``url`` or start one with these flags."""

    url: str | None = Field(None, description="attach to an already-running server instead of starting one")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    device: Literal["cpu", "cuda"] = "cpu"
    cuda_visible_devices: str | None = None
    max_model_len: int = Field(4096, ge=128)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    quantization: str | None = None
    max_num_seqs: int | None = Field(None, ge=1)
    enforce_eager: bool = Field(False, description="skip graph capture/compile: faster start, slower decode")
    enable_prefix_caching: bool | None = Field(
        None, description="reuse the KV cache of a shared prompt prefix (a controller's growing conversation); None: vLLM's default"
    )
    startup_timeout_s: float = Field(600.0, gt=0)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class WorkerWatchConfig(Strict):
    """What the rig does when its worker stops answering (see worker/watch.py)."""

    max_restarts: int = Field(2, ge=0, description="restarts of a server the rig started itself, per eval")
    backoff_s: float = Field(2.0, ge=0, description="wait before restart k: backoff_s * 2**(k-1)")
    attached_wait_s: float = Field(30.0, ge=0, description="how long to wait for an attached server to come back")
    retries: int = Field(2, ge=0, description="re-sends of a sub_call that failed for worker reasons")


class WorkerConfig(Strict):
    backend: Literal["vllm", "transformers"] = "vllm"
    model: str
    served_name: str | None = None
    dtype: str = Field("float16", description="weights dtype, for vLLM and for the in-process/interp replay")
    device: str = "cpu"
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    system_prompt: str | None = None
    replica_urls: list[str] = Field(default_factory=list, description="extra vLLM replicas, round-robin")
    watch: WorkerWatchConfig = Field(default_factory=WorkerWatchConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_model_ref(v)


class ControllerConfig(Strict):
    backend: Literal["transformers", "openai", "replay"]
    model: str | None = None
    quantization: Literal["none", "nf4", "fp4"] = "none"
    device: str = "cpu"
    dtype: str = "bfloat16"
    max_new_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    replay_file: str | None = None
    served_name: str | None = None
    server: ServerConfig | None = None
    context_tokens: int | None = Field(
        None, ge=256, description="the controller's window for the context guard; default: the server's max_model_len, "
        "else the model's max_position_embeddings (transformers), else unguarded (replay)"
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return None if v is None else check_model_ref(v)

    @model_validator(mode="after")
    def _needs(self) -> "ControllerConfig":
        if self.backend in ("transformers", "openai") and not self.model:
            raise ValueError(f"controller.model is required for backend {self.backend!r}")
        if self.backend == "replay" and self.replay_file and not Path(self.replay_file).expanduser().exists():
            raise ValueError(f"controller.replay_file {self.replay_file!r} does not exist")
        if self.backend == "openai" and self.server is None:
            raise ValueError("controller.server is required for backend 'openai' (give url: or start flags)")
        return self


class RLMConfig(Strict):
    max_iterations: int = Field(12, ge=1)
    max_depth: int = Field(1, ge=1, description="1: sub_calls are plain worker calls; 2+: nested RLMs")
    max_sub_calls: int = Field(200, ge=0)
    cell_timeout_s: float = Field(120.0, gt=0)
    output_max_chars: int = Field(4000, ge=100)
    max_controller_tokens: int = Field(200_000, ge=1)
    chunk_budget_tokens: int | None = Field(
        None, ge=16, description="max worker tokens per chunk; default derived from worker max_model_len"
    )
    instruction_reserve_tokens: int = Field(256, ge=0)
    max_example_wall_s: float | None = Field(
        None, gt=0, description="per-example wall-clock cap; the run then ends with its best answer so far"
    )
    max_consecutive_cell_errors: int | None = Field(
        None, ge=1, description="stop after this many cells in a row failed (error, timeout, restart)"
    )


class SandboxConfig(Strict):
    memory_mb: int = Field(4096, ge=256)
    max_output_chars: int = Field(1_000_000, ge=1000)
    network: bool = False
    launcher: Literal["auto", "bwrap", "unshare", "none"] = Field(
        "auto", description="auto: bubblewrap, else (only where allowed) unshare, else a plain process")
    allow_weak_launchers: bool = Field(
        False, description="as root, let 'auto' fall back below bubblewrap (the kernel is then root on the host; "
                           "see docs/SANDBOX.md)")
    max_scratch_mb: int = Field(1024, ge=1, description="total size of the kernel's scratch folder (bubblewrap)")


class EvalConfig(Strict):
    concurrency: int = Field(1, ge=1, description="examples run at once; their sub_calls share the worker")
    method: Literal["rlm", "direct", "chunk-aggregate", "no-subcall", "bm25-rag"] = "rlm"
    chunk_chars: int | None = Field(None, ge=100, description="baseline chunk size; default from the chunk budget")
    top_k: int = Field(4, ge=1)
    direct_truncation: Literal["head", "tail", "middle"] = "head"


class ClusterConfig(Strict):
    """What one rig replica asks of a Ray cluster (`rlm-rig eval --ray ADDRESS --replicas N`).

    A replica is what one box runs: its own worker server, its served controller where the profile has one, its
    sandboxes. WHY GPUs are one STRICT_PACK bundle: the controller and the worker of one replica talk over loopback
    and each server is pinned to one card of the same node, so the replica's cards must sit on one node."""

    cpus: float = Field(1.0, gt=0, description="CPUs one replica reserves (its sandboxes, its client threads)")
    gpus: int = Field(0, ge=0, description="GPUs one replica reserves, all on one node (STRICT_PACK)")
    max_example_retries: int = Field(
        2, ge=0, description="re-runs of an example whose replica died mid-example; then `error: replica`")
    start_timeout_s: float = Field(1800.0, gt=0, description="how long the driver waits for a replica's servers")


class RigConfig(Strict):
    name: str
    description: str = ""
    controller: ControllerConfig
    worker: WorkerConfig
    rlm: RLMConfig = Field(default_factory=RLMConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    interp: dict[str, Any] = Field(default_factory=dict, description="validated by interp.config")
    runs_dir: str = "runs"

    def chunk_budget(self) -> int:
        """Worker tokens one chunk may use: the window minus the answer and the instruction."""
        if self.rlm.chunk_budget_tokens is not None:
            return self.rlm.chunk_budget_tokens
        window = self.worker.server.max_model_len
        return max(64, window - self.worker.max_tokens - self.rlm.instruction_reserve_tokens)

    def hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
