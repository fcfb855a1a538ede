"""The controller's side of a run, as data: the conversation it read, the cell outputs in it, the per-chunk
values each cell output told it, and the final answer it gave.

WHY a module of its own: the worker's side is one sub_call = one prompt; the controller's side is one
conversation per sample, whose later user messages carry the REPL's output (``prompts.cell_feedback``), and
the question is which of those tokens the final answer reads. This module finds, in characters of the
recorded messages, every cell output and every number in it that is a sub_call's reply, so that the methods
(`interp.methods.controller`) can map them to tokens of any tokenizer.

The final answer's tokens: a controller often answers ``FINAL_VAR(name)``, whose value never appears in its
own text. The teacher-forced answer turn is then the recorded reply with that line written as
``FINAL(<the value the kernel resolved>)`` (``answer_source = "final_var"``); a reply that states the value is
used as recorded (``"recorded"``).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rlm_rig.interp.data.selection import (NothingToStudyError, RunDirError, Selection, load_samples, load_trajectory,
                                           trajectory_paths)
from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.trajectory import Trajectory

_INT = re.compile(r"-?\d+")
_FINAL_VAR = re.compile(r"^FINAL_VAR\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.M)



@dataclass
class ToldValue:
    """A sub_call's reply as the controller read it: the integer and its char span in message `message`."""

    sub_call: int
    value: int
    message: int
    start: int
    end: int


@dataclass
class CellOutput:
    """Cell `cell`'s output inside message `message` (char span of its content) and the values it told."""

    cell: int
    message: int
    start: int
    end: int
    values: list[ToldValue] = field(default_factory=list)
    total: ToldValue | None = None  # a printed number equal to the final value, after the told values


@dataclass
class TurnRecord:
    """One controller turn: the conversation before it and its reply (for the teacher-forced faithfulness)."""

    index: int
    n_messages: int  # messages[:n_messages] is what the controller read
    response: str
    prompt_tokens: int


@dataclass
class ControllerItem:
    run: str
    sample: str
    controller: str  # the recorded controller name (trajectory.models["controller"])
    messages: list[dict[str, str]]  # the conversation up to the answer turn (exclusive)
    answer: str  # the answer turn as teacher-forced
    answer_source: str  # recorded | final_var
    final_answer: str
    final_value: int
    cells: list[CellOutput]
    turns: list[TurnRecord]
    score: float | None = None

    @property
    def replayed(self) -> bool:
        """A replay controller: its text was written by hand, so no tokenizer produced it."""
        return self.controller.startswith("replay")

    @property
    def told(self) -> list[ToldValue]:
        return [v for c in self.cells for v in c.values]


def first_int(text: str | None) -> int | None:
    m = _INT.search(text or "")
    return int(m.group()) if m else None


def conversation(traj: Trajectory) -> tuple[list[dict[str, str]], list[TurnRecord]]:
    """The full message history: each turn's new messages, then its reply (ControllerTurn.messages_in)."""
    msgs: list[dict[str, str]] = []
    turns = []
    for t in traj.turns:
        msgs += [dict(m) for m in t.messages_in]
        turns.append(TurnRecord(t.index, len(msgs), t.response, int(t.prompt_tokens or 0)))
        msgs.append({"role": "assistant", "content": t.response})
    return msgs, turns


def answer_turn(reply: str, final_answer: str, value: int) -> tuple[str, str]:
    """(the answer turn to teacher-force, its source); see the module docstring."""
    if str(value) in reply:
        return reply, "recorded"
    m = _FINAL_VAR.search(reply)
    if m:
        return reply[: m.start()] + f"FINAL({final_answer})" + reply[m.end():], "final_var"
    return reply.rstrip() + f"\nFINAL({final_answer})", "final_var"


def _locate_output(msgs: list[dict[str, str]], stdout: str, after: int) -> tuple[int, int, int] | None:
    """(message, start, end) of a cell's printed output in the first user message from `after` on."""
    text = stdout.strip()
    if not text:
        return None
    for mi in range(after, len(msgs)):
        if msgs[mi].get("role") != "user":
            continue
        c = msgs[mi].get("content") or ""
        i = c.find(text)
        if i >= 0:
            return mi, i, i + len(text)
        head = text[:200]
        i = c.find(head) if len(head) >= 20 else -1
        if i >= 0:  # an output cut by the rig's feedback limit: its visible part
            return mi, i, min(len(c), i + len(text))
    return None


