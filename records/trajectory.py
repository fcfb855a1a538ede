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
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2
# Versions this code reads. 2 added SubCallRecord.token_ids / token_logprobs (optional, so a version-1
# file validates unchanged and keeps its own schema_version).
READABLE_SCHEMA_VERSIONS = (1, 2)

StopReason = Literal["final", "max_iterations", "cap", "context", "error"]


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
    prompt_restored: bool = Field(False, description="the kernel's `prompt` had been altered and was restored")
    # Who vouches (docs/SANDBOX.md): "verified" by the parent, "claimed" by the kernel only, or
    # "violated". Old records without these read as "claimed" / None.
    prompt_integrity: str = Field("claimed", description="`prompt` at the cell's start: verified|claimed|violated")
    final_integrity: str | None = Field(None, description="final answer: verified (a literal in the code)|claimed")
    final_var: str | None = Field(None, description="the FINAL_VAR name the kernel resolved the answer from")


class SubCallRecord(BaseModel):
    """One sub_call: a chunk plus an instruction sent to the worker (or a nested RLM)."""

    # a nested run assigned as JSON (an older writer, a test) is still validated into a Trajectory
    model_config = ConfigDict(validate_assignment=True)

    id: int
    cell: int
    depth: int
    kind: Literal["llm", "rlm", "tool"] = Field(
        "llm", description="llm: a plain worker call (sub_call, llm_query); rlm: a child RLM (rlm_query, or a sub_call "
        "at max_depth >= 2); tool: a custom tool run in the parent (older records read as llm)")
    model: str | None = Field(None, description="the model= the call named (None: the default worker)")
    fallback: str | None = Field(
        None, description="why an rlm call ran as a plain worker call instead: 'max_depth' (the depth limit)")
    tool: str | None = Field(None, description="the custom tool's name (kind tool); instruction holds its JSON args")
    batch: int | None = None
    chunk_start: int | None = None
    chunk_end: int | None = None
    chunk_item: int | str | None = Field(
        None, description="list/dict contexts: the item (index or key) where the chunk starts, chunk_start's item")
    chunk_item_offset: int | None = Field(None, description="list/dict contexts: the chunk's offset inside that item")
    chunk_chars: int
    chunk_tokens: int | None = None
    instruction: str
    response: str | None = None
    error: str | None = None
    error_kind: str | None = Field(
        None, description="why it failed: worker (server down, timeout) | context_length | request | nested | other"
    )
    worker_retries: int = Field(0, description="times re-sent after a worker failure (worker/watch.py)")
    model: str | None = Field(None, description="the worker it went to, by its name in the profile's workers "
                              "(the default worker is `worker` when the profile has one)")
    sampling: dict[str, Any] | None = Field(
        None, description="sampling sent with the call beyond the worker's own (worker.sampling_by_depth)")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    nested_trajectory: Trajectory | None = Field(
        None, description="at max_depth >= 2: the nested RLM run this sub_call was (walk them with Trajectory.walk)")
    # The exact chat messages sent to the worker, so interp can replay the same prompt.
    messages: list[dict[str, str]] | None = None
    # schema 2: what the worker generated, as the served model saw it (vLLM's ids, not a re-tokenization
    # of `response`), and each token's logprob under it. interp teacher-forces these ids and compares.
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None
    source: Literal["model", "tape", "fork"] = Field(
        "model", description="who answered: the worker (model), a recorded tape (--tape), or a fork's replaced reply")
    # The worker's confidence in its reply (controller/confidence.py), and the rlm.low_confidence policy's traces.
    confidence: float | None = Field(None, description="P(the reply's answer): exp(sum of the logprobs of its first integer's "
                                      "tokens), else of the whole reply; None without logprobs")
    resplit_of: int | None = Field(None, description="resplit policy: this call re-asked a half of sub_call #N's chunk")
    replaced_by: str | None = Field(None, description="resplit policy: what the program got instead of `response`")


class CapEvent(BaseModel):
    """A configured cap that was hit, as told to the model."""

    cap: Literal["sub_calls", "chunk_tokens", "cell_timeout", "controller_tokens", "max_iterations", "depth",
                 "wall_clock", "cell_errors", "context", "tool_calls"]
    turn: int
    detail: str
    repeats: int = Field(0, description="further hits of this cap in the same turn, counted, not kept (a kernel "
                                        "flooding refused calls must not grow the record)")


