"""A rig profile: the rooms' own settings types, composed.

Each section is the settings type of the room that reads it (`worker.settings.WorkerSettings`,
`controller.settings.ControllerSettings` / `RLMSettings`, `repl.SandboxLimits`,
`interp.config.InterpConfig`), so every setting has one definition and one default, and the code
receives its section whole. The one section owned here is ``eval:``, because the code it configures
(experiments/) stands above configs. Unknown keys fail at load time with the key and the file named.
"""
from __future__ import annotations

import hashlib
import json
from typing import Literal, get_args

from pydantic import Field

from rlm_rig.controller.settings import ControllerSettings, RLMSettings, Strict
from rlm_rig.interp.config import InterpConfig
from rlm_rig.repl.types import SandboxLimits
from rlm_rig.worker.settings import WorkerSettings


# The eval methods by name (experiments/runs/methods.py implements each; its METHODS is this tuple).
METHOD_NAMES = ("rlm", "direct", "chunk-aggregate", "no-subcall", "bm25-rag")
MethodName = Literal["rlm", "direct", "chunk-aggregate", "no-subcall", "bm25-rag"]
assert get_args(MethodName) == METHOD_NAMES


class EvalSettings(Strict):
    """How ``rlm-rig eval`` runs a dataset (experiments/runs reads it)."""

    max_samples: int = Field(1, ge=1, description="examples in flight at once; their sub_calls share the worker's "
                             "worker.max_connections")
    method: MethodName = Field(
        "rlm", description="the method `eval` runs when --method is not given")
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
    controller: ControllerSettings = Field(default_factory=ControllerSettings)
    worker: WorkerSettings
    rlm: RLMSettings = Field(default_factory=RLMSettings)
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    interp: InterpConfig = Field(default_factory=InterpConfig)
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
