"""One rig replica: what one box runs for an eval (its worker server, its served controller where the profile has
one, its sandboxes), as a Ray actor's body. The driver (experiments/runs/cluster.py) makes it an actor.

WHY the replica never writes the run folder: replicas sit on other nodes whose disks the driver cannot see, and two
writers of samples.jsonl would break the one-writer rule that makes ``--resume`` exact. A replica runs examples in a
scratch folder on its own node and hands back the sample row and the trajectory's JSON; the driver writes both
through RunFolder. Its server logs stay in the scratch folder (their path is in the run log).

This module does not import Ray: the class is plain Python, so it is importable (and readable) without the
``cluster`` extra; ``ray.remote`` is applied by the driver.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rlm_rig.configs.schema import RigConfig
from rlm_rig.controller.rig import Rig
from rlm_rig.records.runlog import EvalSpec, RunFolder
from rlm_rig.experiments.datasets.example import Example


def pin_to_assigned_gpus(cfg: RigConfig, assigned: list[str]) -> RigConfig:
    """The profile's card indices, read inside the replica's share of the node.

    A profile pins its servers by index (``cuda_visible_devices: "1"``: the worker on the box's second card). Ray
    gives a replica some cards of a node (e.g. 2 and 3 of four) and sets CUDA_VISIBLE_DEVICES to them, so index i
    means the i-th assigned card. Ports become 0 (free ones): two replicas on one node must not both want 8000."""
    data = cfg.model_dump(mode="json")
    servers = [data["worker"]["server"]]
    if data["controller"].get("server"):
        servers.append(data["controller"]["server"])
    for srv in servers:
        if srv.get("url"):
            continue
        srv["port"] = 0
        cvd = srv.get("cuda_visible_devices")
        if assigned and cvd is not None:
            try:
                srv["cuda_visible_devices"] = ",".join(str(assigned[int(i)]) for i in str(cvd).split(",") if i.strip())
            except (ValueError, IndexError):
                raise ValueError(f"the profile pins a server to card(s) {cvd!r} but this replica holds only "
                                 f"{len(assigned)} card(s) (cluster.gpus)") from None
    return RigConfig.model_validate(data)


class RigReplica:
    """A rig started on the actor's node; ``run`` takes one example at a time, from several driver slots at once
    (the actor is threaded: ``max_concurrency`` = the profile's ``eval.max_samples``, plus one for control calls)."""

    def __init__(self, replica_id: int, cfg_data: dict[str, Any], spec_data: dict[str, Any]):
        self.id = replica_id
        self.host = socket.gethostname()
        self.cfg_data = cfg_data
        self.spec = EvalSpec.model_validate(spec_data)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"rlm-rig-replica{replica_id}-"))
        self.folder = RunFolder(self.scratch)
        self.rig: Rig | None = None
        self.examples = 0
        self.busy_s = 0.0
        self.t0 = time.time()
        self._lock = threading.Lock()

    def start(self) -> dict[str, Any]:
        """Start the servers on this node; the replica's facts for the run log."""
        from rlm_rig.configs.load import validate_config

        try:
            import ray

            assigned = [str(g) for g in ray.get_gpu_ids()]
            ctx = ray.get_runtime_context()
            resources, node = ctx.get_assigned_resources(), ctx.get_node_id()[:12]
        except Exception:  # noqa: BLE001 - outside an actor (tests of this class alone)
            assigned, resources, node = [], {}, None
        cfg = pin_to_assigned_gpus(validate_config(self.cfg_data, "<driver's profile>"), assigned)
        self.rig = Rig(cfg, run_dir=self.scratch, controller_replay=self.spec.controller_replay)
        self.rig.__enter__()
        return {"id": self.id, "host": self.host, "node": node, "pid": os.getpid(), "gpus": assigned,
                "resources": resources,
                "worker_url": self.rig.worker_url, "logs": str(self.scratch / "logs"),
                "start_s": round(time.time() - self.t0, 2)}

    def run(self, ex: Example) -> dict[str, Any]:
        """One example: its sample row (with this replica named) and its trajectory's JSON text. A replica whose
        worker is gone for good answers ``{"retired": why}`` instead, and the driver gives the example to another."""
        from rlm_rig.experiments.runs.evaluate import sample_row
        from rlm_rig.experiments.runs.methods import run_method

        rig = self.rig
        assert rig is not None, "replica not started"
        if rig.worker_dead:
            return {"retired": f"replica {self.id}: the worker cannot be brought back ({rig.worker_dead})"}
        t0 = time.perf_counter()
        tpath = self.folder.trajectory_path(ex.id)
        traj = run_method(self.spec.method, rig, ex.context, ex.question, run_id=ex.id, save_to=tpath,
                          instructions=ex.instructions)
        n_tokens = rig.doc_tokens(ex.context)  # cached by document hash, as in the single-box eval
        row = sample_row(ex, self.spec.method, traj, str(tpath.relative_to(self.scratch)), n_tokens)
        row.replica = {"id": self.id, "host": self.host}
        text = tpath.read_text(encoding="utf-8") if tpath.exists() else traj.model_dump_json()
        tpath.unlink(missing_ok=True)
        with self._lock:
            self.examples += 1
            self.busy_s += time.perf_counter() - t0
        return {"row": row.model_dump(mode="json"), "trajectory": text}

    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "examples": self.examples, "busy_s": round(self.busy_s, 2),
                "wall_s": round(time.time() - self.t0, 2)}

    def stop(self, log_bytes: int = 262_144) -> dict[str, Any]:
        """Stop every server and sandbox of this replica (the driver then kills the actor). Returns its figures and
        the tail of each log it wrote (server logs, rig.log), which the driver files under RUN/logs/; the scratch
        folder is then removed."""
        s = self.stats()
        if self.rig is not None:
            self.rig.close()
            self.rig = None
        logs = {}
        for p in sorted((self.scratch / "logs").glob("*.log")):
            with open(p, "rb") as fh:
                fh.seek(max(0, p.stat().st_size - log_bytes))
                logs[p.name] = fh.read().decode("utf-8", "replace")
        shutil.rmtree(self.scratch, ignore_errors=True)
        return {**s, "logs": logs}
