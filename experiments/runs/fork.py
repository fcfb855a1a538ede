"""Closed-loop counterfactual forks: rerun a recorded trajectory with one sub_call's reply replaced.

The fork replays the recorded run up to sub_call K: the recorded controller turns' cells run again in a
fresh sandbox, and the run's tape answers every earlier sub_call, so the REPL state at K is the state
the original run had. Reply K is replaced; then the controller continues. ``replay``: the recorded turns
go on (an open strategy such as configs/replays/chunk-count.yaml sees the new reply in its arithmetic);
``live``: the profile's controller model writes every turn after the fork point at temperature 0, so it
reacts to what it is told. The tape answers later sub_calls that did not change; only new ones reach
the worker. The fork's trajectory and a :class:`ForkRecord` (every later step, original beside fork)
land in the out folder.
"""
from __future__ import annotations

import copy
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from rlm_rig.configs.load import apply_override, validate_config
from rlm_rig.controller.backends import ControllerLM, Generation, ReplayLM
from rlm_rig.controller.rig import Rig
from rlm_rig.experiments.runs.preflight import RunInputError
from rlm_rig.records.fork import ForkRecord, step_changes
from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.trajectory import SampleRow, Trajectory

ControllerMode = Literal["live", "replay"]
_AT = re.compile(r"^sub_call:(\d+)$")


def parse_at(text: str) -> int:
    """``sub_call:K`` -> K."""
    m = _AT.match(text.strip())
    if not m:
        raise RunInputError(f"--at {text!r}: expected sub_call:K (K: a sub_call id of the sample, from 0)")
    return int(m.group(1))


@dataclass
class Original:
    """The recorded run a fork starts from: its trajectory, document and (eval runs) scoring."""

    folder: RunFolder
    sample: str
    path: Path
    traj: Trajectory
    doc: str
    row: SampleRow | None = None
    answer_type: str | None = None

    def score(self, answer: str | None) -> float | None:
        """The official score of ``answer`` for this sample (None for an ask run: no gold)."""
        if self.row is None:
            return None
        from rlm_rig.experiments.datasets.scoring import score_output

        return float(score_output(self.row.dataset, answer, self.row.gold, answer_type=self.answer_type).score)


def _trajectory_path(folder: RunFolder, sample: str) -> Path:
    found = dict(folder.trajectories())
    if sample not in found:
        some = ", ".join(list(found)[:5]) or "none"
        raise RunInputError(f"sample {sample!r} is not in {folder.path} (its samples: {some})")
    return found[sample]


def load_original(run: str | Path, sample: str, *, doc: str | Path | None = None,
                  examples: dict[str, Any] | None = None) -> Original:
    """The run's sample, with its document: an eval's example is loaded again from the run's spec (or taken
    from ``examples``, {id: Example}, when the caller loaded them once); an ask run needs ``doc`` (checked
    against the recorded sha256)."""
    folder = RunFolder(run)
    if not folder.path.is_dir() or not folder.is_run():
        raise RunInputError(f"{run} is not a run folder")
    if not folder.tape_path.is_file():
        raise RunInputError(f"{run} holds no sub_call tape (a run made before tapes): rerun it to fork it")
    path = _trajectory_path(folder, sample)
    traj = Trajectory.load(path)
    if any(s.nested_trajectory is not None for s in traj.sub_calls):
        raise RunInputError(f"sample {sample!r} has nested runs (max_depth >= 2): forks replace plain worker replies only")
    # sub_call:K counts the default worker's calls (the tape's ordinal): tool calls and other workers would shift it
    if any(s.kind == "tool" for s in traj.sub_calls) or len({s.model for s in traj.sub_calls}) > 1:
        raise RunInputError(f"sample {sample!r} has custom tool calls or several worker models: forks replace the "
                            "replies of one worker in runs without tools")
    if doc is not None:
        from rlm_rig.experiments.datasets.contexts import ContextFileError, load_context_file

        try:
            text = load_context_file(Path(doc))  # read as `ask` read it (byte-faithful)
        except ContextFileError as exc:
            raise RunInputError(str(exc)) from None
        if not isinstance(text, str):
            raise RunInputError("--doc: forks of list or dict contexts are not supported; give the run's text file")
        return _checked(Original(folder, sample, path, traj, text))
    if folder.read_spec() is None:
        raise RunInputError(f"{run} is an ask run: give its document with --doc")
    ex = (examples if examples is not None else run_examples(folder)).get(sample)
    if ex is None:
        raise RunInputError(f"sample {sample!r}: its example is no longer in dataset {folder.read_spec().dataset!r}")  # type: ignore[union-attr]
    row = next((r for r in folder.sample_rows() if r.id == sample), None)
    return _checked(Original(folder, sample, path, traj, ex.context, row=row, answer_type=ex.answer_type))


