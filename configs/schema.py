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

from pydantic import Field, model_validator

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
    # the default worker; with a ``workers:`` map it is that map's entry marked ``default: true`` (filled in)
    worker: WorkerSettings
    # several sub-models by name; a call picks one with model= (controller.subcalls.route_for). Empty: one
    # worker, the ``worker:`` section, named "worker".
    workers: dict[str, WorkerSettings] = Field(default_factory=dict)
    rlm: RLMSettings = Field(default_factory=RLMSettings)
    sandbox: SandboxLimits = Field(default_factory=SandboxLimits)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    interp: InterpConfig = Field(default_factory=InterpConfig)
    runs_dir: str = "runs"

    @model_validator(mode="before")
    @classmethod
    def _default_worker(cls, data: object) -> object:
        """``workers:`` without ``worker:``: the default entry becomes ``worker`` (the rest of the rig reads it)."""
        if isinstance(data, dict) and isinstance(data.get("workers"), dict) and "worker" not in data:
            marked = [n for n, w in data["workers"].items() if _marked(w)]
            if len(marked) != 1:
                raise ValueError(_defaults_msg(marked))
            data = {**data, "worker": data["workers"][marked[0]]}
        return data

    @model_validator(mode="after")
    def _one_default(self) -> "RigConfig":
        if not self.workers:
            return self
        marked = [n for n, w in self.workers.items() if w.default]
        if len(marked) != 1:
            raise ValueError(_defaults_msg(marked))
        if self.worker != self.workers[marked[0]]:
            raise ValueError("give either a worker: section or a workers: map (its default entry is the worker)")
        return self

    def worker_map(self) -> dict[str, WorkerSettings]:
        """Every worker by name, the default first."""
        if not self.workers:
            return {"worker": self.worker}
        name = self.default_worker_name()
        return {name: self.workers[name], **{n: w for n, w in self.workers.items() if n != name}}

    def default_worker_name(self) -> str:
        return next((n for n, w in self.workers.items() if w.default), "worker")

    def chunk_budget(self) -> int:
        """Worker tokens one chunk may use: the window minus the answer and the instruction."""
        if self.rlm.chunk_budget_tokens is not None:
            return self.rlm.chunk_budget_tokens
        window = self.worker.server.max_model_len
        return max(64, window - self.worker.max_tokens - self.rlm.instruction_reserve_tokens)

    def hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _marked(w: object) -> bool:
    return bool(w.get("default")) if isinstance(w, dict) else bool(getattr(w, "default", False))


def _defaults_msg(marked: list[str]) -> str:
    return (f"workers: exactly one entry needs `default: true`, found {len(marked)}"
            + (f" ({', '.join(marked)})" if marked else ""))
