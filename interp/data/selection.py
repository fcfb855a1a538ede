"""Select recorded sub_calls of a run folder for replay.

The run folder is read through the records room (`RunFolder` for the file layout and the sample
rows, `Trajectory` for the schema): interp keeps no copy of either.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.trajectory import SubCallRecord, Trajectory


class RunDirError(ValueError):
    """A run folder or a selection that cannot be used."""


# Why a recorded sub_call is not studied; the keys of a tally (see NothingToStudyError).
REASONS = {
    "no_sub_calls": "trajectories without any sub_call",
    "sub_call_error": "sub_calls that failed (no response recorded)",
    "no_worker_messages": "sub_calls without worker messages (nested RLM calls are walked separately)",
    "other_worker": "sub_calls answered by another of the profile's workers (interp replays the default worker's model)",
    "not_selected": "sub_calls left out by the selection (question type, correctness, ids, depth, limit)",
    "no_chunk_span": "sub_calls whose chunk could not be located in their messages",
    "too_long": "sub_calls over the configured token cap",
    "not_a_roll_count": "instructions the pair builder does not understand (not a count of rolls)",
    "filter_not_checkable": "roll-count instructions whose filter the pair builder cannot check",
    "no_equal_length_edit": "sub_calls where no corruption kept the token length",
    "alter_without_value_filter": "'alter' corruptions of instructions that do not filter on a value",
    "unfaithful": "sub_calls whose replay is not faithful to the recorded tokens (interp.faithful_only)",
    "no_gold": "sub_calls without a chunk gold count",
    "no_number": "answers without a number to read",
    "no_controller_turns": "trajectories without controller turns (a method without a controller, or a run cut short)",
    "no_final_answer": "trajectories without a final answer whose first integer can be read",
    "no_cell_output": "trajectories whose cell outputs could not be located in the controller's messages",
    "no_told_value": "controller answers no told value or printed total could be edited without changing the token count",
}


class NothingToStudyError(RunDirError):
    """A run (or selection) that yields nothing to study. The message names every reason with its count,
    so a user sees at once whether the run, the selection or the pair builder is at fault."""

    def __init__(self, what: str, run_dir: str | Path, tally: dict[str, int]):
        self.tally = {k: int(v) for k, v in tally.items() if v}
        parts = [f"{k}={v} ({REASONS.get(k, k)})" for k, v in sorted(self.tally.items(), key=lambda kv: -kv[1])]
        super().__init__(f"nothing to study in {run_dir}: no {what}. Reasons: " + ("; ".join(parts) or
                                                                                   "the run recorded nothing"))


@dataclass(frozen=True)
class SubCallRef:
    """``sample:subcall`` — the id interp uses for one recorded sub_call."""

    sample: str
    sub_call: int

    def __str__(self) -> str:
        return f"{self.sample}:{self.sub_call}"

    @classmethod
    def parse(cls, text: str) -> "SubCallRef":
        sample, sep, sc = text.rpartition(":")
        if not sep or not sample or not sc.strip().lstrip("-").isdigit():
            raise RunDirError(f"sub_call id {text!r} is not of the form SAMPLE:SUBCALL (e.g. 'abc123:4')")
        return cls(sample, int(sc))


@dataclass
class SubCallItem:
    """One replayable sub_call with everything interp needs and nothing of the controller."""

    run: str
    sample: str
    sub_call: int
    messages: list[dict[str, Any]]
    instruction: str
    response: str | None
    chunk_start: int | None
    chunk_end: int | None
    chunk_chars: int
    chunk_loc: "ChunkLocation | None"
    question: str = ""
    question_type: str | None = None
    score: float | None = None
    depth: int = 0
    gold: int | None = None
    gold_source: str | None = None
    completion_tokens: int = 0
    max_tokens: int | None = None  # the worker's max_tokens in the run: a reply this long was cut off
    prompt_tokens: int = 0  # vLLM's prompt token count (0: not recorded)
    token_ids: list[int] | None = None  # the worker's generated ids as recorded (None in schema-1 runs)
    token_logprobs: list[float] | None = None  # their logprobs under the served model

    @property
    def truncated(self) -> bool | None:
        """True when the recorded reply stopped at max_tokens rather than at an end-of-sequence."""
        if self.max_tokens is None or not self.completion_tokens:
            return None
        return self.completion_tokens >= self.max_tokens

    @property
    def ref(self) -> SubCallRef:
        return SubCallRef(self.sample, self.sub_call)

    @property
    def chunk_text(self) -> str | None:
        if self.chunk_loc is None:
            return None
        c = self.messages[self.chunk_loc.message]["content"]
        return c[self.chunk_loc.start : self.chunk_loc.end]


@dataclass(frozen=True)
class ChunkLocation:
    """Where the chunk sits inside the recorded messages: message index and char span of its content."""

    message: int
    start: int
    end: int
    exact: bool  # True when found via the rig's own worker template, False for the fallback heuristic


_RIG_USER = re.compile(r"\AText:\n(?P<chunk>.*)\n\nInstruction: (?P<instr>.*)\Z", re.S)


def locate_chunk(messages: list[dict[str, Any]], instruction: str, chunk_chars: int) -> ChunkLocation | None:
    """Find the chunk inside the worker messages.

    First the rig's template (``Text:\\n{chunk}\\n\\nInstruction: {instruction}``, controller.prompts);
    else the part of the last user message that is not the instruction, whichever side of it is
    closest to ``chunk_chars`` long. None when no user message has text.
    """
    for mi in range(len(messages) - 1, -1, -1):
        m = messages[mi]
        content = m.get("content")
        if m.get("role") != "user" or not isinstance(content, str) or not content:
            continue
        hit = _RIG_USER.match(content)
        if hit and (not instruction or hit.group("instr") == instruction):
            return ChunkLocation(mi, hit.start("chunk"), hit.end("chunk"), True)
        p = content.find(instruction) if instruction else -1
        sides = [(0, len(content))] if p < 0 else [(0, p), (p + len(instruction), len(content))]
        sides = [s for s in sides if s[1] > s[0]]
        if not sides:
            continue
        s, e = min(sides, key=lambda se: abs((se[1] - se[0]) - chunk_chars))
        while s < e and content[s].isspace():
            s += 1
        while e > s and content[e - 1].isspace():
            e -= 1
        return ChunkLocation(mi, s, e, False)
    return None


def _sample_key(traj_path: Path) -> str:
    return traj_path.stem


def load_samples(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's sample rows keyed by the trajectory file stem they point to (and by their id)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        rows = RunFolder(run_dir).rows()
    except ValueError as exc:  # a line inside samples.jsonl that is not JSON (a torn last one is dropped)
        raise RunDirError(str(exc)) from None
    for row in rows:
        if row.get("id") is not None:
            out[str(row["id"])] = row
        if row.get("trajectory"):
            out[Path(str(row["trajectory"])).stem] = row
    return out


def trajectory_paths(run_dir: str | Path) -> list[Path]:
    """An eval run folder's trajectories, or an ``ask`` folder's single trajectory (its sample key is
    then the file's stem)."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise RunDirError(f"run folder {folder.path} does not exist")
    tdir = folder.trajectories_dir
    paths = sorted(tdir.glob("*.json")) if tdir.is_dir() else []
    if not paths and folder.ask_trajectory_path.is_file():
        paths = [folder.ask_trajectory_path]
    if not paths:
        raise RunDirError(f"{folder.path} has neither {tdir.name}/*.json (an eval run) nor "
                          f"{folder.ask_trajectory_path.name} (an ask run)")
    return paths


def load_trajectory(path: Path) -> Trajectory:
    try:
        return Trajectory.load(path)
    except (ValidationError, ValueError) as exc:
        raise RunDirError(f"{path}: not a trajectory JSON: {exc}") from exc


@dataclass
class Selection:
    """Which sub_calls to take. Empty fields select everything."""

    question_types: list[str] = field(default_factory=list)
    correct: bool | None = None  # True: samples with score == 1; False: score < 1
    refs: list[SubCallRef] = field(default_factory=list)
    depth: int | None = None  # None: every worker call, nested ones included
    require_response: bool = True
    limit: int | None = None


# long: one walk over ask and eval folders, nested runs included, applying every selection filter in order
def iter_sub_calls(run_dir: str | Path, selection: Selection | None = None,
                   tally: Counter | None = None) -> Iterator[SubCallItem]:
    """Yield the selected sub_calls of a run, one trajectory file in memory at a time.

    `tally` (a Counter) receives one count per sub_call left out, keyed by a reason of `REASONS`."""
    run_dir = Path(run_dir)
    tally = Counter() if tally is None else tally
    sel = selection or Selection()
    samples = load_samples(run_dir)
    if (sel.question_types or sel.correct is not None) and not samples:
        raise RunDirError(f"selecting by question_type or correctness needs {RunFolder(run_dir).samples_path}, which is "
                          "missing or empty")
    wanted = {(r.sample, r.sub_call) for r in sel.refs}
    wanted_samples = {r.sample.split("/", 1)[0] for r in sel.refs}
    n = 0
    paths = trajectory_paths(run_dir)
    if wanted_samples:
        known = {_sample_key(p) for p in paths}
        missing = sorted(wanted_samples - known)
        if missing:
            raise RunDirError(f"no trajectory for sample(s) {missing} in {RunFolder(run_dir).trajectories_dir}")
    for path in paths:
        key = _sample_key(path)
        if wanted_samples and key not in wanted_samples:
            continue
        row = samples.get(key, {})
        qtype = row.get("question_type")
        score = row.get("score")
        sample_out = bool(sel.question_types and qtype not in sel.question_types)
        if sel.correct is not None:
            sample_out = sample_out or score is None or sel.correct != (float(score) >= 1.0)
        traj = load_trajectory(path)
        if not traj.sub_calls:
            tally["no_sub_calls"] += 1
            continue
        if sample_out:
            tally["not_selected"] += sum(1 for _ in _walk(key, traj.sub_calls))
            continue
        worker_cfg = traj.config.get("worker") if isinstance(traj.config.get("worker"), dict) else {}
        max_tokens = worker_cfg.get("max_tokens")
        workers = traj.config.get("workers") if isinstance(traj.config.get("workers"), dict) else {}
        default_worker = next((n for n, w in workers.items() if isinstance(w, dict) and w.get("default")), "worker")
        for skey, sc in _walk(key, traj.sub_calls):
            if (wanted and (skey, sc.id) not in wanted) or (sel.depth is not None and sc.depth != sel.depth):
                tally["not_selected"] += 1
                continue
            if not sc.messages:
                tally["sub_call_error" if sc.error and not sc.nested_trajectory else "no_worker_messages"] += 1
                continue
            if sc.model is not None and sc.model != default_worker:
                tally["other_worker"] += 1
                continue
            if sel.require_response and sc.response is None:
                tally["sub_call_error"] += 1
                continue

            yield SubCallItem(
                run=traj.run_id or run_dir.name,
                sample=skey,
                sub_call=sc.id,
                messages=sc.messages,
                instruction=sc.instruction,
                response=sc.response,
                chunk_start=sc.chunk_start,
                chunk_end=sc.chunk_end,
                chunk_chars=sc.chunk_chars,
                chunk_loc=locate_chunk(sc.messages, sc.instruction, sc.chunk_chars),
                question=traj.question,
                question_type=qtype,
                score=None if score is None else float(score),
                depth=sc.depth,
                completion_tokens=sc.completion_tokens,
                max_tokens=int(max_tokens) if isinstance(max_tokens, int) else None,
                prompt_tokens=sc.prompt_tokens,
                token_ids=sc.token_ids,
                token_logprobs=sc.token_logprobs,
            )
            n += 1
            if sel.limit is not None and n >= sel.limit:
                return  # a limit means at least one item: no tally is needed past it


def collect_sub_calls(run_dir: str | Path, selection: Selection | None = None, *, what: str = "sub_calls to replay",
                      need_chunk: bool = False) -> tuple[list[SubCallItem], Counter]:
    """All selected sub_calls (and the tally of the rest). Raises NothingToStudyError, naming each reason
    with its count, when none is left."""
    tally: Counter = Counter()
    items = []
    for it in iter_sub_calls(run_dir, selection, tally):
        if need_chunk and it.chunk_text is None:
            tally["no_chunk_span"] += 1
            continue
        items.append(it)
    if not items:
        raise NothingToStudyError(what, run_dir, tally)
    return items, tally


def _walk(key: str, sub_calls: list[SubCallRecord]) -> Iterator[tuple[str, SubCallRecord]]:
    """Depth-first over sub_calls and the worker calls inside nested RLM trajectories.

    A nested call is keyed ``SAMPLE/PARENT_ID[/...]`` so ``SAMPLE/3:1`` is worker call 1 of the
    nested RLM that sub_call 3 of SAMPLE started."""
    for sc in sub_calls:
        yield key, sc
        if sc.nested_trajectory is not None and sc.nested_trajectory.sub_calls:
            yield from _walk(f"{key}/{sc.id}", sc.nested_trajectory.sub_calls)


def load_gold_file(path: str | Path) -> dict[tuple[str, int], int]:
    """Per-chunk gold from a JSONL of ``{"sample": ..., "sub_call": ..., "gold": int}`` lines."""
    out: dict[tuple[str, int], int] = {}
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"gold file {p} does not exist")
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[(str(row["sample"]), int(row["sub_call"]))] = int(row["gold"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RunDirError(f"{p}: line {i + 1}: need sample, sub_call and integer gold ({exc})") from exc
    return out