def _told_values(content: str, start: int, end: int, replies: list[tuple[int, int | None]], mi: int
                 ) -> list[ToldValue]:
    """The sub_calls' integers as a consecutive run among the printed integers (a reply without one matches any)."""
    nums = [(int(m.group()), start + m.start(), start + m.end()) for m in _INT.finditer(content[start:end])]
    k = len(replies)
    for s in range(0, len(nums) - k + 1):
        window = nums[s: s + k]
        if k and all(v is None or v == n[0] for (_, v), n in zip(replies, window)):
            return [ToldValue(sc, n[0], mi, n[1], n[2]) for (sc, _), n in zip(replies, window)]
    return []


def cell_outputs(traj: Trajectory, msgs: list[dict[str, str]], final_value: int) -> list[CellOutput]:
    """Every cell output found in the conversation, with the sub_call values it printed."""
    out, after = [], 0
    for cell in traj.cells:
        loc = _locate_output(msgs, cell.stdout, after)
        if loc is None:
            continue
        mi, s, e = loc
        after = mi
        content = msgs[mi]["content"]
        replies = [(sc.id, first_int(sc.response)) for sc in traj.sub_calls if sc.cell == cell.index and sc.depth <= 1]
        co = CellOutput(cell.index, mi, s, e, _told_values(content, s, e, replies, mi))
        lo = co.values[-1].end if co.values else s
        tot = [m for m in _INT.finditer(content[lo:e]) if int(m.group()) == final_value]
        if tot:
            m = tot[-1]
            co.total = ToldValue(-1, final_value, mi, lo + m.start(), lo + m.end())
        out.append(co)
    return out


def controller_item(run: str, sample: str, traj: Trajectory, tally: Counter, score: float | None = None
                    ) -> ControllerItem | None:
    if not traj.turns:
        tally["no_controller_turns"] += 1
        return None
    value = first_int(traj.final_answer)
    if value is None:
        tally["no_final_answer"] += 1
        return None
    msgs, turns = conversation(traj)
    cells = cell_outputs(traj, msgs, value)
    if not cells:
        tally["no_cell_output"] += 1
        return None
    answer, source = answer_turn(turns[-1].response, str(traj.final_answer), value)
    return ControllerItem(run, sample, str(traj.models.get("controller", "")), msgs[: turns[-1].n_messages], answer,
                          source, str(traj.final_answer), value, cells, turns, score)


def iter_controller_items(run_dir: str | Path, selection: Selection | None = None,
                          tally: Counter | None = None) -> Iterator[ControllerItem]:
    """The controller side of every selected sample (the selection's question types, correctness, refs'
    samples and limit, which counts samples here)."""
    run_dir = Path(run_dir)
    tally = Counter() if tally is None else tally
    sel = selection or Selection()
    samples = load_samples(run_dir)
    if (sel.question_types or sel.correct is not None) and not samples:
        raise RunDirError(f"selecting by question_type or correctness needs {RunFolder(run_dir).samples_path}")
    wanted = {r.sample for r in sel.refs}
    n = 0
    for path in trajectory_paths(run_dir):
        row = samples.get(path.stem, {})
        score = row.get("score")
        out = (wanted and path.stem not in wanted) or (sel.question_types and row.get("question_type") not in
                                                       sel.question_types)
        if sel.correct is not None:
            out = out or score is None or sel.correct != (float(score) >= 1.0)
        if out or (sel.limit is not None and n >= sel.limit):
            tally["not_selected"] += 1
            continue
        item = controller_item(run_dir.name, path.stem, load_trajectory(path), tally,
                               None if score is None else float(score))
        if item is not None:
            n += 1
            yield item


def collect_controller_items(run_dir: str | Path, selection: Selection | None = None) -> list[ControllerItem]:
    """The items, or NothingToStudyError naming why there are none (one line, exit 2 at the CLI)."""
    tally: Counter = Counter()
    items = list(iter_controller_items(run_dir, selection, tally))
    if not items:
        raise NothingToStudyError("controller turns to replay", run_dir, tally)
    return items