class Compaction(BaseModel):
    """Older turns of a session's controller conversation replaced by the controller's own summary, because
    the conversation no longer fitted its window (controller/session.py)."""

    before_turn: int = Field(description="index of the first turn of this run that saw the compacted conversation")
    messages_replaced: int
    tokens_before: int
    tokens_after: int
    summary: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Trajectory(BaseModel):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    question: str
    task_instructions: str | None = Field(None, description="the dataset's task instructions, shown to the controller")
    doc_chars: int
    doc_sha256: str
    doc_layout: dict[str, Any] | None = Field(
        None, description="a list/dict context: type, length, item_chars (and keys); offsets index the items' texts "
        "joined in order. None: one string")
    config: dict[str, Any]
    config_hash: str
    models: dict[str, str]
    versions: dict[str, str]
    depth: int = 0
    controller_sampling: dict[str, Any] | None = Field(
        None, description="temperature, top_p, seed this run's controller was asked to sample with: "
        "controller.sampling_by_depth[depth], else controller.sampling (a replay ignores it; None: not recorded)")
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
    error_kind: str | None = Field(None, description="why the run errored, as SubCallRecord.error_kind (worker: not valid)")
    isolation: dict[str, Any] | None = Field(
        None, description="the sandbox's IsolationReport for this run's kernel, as the kernel observed it")
    session: dict[str, Any] | None = Field(
        None, description="a session's question: {id, question (1-based)}; its REPL and conversation went on")
    compactions: list[Compaction] = Field(default_factory=list)

    # -- nested runs and derived figures used by sample rows and reports ------------------
    def walk(self) -> Iterator["Trajectory"]:
        """This run and every nested run below it, depth first (the one way to visit nested runs)."""
        yield self
        for s in self.sub_calls:
            if s.nested_trajectory is not None:
                yield from s.nested_trajectory.walk()

    def leaf_sub_calls(self) -> Iterator[SubCallRecord]:
        """Sub_calls answered by the worker itself, at any depth (not the ones that were nested runs)."""
        for t in self.walk():
            yield from (s for s in t.sub_calls if s.nested_trajectory is None)

    def controller_tokens(self) -> tuple[int, int]:
        """Controller tokens in and out, nested runs included."""
        turns = [turn for t in self.walk() for turn in t.turns]
        return sum(t.prompt_tokens for t in turns), sum(t.completion_tokens for t in turns)

    def worker_tokens(self) -> tuple[int, int]:
        """Worker tokens in and out over every leaf sub_call, nested runs included."""
        leaves = list(self.leaf_sub_calls())
        return sum(s.prompt_tokens for s in leaves), sum(s.completion_tokens for s in leaves)

    def save(self, path: str | Path, *, fsync: bool = True) -> Path:
        """Never fails on content: a string that is not valid UTF-8 (a lone surrogate) is repaired."""
        try:
            text = self.model_dump_json(indent=1)
        except (ValueError, UnicodeError):  # pydantic refuses lone surrogates
            text = json.dumps(_clean(self.model_dump(mode="json")), indent=1, ensure_ascii=False)
        return atomic_write_text(path, text, fsync=fsync)

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        """Read any readable schema version (1 has no token ids/logprobs: those fields stay None)."""
        data = json.loads(Path(path).read_text())
        version = data.get("schema_version", 1) if isinstance(data, dict) else None
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(f"{path}: trajectory schema_version {version!r} is not one this rig reads "
                             f"{list(READABLE_SCHEMA_VERSIONS)}")
        return cls.model_validate(data)


SubCallRecord.model_rebuild()


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
    error: str | None = Field(None, description='"worker" marks a sample hit by worker failures, "replica" one whose '
                              'cluster replicas kept dying under it: not a valid answer, --resume redoes it')
    n_sub_call_failures: int = Field(0, description="failed sub_calls, all depths")
    sub_call_failures: dict[str, int] = Field(default_factory=dict, description="failed sub_calls by error_kind")
    replica: dict[str, Any] | None = Field(None, description="the cluster replica that ran it: {id, host} (--ray runs)")
    extra: dict[str, Any] = Field(default_factory=dict)


def _clean(value: Any) -> Any:
    """A record with every lone surrogate (a cell may print one; UTF-8 cannot hold it) made U+FFFD.
    Done with the codec, not repl's cleaner, so this leaf imports nothing of the rig."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Write via a temp file + rename, so a SIGKILL never leaves a half-written record.

    ``fsync`` also makes it survive a power cut; intermediate snapshots skip it (it costs ~7 ms).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
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
    line = json.dumps(_clean(record), ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
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
