"""The RLM loop: controller turn -> one REPL cell -> truncated feedback, until a final answer.

Every event lands in the :class:`Trajectory`, which is saved atomically after each turn, so a
killed run still leaves a readable, replayable record of what happened up to the kill.
"""
from __future__ import annotations

import hashlib
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rlm_rig.configs.schema import RigConfig
from rlm_rig.controller import dialects, prompts
from rlm_rig.controller.caps import RunCaps, cell_failed
from rlm_rig.controller.backends import ControllerLM, ReplayLM
from rlm_rig.controller.doctokens import ChunkTokens
from rlm_rig.controller.context import ContextFull, ContextGuard, estimate_tokens, guarded_generate
from rlm_rig.controller.parsing import parse_turn
from rlm_rig.records.trajectory import CapEvent, CellRecord, ControllerTurn, Trajectory
from rlm_rig.controller.subcalls import ChatMany, SharedTokens, SubCallBudget, SubCallRouter
from rlm_rig.controller.tools import ToolRunner, import_tools, tool_docs
from rlm_rig.repl.context import PackedContext, pack_context
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
    # plain JSON-able data put in the REPL next to the document (Python API: Rig.ask(extra_globals=...))
    extra_globals: dict[str, Any] | None = None
    routes: dict[str, Any] | None = None  # the workers by name (controller.subcalls.Route); None: `worker` alone
    session: Any = None  # a controller.session.Session: its REPL and conversation go on (root run only)
    default_model: str = "worker"
    decode_token: Callable[[int], str] | None = None  # the worker's tokenizer (one id -> text): reply confidence


