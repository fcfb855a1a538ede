"""One folder per evaluation run, in inspect_ai's spirit, safe against SIGKILL at any moment.

Layout::

    RUN/config.yaml        the resolved rig config
    RUN/eval.json          what was asked: dataset, filters, method, shard (resume reads it)
    RUN/env.json           git SHA + dirty flag, package versions, GPU names, server flags
    RUN/samples.jsonl      one SampleRow per finished example (append + fsync)
    RUN/trajectories/      one Trajectory per example (atomic write)
    RUN/logs/              vLLM server logs
    RUN/results.json       status + summary (atomic write)

A sample counts as done only once its line is in samples.jsonl, and that line is written after its
trajectory, so a kill between the two reruns the example and overwrites its trajectory: nothing
finished is lost and nothing is duplicated.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.records import SampleRow, append_jsonl, atomic_write_text, read_jsonl


def is_worker_invalid(row: Any) -> bool:
    """A row whose sub_calls failed for worker reasons: not a valid answer (worker/watch.py)."""
    err = row.get("error") if isinstance(row, dict) else getattr(row, "error", None)
    return err == "worker"


def pick_rows(rows: list[Any]) -> list[Any]:
    """Per id (first-seen order): the first valid row, else the first row. Rows are dicts or SampleRows."""
    chosen: dict[str, Any] = {}
    for r in rows:
        rid = r["id"] if isinstance(r, dict) else r.id
        if rid not in chosen or (is_worker_invalid(chosen[rid]) and not is_worker_invalid(r)):
            chosen[rid] = r
    return list(chosen.values())


@dataclass
class EvalSpec:
    """Everything beyond the config that decides which examples a run holds and how they are run."""

    dataset: str
    source: str | None = None
    split: str = "test"
    method: str = "rlm"
    question_types: list[str] | None = None
    min_episodes: int | None = None
    max_episodes: int | None = None
    max_context_chars: int | None = None
    max_context_tokens: int | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    shard: tuple[int, int] | None = None
    controller_replay: str | None = None
    loader_options: dict[str, Any] = field(default_factory=dict)
    # what each model sees (experiments/datasets/views.py), written by the runner at creation
    model_views: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shard"] = list(self.shard) if self.shard else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvalSpec":
        d = dict(d)
        if d.get("shard"):
            d["shard"] = tuple(d["shard"])
        return cls(**d)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return (i, n)


def git_state() -> dict[str, Any]:
    here = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def gpu_names() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return []


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------
    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    def trajectory_path(self, sample_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)
        return self.path / "trajectories" / f"{safe}.json"

    # -- creation / resume ----------------------------------------------------------------
    def create(self, cfg: Any, spec: EvalSpec, *, server_flags: dict[str, Any] | None = None) -> None:
        if self.samples_path.exists() and read_jsonl(self.samples_path):
            raise FileExistsError(f"{self.path} already holds samples: use `rlm-rig eval --resume {self.path}`")
        (self.path / "trajectories").mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        atomic_write_text(self.path / "eval.json", json.dumps(spec.to_json(), indent=1))
        self.write_env(cfg, server_flags or {})
        self.write_results({"status": "running"})

    def write_env(self, cfg: Any, server_flags: dict[str, Any]) -> None:
        from controller.rig import package_versions

        env = {
            "git": git_state(),
            "versions": package_versions(),
            "gpus": gpu_names(),
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "server_flags": server_flags,
            "config_hash": cfg.hash(),
        }
        atomic_write_text(self.path / "env.json", json.dumps(env, indent=1))

    def load_spec(self) -> tuple[dict[str, Any], EvalSpec]:
        for name in ("config.yaml", "eval.json"):
            if not (self.path / name).exists():
                raise FileNotFoundError(f"{self.path} is not a run folder: {name} is missing")
        cfg_data = yaml.safe_load((self.path / "config.yaml").read_text())
        spec = EvalSpec.from_json(json.loads((self.path / "eval.json").read_text()))
        return cfg_data, spec

    def repair(self) -> None:
        """Cut a torn last line (a kill mid-append) so later appends start on a fresh line."""
        p = self.samples_path
        if not p.exists():
            return
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(p, "r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())

    def done_ids(self) -> set[str]:
        """Ids with a valid row: a row marked ``error="worker"`` is not done, so ``--resume`` redoes it."""
        return {r["id"] for r in read_jsonl(self.samples_path) if not is_worker_invalid(r)}

    def rows(self) -> list[dict[str, Any]]:
        """One row per id: the first valid one, else (only worker-invalid rows) the first."""
        return pick_rows(read_jsonl(self.samples_path))

    # -- writing --------------------------------------------------------------------------
    def append(self, row: SampleRow) -> None:
        with self._lock:
            append_jsonl(self.samples_path, row.model_dump(mode="json"))

    def write_results(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.results_path, json.dumps(data, indent=1, default=str))
