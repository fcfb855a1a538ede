"""The RLM loop: controller turn -> one REPL cell -> truncated feedback, until a final answer.

Every event lands in the :class:`Trajectory`, which is saved atomically after each turn, so a
killed run still leaves a readable, replayable record of what happened up to the kill.
"""
from __future__ import annotations

import hashlib
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rlm_rig.configs.schema import RigConfig
from rlm_rig.controller import prompts
from rlm_rig.controller.caps import RunCaps, cell_failed
from rlm_rig.controller.backends import ControllerLM, ReplayLM
from rlm_rig.controller.doctokens import ChunkTokens
from rlm_rig.controller.context import ContextFull, ContextGuard, estimate_tokens, guarded_generate
from rlm_rig.controller.parsing import parse_turn
from rlm_rig.records.trajectory import CapEvent, CellRecord, ControllerTurn, Trajectory
from rlm_rig.controller.subcalls import ChatMany, SubCallBudget, SubCallRouter
from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.worker.watch import WorkerDeadError, failure_kind


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def estimate_chars_per_token(doc: str, count_tokens: Callable[[str], int], samples: int = 3, width: int = 4000) -> float:
    """Chars per worker token, from a few evenly spaced slices: cheap even for a 5M-character document."""
    if not doc:
        return 4.0
    spans = []
    if len(doc) <= width * samples:
        spans = [doc]
    else:
        step = (len(doc) - width) // max(1, samples - 1)
        spans = [doc[i * step : i * step + width] for i in range(samples)]
    chars = sum(len(s) for s in spans)
    toks = sum(max(1, count_tokens(s)) for s in spans)
    return chars / toks


@dataclass
class RunContext:
    """What a run needs besides the question and the document: shared by nested runs."""

    cfg: RigConfig
    lm: ControllerLM
    worker: ChatMany | None
    count_tokens: Callable[[str], int]
    models: dict[str, str]
    versions: dict[str, str]
    sub_calls_enabled: bool = True
    # the chunk cap's token check (controller/doctokens.py); None: every chunk is counted with count_tokens
    chunk_tokens: ChunkTokens | None = None
    kernels: Any = None  # a KernelPool: kernels spawned ahead of time (None: start each on demand)
    # progress hook for live displays: called with ("turn" | "cell" | "cell_done" | "done", trajectory), root run only
    on_event: Callable[[str, Trajectory], None] | None = None
    context_window: int | None = None  # the controller's window in tokens: None leaves turns unguarded
    decode_token: Callable[[int], str] | None = None  # the worker's tokenizer (one id -> text): reply confidence


class RLM:
    def __init__(self, ctx: RunContext, *, depth: int = 0, budget: SubCallBudget | None = None):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.depth = depth
        self.budget = budget or SubCallBudget(self.cfg.rlm.max_sub_calls)

    # -- helpers --------------------------------------------------------------------------
    def _nested_runner(self) -> Any:
        if not self.ctx.sub_calls_enabled or self.depth + 1 >= self.cfg.rlm.max_depth:
            return None

        def run_nested(chunk: str, instruction: str, depth: int) -> tuple[str | None, Trajectory]:
            child = RLM(self.ctx, depth=depth, budget=self.budget)
            t = child.run(chunk, instruction, run_id=f"nested-{uuid.uuid4().hex[:8]}")
            return t.final_answer, t

        return run_nested

    def _feedback(self, cell: CellRecord, res: Any) -> str:
        out = res.stdout
        if res.stderr:
            out += ("\n" if out and not out.endswith("\n") else "") + res.stderr
        if res.error:
            out += ("\n" if out and not out.endswith("\n") else "") + res.error
        limit = self.cfg.rlm.feedback_max_chars
        truncated_from = None
        if len(out) > limit or res.output_truncated:
            truncated_from = len(out) if not res.output_truncated else max(len(out), self.cfg.sandbox.max_output_chars)
            out = out[:limit]
            cell.feedback_truncated = True
        notices = list(res.notices)  # the sandbox words restarts itself ("... all variables ... are LOST")
        return prompts.cell_feedback(
            out, truncated_from=truncated_from, notices=notices, iteration=cell.turn + 1,
            max_iterations=self.cfg.rlm.max_iterations,
        )

    # -- the loop -------------------------------------------------------------------------
    def run(self, doc: str, question: str, *, run_id: str | None = None, save_to: str | Path | None = None,
            instructions: str | None = None) -> Trajectory:
        """``instructions``: the dataset's task instructions (answer format etc.), told to the controller
        next to the question; ``doc`` (the REPL's ``prompt``) stays unchanged."""
        return _Run(self, doc, question, run_id=run_id, save_to=save_to, instructions=instructions).execute()


