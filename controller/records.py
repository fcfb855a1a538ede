"""The rig's record schemas: the trajectory (one RLM run) and the sample row (one eval example).

These two records are the interfaces between rooms: `controller/` writes trajectories,
`experiments/` writes sample rows and reads trajectories, `interp/` reads trajectories as
plain JSON. Bump ``SCHEMA_VERSION`` on any breaking change and document it in the README.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 2
# Versions this code reads. 2 added SubCallRecord.token_ids / token_logprobs (optional, so a version-1
# file validates unchanged and keeps its own schema_version).
READABLE_SCHEMA_VERSIONS = (1, 2)

StopReason = Literal["final", "max_iterations", "cap", "error"]


class ControllerTurn(BaseModel):
    """One controller generation: what it saw (new messages only) and what it said."""

    index: int
    messages_in: list[dict[str, str]] = Field(
        description="messages appended since the previous turn (the full history is their concatenation)"
    )
    response: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    forced_final: bool = False


class CellRecord(BaseModel):
    """One executed code cell in the sandbox."""

    index: int
    turn: int
    code: str
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    duration_s: float = 0.0
    timed_out: bool = False
    restarted: bool = False
    kill_reason: str | None = None
    notices: list[str] = Field(default_factory=list)
    feedback_truncated: bool = False
    output_truncated: bool = Field(False, description="the sandbox's hard output cap was hit")
    sub_calls: int = 0
    final_answer: str | None = None


class SubCallRecord(BaseModel):
    """One sub_call: a chunk plus an instruction sent to the worker (or a nested RLM)."""

    id: int
    cell: int
    depth: int
    batch: int | None = None
    chunk_start: int | None = None
    chunk_end: int | None = None
    chunk_chars: int
    chunk_tokens: int | None = None
    instruction: str
    response: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    nested_trajectory: dict[str, Any] | None = None
    # The exact chat messages sent to the worker, so interp can replay the same prompt.
    messages: list[dict[str, str]] | None = None
    # schema 2: what the worker generated, as the served model saw it (vLLM's ids, not a re-tokenization
    # of `response`), and each token's logprob under it. interp teacher-forces these ids and compares.
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None


class CapEvent(BaseModel):
    """A configured cap that was hit, as told to the model."""

    cap: Literal["sub_calls", "chunk_tokens", "cell_timeout", "controller_tokens", "max_iterations", "depth"]
    turn: int
    detail: str


class Trajectory(BaseModel):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    question: str
    doc_chars: int
    doc_sha256: str
    config: dict[str, Any]
    config_hash: str
    models: dict[str, str]
    versions: dict[str, str]
    depth: int = 0
    started_at: str
    finished_at: str | None = None
    wall_s: float = 0.0
    model_wall_s: float = Field(0.0, description="wall time spent waiting on the controller or the worker")
    turns: list[ControllerTurn] = Field(default_factory=list)
    cells: list[CellRecord] = Field(default_factory=list)
    sub_calls: list[SubCallRecord] = Field(default_factory=list)
    caps_hit: list[CapEvent] = Field(default_factory=list)
    final_answer: str | None = None
    stop_reason: StopReason | None = None
    error: str | None = None

    # -- derived figures used by sample rows and reports ------------------------------------
    def controller_tokens(self) -> tuple[int, int]:
        """Controller tokens in and out, nested runs included."""
        tin = sum(t.prompt_tokens for t in self.turns)
        tout = sum(t.completion_tokens for t in self.turns)
        for s in self.sub_calls:
            if s.nested_trajectory:
                a, b = Trajectory.model_validate(s.nested_trajectory).controller_tokens()
                tin, tout = tin + a, tout + b
        return tin, tout

    def worker_tokens(self) -> tuple[int, int]:
        """Worker tokens in and out over every leaf sub_call, nested runs included."""
        tin = tout = 0
        for s in self.sub_calls:
            if s.nested_trajectory:
                a, b = Trajectory.model_validate(s.nested_trajectory).worker_tokens()
                tin, tout = tin + a, tout + b
            else:
                tin, tout = tin + s.prompt_tokens, tout + s.completion_tokens
        return tin, tout

    def save(self, path: str | Path, *, fsync: bool = True) -> Path:
        return atomic_write_text(path, self.model_dump_json(indent=1), fsync=fsync)

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        """Read any readable schema version (1 has no token ids/logprobs: those fields stay None)."""
        data = json.loads(Path(path).read_text())
        version = data.get("schema_version", 1) if isinstance(data, dict) else None
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(f"{path}: trajectory schema_version {version!r} is not one this rig reads "
                             f"{list(READABLE_SCHEMA_VERSIONS)}")
        return cls.model_validate(data)


class SampleRow(BaseModel):
    """One line of a run's samples.jsonl."""

    schema_version: int = SCHEMA_VERSION
    id: str
    dataset: str
    method: str
    question: str
    question_type: str | None = None
    episodes: list[int] | None = None
    context_chars: int
    context_tokens: int | None = None
    gold: str
    answer: str | None
    score: float
    parsed: Any = None
    lenient_score: float | None = None
    stop_reason: str | None = None
    n_turns: int = 0
    n_cells: int = 0
    n_cell_errors: int = 0
    n_sub_calls: int = 0
    controller_tokens_in: int = 0
    controller_tokens_out: int = 0
    worker_tokens_in: int = 0
    worker_tokens_out: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    trajectory: str | None = None
    error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Write via a temp file + rename, so a SIGKILL never leaves a half-written record.

    ``fsync`` also makes it survive a power cut; intermediate snapshots skip it (it costs ~7 ms).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it: a killed run keeps every line it finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSONL, dropping a torn last line (a kill mid-write) instead of failing."""
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return rows
    lines = p.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{p}: line {i + 1} is not valid JSON")
    return rows