def run_examples(folder: RunFolder) -> dict[str, Any]:
    """{id: Example} of an eval run: the examples its spec selects (the same, seeded, as when it ran)."""
    from rlm_rig.experiments.runs.examples import iter_examples

    spec = folder.read_spec()
    if spec is None:
        return {}
    return {e.id: e for e in iter_examples(spec)}


def _checked(orig: Original) -> Original:
    import hashlib

    if hashlib.sha256(orig.doc.encode("utf-8", "surrogatepass")).hexdigest() != orig.traj.doc_sha256:
        raise RunInputError(f"the document is not the one sample {orig.sample!r} ran on (its sha256 differs)")
    return orig


def fork_turn(traj: Trajectory, at: int) -> int:
    """The controller turn whose cell made sub_call ``at``; RunInputError when there is no such sub_call."""
    n = len(traj.sub_calls)
    if not 0 <= at < n:
        span = f"sub_call:0 .. sub_call:{n - 1}" if n else "none"
        raise RunInputError(f"--at sub_call:{at} does not exist in sample {traj.run_id!r} (its sub_calls: {span})")
    return traj.cells[traj.sub_calls[at].cell].turn


class SplicedLM:
    """The recorded turns up to the fork point, then a live controller: one conversation, one cursor."""

    def __init__(self, prefix: Sequence[str], live: ControllerLM):
        self.replay = ReplayLM(list(prefix))
        self.live = live
        self.name = f"fork:{live.name}"

    def __getattr__(self, name: str) -> Any:  # count_tokens, context_window of the live model
        if name == "live":
            raise AttributeError(name)
        return getattr(self.live, name)

    def generate(self, messages: list[dict[str, str]], *, max_new_tokens: int, sampling: Any = None) -> Generation:
        if self.replay._i < len(self.replay.responses):
            return self.replay.generate(messages, max_new_tokens=max_new_tokens)
        return self.live.generate(messages, max_new_tokens=max_new_tokens, sampling=sampling)

    def close(self) -> None:
        pass  # the live model belongs to the Rig


def greedy_controller(data: dict[str, Any]) -> None:
    """A live fork's controller decodes greedily at every depth (controller.sampling and each sampling_by_depth
    entry), so a fork differs from its run by the replaced reply, not by the dice."""
    apply_override(data, "controller.sampling.temperature=0")
    for depth in (data.get("controller") or {}).get("sampling_by_depth") or {}:
        apply_override(data, f"controller.sampling_by_depth.{depth}.temperature=0")


def fork_config(orig: Original, controller: ControllerMode, overrides: Sequence[str] = ()) -> Any:
    """The run's own config (as its trajectory recorded it) with ``overrides``; a live controller at temperature 0.
    Checked before any folder is claimed or server started."""
    data = copy.deepcopy(orig.traj.config)
    for o in overrides:
        apply_override(data, o)
    if controller == "live":
        greedy_controller(data)
    cfg = validate_config(data, f"{orig.path} (config)")
    if controller == "live" and cfg.controller.backend == "replay":
        raise RunInputError("--controller live needs a controller model, and this run's controller was a replay: "
                            "use --controller replay")
    return cfg