class _Run:
    """One run of the loop: its trajectory, conversation, sandbox and caps, and the steps that move it.

    WHY a class: the steps (a controller turn, a cell, a final answer, the forced last turn) share a
    dozen pieces of state; as methods of one object each step is short and named, where they used to
    be closures inside one 230-line function.
    """

    def __init__(self, rlm: RLM, doc: str, question: str, *, run_id: str | None, save_to: str | Path | None,
                 instructions: str | None):
        self.rlm, self.ctx, self.cfg = rlm, rlm.ctx, rlm.cfg
        self.doc, self.question, self.save_to = doc, question, save_to
        self.t0 = time.perf_counter()
        self.traj = self._new_trajectory(run_id, instructions)
        cpt = estimate_chars_per_token(doc, self.ctx.count_tokens)  # sampled: never the whole document
        budget_tokens = self.cfg.chunk_budget()
        self.budget_chars = int(budget_tokens * cpt * 0.9)
        nested = rlm._nested_runner()
        self.router = self._router(budget_tokens, nested)
        system = prompts.system_prompt(
            prompts.describe_shape(doc, cpt),
            chunk_budget_tokens=budget_tokens,
            chunk_budget_chars=self.budget_chars,
            max_iterations=self.cfg.rlm.max_iterations,
            max_sub_calls=self.cfg.rlm.max_sub_calls,
            can_nest=nested is not None,
            sub_calls_enabled=self.ctx.sub_calls_enabled,
        )
        self.messages: list[dict[str, str]] = [
            {"role": "system", "content": system},
            {"role": "user", "content": prompts.first_user_message(question, instructions)},
        ]
        self.sent = 0  # messages already shown in a recorded turn
        self.tokens_used = 0
        self.caps = RunCaps(self.cfg.rlm, self.traj, self.t0)
        window = self.ctx.context_window
        self.window = window
        count = getattr(self.ctx.lm, "count_tokens", None) or estimate_tokens
        self.guard = ContextGuard(window, count=count) if window else None
        self.sandbox: Sandbox | None = None
        self.stop_reason: str | None = None
        self.force_reason = f"You have used all {self.cfg.rlm.max_iterations} replies."
        self.unsent = ""  # feedback not yet shown when a cap broke the loop

    # -- set-up ---------------------------------------------------------------------------
    def _new_trajectory(self, run_id: str | None, instructions: str | None) -> Trajectory:
        cfg = self.cfg
        return Trajectory(
            run_id=run_id or uuid.uuid4().hex[:12],
            question=self.question,
            task_instructions=instructions,
            doc_chars=len(self.doc),
            doc_sha256=hashlib.sha256(self.doc.encode("utf-8", "surrogatepass")).hexdigest(),
            config=cfg.model_dump(mode="json"),
            config_hash=cfg.hash(),
            models=self.ctx.models,
            versions=self.ctx.versions,
            depth=self.rlm.depth,
            started_at=_now(),
        )

    def _router(self, budget_tokens: int, nested: Any) -> SubCallRouter:
        cfg = self.cfg
        return SubCallRouter(
            doc=self.doc,
            traj=self.traj,
            worker=self.ctx.worker if self.ctx.sub_calls_enabled else None,
            count_tokens=self.ctx.count_tokens,
            budget_tokens=budget_tokens,
            budget=self.rlm.budget,
            depth=self.rlm.depth,
            worker_max_tokens=cfg.worker.max_tokens,
            worker_system=cfg.worker.system_prompt,
            nested=nested,
            concurrency=cfg.worker.max_connections,
            chunk_tokens=self.ctx.chunk_tokens,
            low_confidence=cfg.rlm.low_confidence,
            low_confidence_threshold=cfg.rlm.low_confidence_threshold,
            decode_token=self.ctx.decode_token,
        )

    def _open_sandbox(self) -> Sandbox:
        cfg = self.cfg
        limits = cfg.sandbox  # the profile's sandbox section is the sandbox's own SandboxLimits
        names = {"CHUNK_BUDGET_CHARS": self.budget_chars, "question": self.question}
        if self.ctx.kernels is not None:
            sandbox = self.ctx.kernels.sandbox(self.doc, handler=self.router, limits=limits, extra_globals=names)
        else:
            sandbox = Sandbox(self.doc, handler=self.router, limits=limits, extra_globals=names)
        if sandbox.isolation is not None:
            self.traj.isolation = sandbox.isolation.as_dict()
        return sandbox

    # -- small steps ----------------------------------------------------------------------
    def emit(self, kind: str) -> None:
        if self.ctx.on_event is not None and self.rlm.depth == 0:
            self.ctx.on_event(kind, self.traj)

    def save(self, final: bool = False) -> None:
        self.traj.wall_s = time.perf_counter() - self.t0
        if self.save_to is not None:
            self.traj.save(self.save_to, fsync=final)

    def cap(self, cap: str, detail: str) -> None:
        self.traj.caps_hit.append(CapEvent(cap=cap, turn=len(self.traj.turns), detail=detail))  # type: ignore[arg-type]

    def say(self, content: str) -> None:
        self.messages.append({"role": "user", "content": content})

    def turn(self, forced: bool = False) -> Any:
        """One controller generation, guarded against the context window; recorded; parsed."""
        cfg, traj, guard = self.cfg, self.traj, self.guard
        remaining = cfg.rlm.max_controller_tokens - self.tokens_used
        n_trimmed = len(guard.trimmed) if guard else 0
        gen = guarded_generate(self.ctx.lm, self.messages, max(1, min(cfg.controller.max_new_tokens, remaining)), guard)
        if guard and len(guard.trimmed) > n_trimmed:
            self.cap("context", f"removed {len(guard.trimmed) - n_trimmed} old cell output(s) to fit the "
                                f"{self.window:,}-token window")
        self.tokens_used += gen.prompt_tokens + gen.completion_tokens
        traj.model_wall_s += gen.latency_s
        traj.turns.append(ControllerTurn(
            index=len(traj.turns), messages_in=self.messages[self.sent:], response=gen.text,
            prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens, latency_s=gen.latency_s,
            forced_final=forced,
        ))
        self.messages.append({"role": "assistant", "content": gen.text})
        self.sent = len(self.messages)
        return parse_turn(gen.text)

    def resolve_final(self, parsed: Any) -> tuple[bool, str | None]:
        """(done, message to the model if not done)."""
        if parsed.final.kind == "FINAL":
            self.traj.final_answer = parsed.final.value
            return True, None
        res = self.sandbox.run_cell(f"FINAL_VAR({parsed.final.value!r})")  # type: ignore[union-attr]
        if res.final_answer is not None:
            self.traj.final_answer = res.final_answer
            return True, None
        self.caps.note_final_var(parsed.final.value)
        return False, prompts.final_var_missing(parsed.final.value)

    def run_cell(self, parsed: Any) -> bool:
        """Run the turn's code cell and answer the model; True when the run ended (final answer or cap)."""
        traj, sandbox = self.traj, self.sandbox
        assert sandbox is not None
        self.router.cell = len(traj.cells)
        self.emit("cell")
        res = sandbox.run_cell(parsed.code)
        cell = CellRecord(
            index=len(traj.cells), turn=len(traj.turns) - 1, code=parsed.code, stdout=res.stdout,
            stderr=res.stderr, error=res.error, duration_s=res.duration_s, timed_out=res.timed_out,
            restarted=res.restarted, kill_reason=res.kill_reason, notices=list(res.notices),
            final_answer=res.final_answer, output_truncated=res.output_truncated, sub_calls=res.sub_calls,
            prompt_restored=res.prompt_restored, prompt_integrity=res.prompt_integrity,
            final_integrity=res.final_integrity, final_var=res.final_var,
        )
        if res.restarted and sandbox.isolation is not None:
            traj.isolation = sandbox.isolation.as_dict()
        feedback = self.rlm._feedback(cell, res) + self.router.take_notes()  # rlm.low_confidence: tell
        if len(parsed.code_blocks) > 1:
            feedback += "\n[rig] Only your first code block ran: write one block per reply."
        traj.cells.append(cell)
        self.emit("cell_done")
        if self.ctx.worker is not None and self.ctx.worker.dead:  # worker/watch.py gave up: no answer from errors
            raise WorkerDeadError(f"worker is dead: {self.ctx.worker.dead}")  # type: ignore[union-attr]
        if res.timed_out:
            traj.caps_hit.append(CapEvent(cap="cell_timeout", turn=cell.turn,
                                          detail=f"cell {cell.index} > {self.cfg.sandbox.cell_timeout_s:g} s"))
        if res.final_answer is not None:
            traj.final_answer = res.final_answer
            self.stop_reason = "final"
            return True
        if parsed.final is not None:
            done, msg = self.resolve_final(parsed)
            if done:
                self.stop_reason = "final"
                return True
            feedback += "\n" + (msg or "")
        capped = self.caps.after_cell(not cell_failed(res), cell.turn)
        if capped:  # the last cell's output still reaches the forced answer turn
            self.force_reason, self.stop_reason, self.unsent = capped, "cap", feedback + "\n"
            return True
        self.say(feedback)
        return False

    def budget_spent(self) -> bool:
        """A run cap (wall clock, controller tokens) ends the loop before the next turn."""
        capped = self.caps.wall_clock(len(self.traj.turns))
        if capped:
            self.force_reason, self.stop_reason = capped, "cap"
            return True
        limit = self.cfg.rlm.max_controller_tokens
        if self.tokens_used >= limit:
            self.force_reason = f"The controller token budget ({limit:,}) is used up."
            self.cap("controller_tokens", self.force_reason)
            self.stop_reason = "cap"
            return True
        return False

    # -- the loop and its end -------------------------------------------------------------
    def iterate(self) -> None:
        for _ in range(self.cfg.rlm.max_iterations):
            if self.budget_spent():
                return
            self.router.turn = len(self.traj.turns)
            self.emit("turn")
            try:
                parsed = self.turn()
            except ContextFull as full:
                self.cap("context", str(full))
                self.force_reason, self.stop_reason = "Your context window is full.", "context"
                return
            if parsed.code is not None:
                if self.run_cell(parsed):
                    return
            elif parsed.final is not None:
                done, msg = self.resolve_final(parsed)
                if done:
                    self.stop_reason = "final"
                    return
                self.say(msg or "")
            else:
                self.say(prompts.FORMAT_ERROR)
            self.save()  # a snapshot per turn: a killed run still leaves its record up to here

    def best_answer(self) -> None:
        """A run that did not finish answers anyway: the last FINAL_VAR candidate, else one forced turn."""
        if self.stop_reason is None:
            self.cap("max_iterations", self.force_reason)
            self.stop_reason = "max_iterations"
        res = self.sandbox.run_cell(f"FINAL_VAR({self.caps.candidate!r})") if self.caps.candidate else None  # type: ignore[union-attr]
        if res is not None and res.final_answer is not None:
            self.traj.final_answer = res.final_answer
            return
        self.say(self.unsent + prompts.FORCE_FINAL.format(reason=self.force_reason))
        try:
            parsed = self.turn(forced=True)
        except ContextFull as full:  # not even a final answer fits: end with what we have
            self.cap("context", str(full))
            self.stop_reason = "context"
            return
        if parsed.final is not None:
            self.resolve_final(parsed)

    def execute(self) -> Trajectory:
        traj = self.traj
        try:
            self.sandbox = self._open_sandbox()
            self.iterate()
            if self.stop_reason != "final":
                self.best_answer()
            traj.stop_reason = self.stop_reason  # type: ignore[assignment]
        except Exception as e:  # the run ends, the record survives
            traj.stop_reason = "error"
            traj.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)[-3000:]}"
            traj.error_kind = failure_kind(e)
        finally:
            if self.sandbox is not None:
                if self.ctx.kernels is not None:
                    self.ctx.kernels.retire(self.sandbox)
                else:
                    self.sandbox.close()
            traj.finished_at = _now()
            self.save(final=True)
            self.emit("done")
        return traj


def replay_lm_for(lm: ControllerLM) -> ControllerLM:
    """Each run of a replay controller starts from its first response."""
    return lm.fork() if isinstance(lm, ReplayLM) else lm