class RLM:
    def __init__(self, ctx: RunContext, *, depth: int = 0, budget: SubCallBudget | None = None,
                 tokens: SharedTokens | None = None, t0: float | None = None):
        """A nested RLM gets its parent's ``budget`` (sub_calls), ``tokens`` (controller tokens) and ``t0``
        (the root's start, for the wall clock): every level spends the same budgets."""
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.depth = depth
        self.budget = budget or SubCallBudget(self.cfg.rlm.max_sub_calls)
        self.tokens = tokens or SharedTokens()
        self.t0 = t0
        self.tools = import_tools(self.cfg.rlm.tools) if self.cfg.rlm.tools else {}

    def budgets_left(self) -> dialects.Budgets:
        """What a child is told remains of the shared budgets."""
        wall = self.cfg.rlm.max_example_wall_s
        left = None if wall is None or self.t0 is None else max(0.0, wall - (time.perf_counter() - self.t0))
        return dialects.Budgets(sub_calls=max(0, self.budget.limit - self.budget.used),
                                controller_tokens=max(0, self.cfg.rlm.max_controller_tokens - self.tokens.used),
                                wall_s=left)

    # -- helpers --------------------------------------------------------------------------
    def _nested_runner(self) -> Any:
        if not self.ctx.sub_calls_enabled or self.depth + 1 >= self.cfg.rlm.max_depth:
            return None

        def run_nested(chunk: str, instruction: str, depth: int) -> tuple[str | None, Trajectory]:
            child = RLM(self.ctx, depth=depth, budget=self.budget, tokens=self.tokens, t0=self.t0)
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
            out = prompts.head_tail(out, limit)
            cell.feedback_truncated = True
        notices = list(res.notices)  # the sandbox words restarts itself ("... all variables ... are LOST")
        return prompts.cell_feedback(
            out, truncated_from=truncated_from, notices=notices, iteration=cell.turn + 1,
            max_iterations=self.cfg.rlm.max_iterations,
            **({"finish": dialects.OFFICIAL_FINISH} if self.cfg.rlm.dialect == "official" else {}),
        )

    # -- the loop -------------------------------------------------------------------------
    def run(self, doc: "str | list | dict | PackedContext", question: str, *, run_id: str | None = None, save_to: str | Path | None = None,
            instructions: str | None = None) -> Trajectory:
        """``instructions``: the dataset's task instructions (answer format etc.), told to the controller
        next to the question; ``doc`` (the REPL's ``prompt``, or ``context`` under the official dialect) stays
        unchanged: a str, or a list / dict of items (repl/context.py)."""
        if self.t0 is None:
            self.t0 = time.perf_counter()
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
        self.official = self.cfg.rlm.dialect == "official"
        self.sampling = self.cfg.controller.sampling_at(rlm.depth)  # what this run's controller samples with
        # sent per turn only where the depth has its own entry (children share one backend); the root's turns
        # leave the request to the backend's controller.sampling, byte for byte as before
        self.turn_sampling = self.cfg.controller.sampling_by_depth.get(rlm.depth)
        self.packed = doc if isinstance(doc, PackedContext) else pack_context(doc)
        self.doc, self.question, self.save_to = self.packed.flat, question, save_to
        self.t0 = time.perf_counter()
        self.traj = self._new_trajectory(run_id, instructions)
        if self.packed.structured:
            self.traj.doc_layout = self.packed.summary()
        cpt = estimate_chars_per_token(self.doc, self.ctx.count_tokens)  # sampled: never the whole document
        budget_tokens = self.cfg.chunk_budget()
        self.budget_chars = int(budget_tokens * cpt * 0.9)
        nested = rlm._nested_runner()
        self.router = self._router(budget_tokens, nested)
        self.tool_runner = ToolRunner(self.cfg.rlm.tools, self.traj, timeout_s=self.cfg.rlm.tool_timeout_s,
                                      max_result_chars=self.cfg.sandbox.max_tool_chars,
                                      max_calls=self.cfg.rlm.max_tool_calls, depth=rlm.depth) if rlm.tools else None
        self.messages: list[dict[str, str]] = self._opening(cpt, budget_tokens, nested is not None, instructions)
        self.sent = 0  # messages already shown in a recorded turn
        self.caps = RunCaps(self.cfg.rlm, self.traj, rlm.t0)  # the root's clock: nested runs share the wall clock
        window = self.ctx.context_window
        self.window = window
        count = getattr(self.ctx.lm, "count_tokens", None) or estimate_tokens
        self.guard = ContextGuard(window, count=count) if window else None
        self.sandbox: Sandbox | None = None
        self.stop_reason: str | None = None
        self.force_reason = f"You have used all {self.cfg.rlm.max_iterations} replies."
        self.unsent = ""  # feedback not yet shown when a cap broke the loop
        self.session = self.ctx.session if rlm.depth == 0 else None
        if self.session is not None:
            self.session.begin(self)

    # -- set-up ---------------------------------------------------------------------------
    def _opening(self, cpt: float, budget_tokens: int, can_nest: bool, instructions: str | None) -> list[dict[str, str]]:
        """The system prompt and the first user message, in the run's dialect; a nested run is also told what
        remains of the budgets it shares with its parent."""
        cfg, shape = self.cfg, prompts.describe_shape(self.doc, cpt)
        tools = dialects.tools_section(tool_docs(self.rlm.tools))
        budgets = self.rlm.budgets_left() if self.rlm.depth > 0 else None
        if self.official and not cfg.controller.system_prompt_file:
            system = dialects.official_system_prompt(
                dialects.context_shape(self.traj.doc_layout, shape), chunk_budget_tokens=budget_tokens,
                chunk_budget_chars=self.budget_chars, max_iterations=cfg.rlm.max_iterations,
                max_sub_calls=cfg.rlm.max_sub_calls, can_recurse=can_nest, tools=tools)
        else:  # the profile's prompt file, rendered with the dialect's names, else the built-in rig prompt
            doc_type = (self.traj.doc_layout or {}).get("type", "str")
            system = prompts.system_for(cfg, shape, doc_type, chunk_budget_tokens=budget_tokens,
                                        chunk_budget_chars=self.budget_chars, can_nest=can_nest,
                                        sub_calls_enabled=self.ctx.sub_calls_enabled) + tools
            if self.packed.structured and not self.official:
                system += "\n`prompt` is not one string here: it is " + dialects.context_shape(self.traj.doc_layout, shape) + ".\n"
        prologue, n = cfg.controller.user_prologue, cfg.rlm.max_iterations
        if self.official:
            first = dialects.official_first_message(self.question, instructions, budgets) + f"\n[turn 1 of {n}]"
            if prologue and prologue.strip():
                first = f"{prologue.strip()}\n\n{first}"
        else:
            first = prompts.first_user_message(self.question, instructions, prologue=prologue, max_iterations=n)
            if budgets is not None:
                first += "\n\n" + budgets.line()
        return [{"role": "system", "content": system}, {"role": "user", "content": first}]

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
            controller_sampling=asdict(self.sampling),
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
            concurrency=cfg.worker.max_connections,
            chunk_tokens=self.ctx.chunk_tokens,
            dialect=cfg.rlm.dialect,
            rlm_nested=nested,
            locate=self.packed.locate if self.packed.structured else None,
            clip=self.packed.clip_to_item if self.packed.structured else None,
            deadline=None if cfg.rlm.max_example_wall_s is None else self.rlm.t0 + cfg.rlm.max_example_wall_s,
            routes=self.ctx.routes if self.ctx.sub_calls_enabled else None,
            default_model=self.ctx.default_model,
            low_confidence=cfg.rlm.low_confidence,
            low_confidence_threshold=cfg.rlm.low_confidence_threshold,
            decode_token=self.ctx.decode_token,
        )

    def _open_sandbox(self) -> Sandbox:
        cfg = self.cfg
        limits = cfg.sandbox  # the profile's sandbox section is the sandbox's own SandboxLimits
        kept = self.session.reuse(self) if self.session is not None else None
        if kept is not None:
            return kept
        # the official dialect's REPL holds only its own names (and the caller's extra_globals)
        names = {} if self.official else {"CHUNK_BUDGET_CHARS": self.budget_chars, "question": self.question}
        names.update(self.ctx.extra_globals or {})
        kw = {"handler": self.router, "limits": limits, "extra_globals": names, "dialect": cfg.rlm.dialect}
        if self.tool_runner is not None:
            kw.update(tools=tool_docs(self.rlm.tools), tool_handler=self.tool_runner)
        if self.ctx.kernels is not None:
            sandbox = self.ctx.kernels.sandbox(self.packed, **kw)
        else:
            sandbox = Sandbox(self.packed, **kw)
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
        granted = self.rlm.tokens.reserve(cfg.controller.max_new_tokens, cfg.rlm.max_controller_tokens)
        n_trimmed = len(guard.trimmed) if guard else 0
        try:
            gen = guarded_generate(self.ctx.lm, self.messages, max(1, granted), guard, self.turn_sampling)
        except BaseException:
            self.rlm.tokens.settle(granted, 0)
            raise
        if guard and len(guard.trimmed) > n_trimmed:
            self.cap("context", f"removed {len(guard.trimmed) - n_trimmed} old cell output(s) to fit the "
                                f"{self.window:,}-token window")
        self.rlm.tokens.settle(granted, gen.prompt_tokens + gen.completion_tokens)
        traj.model_wall_s += gen.latency_s
        traj.turns.append(ControllerTurn(
            index=len(traj.turns), messages_in=self.messages[self.sent:], response=gen.text,
            prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens, latency_s=gen.latency_s,
            forced_final=forced,
        ))
        self.messages.append({"role": "assistant", "content": gen.text})
        self.sent = len(self.messages)
        parsed = parse_turn(gen.text)
        if self.official:  # FINAL(...) lines mean nothing in the official dialect: only `answer` ends a run
            parsed.final = None
        return parsed

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
        if self.tool_runner is not None:
            self.tool_runner.cell = len(traj.cells)
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
        if self.rlm.tokens.used >= limit:
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
                self.say(dialects.OFFICIAL_FORMAT_ERROR if self.official else prompts.FORMAT_ERROR)
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
        force = dialects.OFFICIAL_FORCE_FINAL if self.official else prompts.FORCE_FINAL
        self.say(self.unsent + force.format(reason=self.force_reason))
        try:
            parsed = self.turn(forced=True)
        except ContextFull as full:  # not even a final answer fits: end with what we have
            self.cap("context", str(full))
            self.stop_reason = "context"
            return
        if parsed.final is not None:
            self.resolve_final(parsed)
        elif self.official:
            self.official_forced_answer(parsed)

    def official_forced_answer(self, parsed: Any) -> None:
        """The forced turn of the official dialect: a block that sets `answer`, else the reply's text itself
        (what the official library answers with when a run ends without one)."""
        if parsed.code is not None:
            reason = self.stop_reason
            self.run_cell(parsed)
            self.stop_reason = reason  # the run still ended on its cap
        if self.traj.final_answer is None and parsed.code is None:
            text = self.traj.turns[-1].response.strip()
            self.traj.final_answer = text or None

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
            if self.tool_runner is not None:
                self.tool_runner.close()  # the tool child, if a call started one
            if self.session is not None:
                self.session.end(self)
            elif self.sandbox is not None:
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