def default_controller(orig: Original) -> ControllerMode:
    """``live`` when the run had a model controller, ``replay`` when its controller was a replay."""
    return "replay" if orig.traj.config.get("controller", {}).get("backend") == "replay" else "live"


@dataclass
class Forker:
    """A started Rig over one run's tape, making forks one after another (the study makes many)."""

    rig: Rig
    controller: ControllerMode
    live: ControllerLM | None

    def controller_for(self, orig: Original, turn: int) -> ControllerLM:
        responses = [t.response for t in orig.traj.turns]
        if self.controller == "replay":
            return ReplayLM(responses, name=f"replay:{orig.path.name}")
        assert self.live is not None
        return SplicedLM(responses[: turn + 1], self.live)

    def fork(self, orig: Original, at: int, reply: str, save_to: Path | None = None) -> tuple[Trajectory, ForkRecord]:
        turn = fork_turn(orig.traj, at)
        worker = self.rig.worker
        worker.begin_run(replace={at: reply})  # type: ignore[union-attr]
        self.rig.lm = self.controller_for(orig, turn)
        t = orig.traj
        new = self.rig.ask(orig.doc, t.question, run_id=f"{t.run_id}-fork{at}", save_to=save_to,
                           instructions=t.task_instructions)
        if worker.diverged:  # type: ignore[union-attr]
            raise RunInputError(f"sample {orig.sample!r}: the replay diverged from the original run, so sub_call:{at} "
                                f"would not see the original REPL state ({worker.diverged})")  # type: ignore[union-attr]
        return new, self.record(orig, new, at, turn, reply, worker.misses)  # type: ignore[union-attr]

    def record(self, orig: Original, new: Trajectory, at: int, turn: int, reply: str, calls: int) -> ForkRecord:
        t = orig.traj
        s_orig = orig.row.score if orig.row is not None else None
        return ForkRecord(
            original_run=str(orig.folder.path), sample=orig.sample, original_trajectory=str(orig.path), at=at,
            fork_turn=turn, controller=self.controller, reply_original=t.sub_calls[at].response, reply_fork=reply,
            answer_original=t.final_answer, answer_fork=new.final_answer,
            answer_changed=new.final_answer != t.final_answer, gold=orig.row.gold if orig.row else None,
            score_original=None if s_orig is None or math.isnan(s_orig) else s_orig, score_fork=orig.score(new.final_answer),
            worker_calls=calls, stop_reason=new.stop_reason, steps=step_changes(t, new, at=at, fork_turn=turn))


@contextmanager
def open_forker(orig: Original, out: str | Path, controller: ControllerMode, cfg: Any) -> Iterator[Forker]:
    """A Rig (``cfg``: :func:`fork_config`) whose worker answers from ``orig``'s run tape (the tape is checked
    against its weights and sampling)."""
    with Rig(cfg, run_dir=out, controller_replay=orig.path if controller == "replay" else None,
             tape=orig.folder.path) as rig:
        base = rig.lm
        try:
            yield Forker(rig, controller, base if controller == "live" else None)
        finally:
            rig.lm = base  # each fork sets its own controller; the Rig closes the one it made


def fork(run: str | Path, sample: str, *, at: int, reply: str, out: str | Path, controller: ControllerMode | None = None,
         overrides: Sequence[str] = (), doc: str | Path | None = None, force: bool = False) -> ForkRecord:
    """The Python API of ``rlm-rig fork``: one fork into ``out`` (its trajectory and its ForkRecord)."""
    orig = load_original(run, sample, doc=doc)
    fork_turn(orig.traj, at)  # a fork point that does not exist fails before anything starts
    mode = controller or default_controller(orig)
    cfg = fork_config(orig, mode, overrides)
    folder = RunFolder(out)
    held = folder.claim("fork", force=force)
    try:
        with open_forker(orig, out, mode, cfg) as forker:
            _, rec = forker.fork(orig, at, reply, save_to=folder.ask_trajectory_path)
        rec.save(folder.fork_path)
        return rec
    finally:
        held.release()
