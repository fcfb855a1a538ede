"""A session: several questions about one document in one REPL and one controller conversation.

WHY: a researcher asks follow-up questions. Re-reading a 5M-character document for each one wastes the
variables the controller already built, so a session keeps the kernel (its variables survive) and the
conversation (the controller remembers what it did). Each question is still its own run with its own
:class:`Trajectory` (``session: {id, question}``), so scoring, the viewer and interp read it as any run.

When the carried conversation would fill more than ``rlm.session_compact_at`` of the controller's window,
the earlier questions are compacted before the next one: the controller itself summarises them, the
conversation restarts from the system prompt and that summary, and a :class:`Compaction` in the new run's
trajectory records what was replaced and the summary. Within one question the context guard's trimming
(controller/context.py) applies as in any run.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from rlm_rig.controller.context import estimate_tokens
from rlm_rig.records.trajectory import Compaction, Trajectory

SUMMARY_REQUEST = (
    "[rig] Your conversation is about to be shortened to fit your context window. Write a summary of the "
    "questions so far, your answers, and every REPL variable you made that may matter later (its name and what "
    "it holds). Plain text, no code block. The REPL keeps all its variables."
)
SUMMARY_HEADER = "[rig] Summary of this session's earlier questions, written by you before they were removed:\n"
NEXT_QUESTION = "Next question about the same document (the REPL still holds your variables).\n\n"


class Session:
    """``rig.session(doc)``; then ``session.ask(question)`` as often as wanted; ``close()`` (or ``with``)."""

    def __init__(self, rig: Any, doc: str):
        self.rig = rig
        self.doc = doc
        self.id = uuid.uuid4().hex[:12]
        self.asked = 0
        self.sandbox: Any = None  # the first run's kernel, kept for the next questions
        self.messages: list[dict[str, str]] = []  # the controller conversation after the last question
        self.trajectories: list[Trajectory] = []
        self.lm: Any = None  # one controller for every question (a replay goes on where it stopped)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def ask(self, question: str, *, save_to: str | Path | None = None, instructions: str | None = None,
            on_event: Any = None) -> Trajectory:
        """One more question: its own trajectory, the same REPL and conversation."""
        from rlm_rig.controller.loop import RLM
        from rlm_rig.controller.memory import trim_heap

        ctx = self.rig.context()
        self.lm = ctx.lm = self.lm or ctx.lm
        ctx.session, ctx.on_event = self, on_event
        self.asked += 1
        try:
            t = RLM(ctx).run(self.doc, question, run_id=f"{self.id}-q{self.asked}", save_to=save_to,
                             instructions=instructions)
        finally:
            trim_heap()
        self.trajectories.append(t)
        return t

    # -- hooks the loop calls (controller/loop.py _Run), for the root run only --------------------
    def begin(self, run: Any) -> None:
        """Continue the conversation: the earlier questions (compacted when they would crowd the window),
        then this question. The first turn records the whole conversation it was shown."""
        run.traj.session = {"id": self.id, "question": self.asked}
        if not self.messages:
            return
        task = run.traj.task_instructions
        text = (f"{NEXT_QUESTION}" + (f"Task instructions:\n<<<\n{task.strip()}\n>>>\n\n" if task else "")
                + f"Question: {run.question}\n[turn 1 of {run.cfg.rlm.max_iterations}]")
        self.messages.append({"role": "user", "content": text})
        window = run.window
        count = getattr(run.ctx.lm, "count_tokens", None) or estimate_tokens
        if window and count(self.messages) > run.cfg.rlm.session_compact_at * window:
            self._compact(run, count)
        run.messages = self.messages
        run.sent = 0

    def _compact(self, run: Any, count: Any) -> None:
        """The controller summarises the earlier questions; they are replaced by its summary."""
        earlier, question = self.messages[:-1], self.messages[-1]
        before = count(self.messages)
        gen = run.ctx.lm.generate(earlier + [{"role": "user", "content": SUMMARY_REQUEST}],
                                  max_new_tokens=run.cfg.controller.max_new_tokens)
        run.rlm.tokens.add(gen.prompt_tokens + gen.completion_tokens)  # shared with the run's budget
        run.traj.model_wall_s += gen.latency_s
        self.messages = [earlier[0], {"role": "user", "content": SUMMARY_HEADER + gen.text.strip()}, question]
        run.traj.compactions.append(Compaction(
            before_turn=0, messages_replaced=len(earlier) - 1, tokens_before=before, tokens_after=count(self.messages),
            summary=gen.text, prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens))

    def reuse(self, run: Any) -> Any:
        """The kept kernel, now answering this run's sub_calls (None before the first question)."""
        if self.sandbox is None or getattr(self.sandbox, "_closed", False):
            return None
        self.sandbox.handler = run.router
        if hasattr(self.sandbox, "tool_handler"):  # tool calls are recorded in this question's trajectory
            self.sandbox.tool_handler = run.tool_runner
        if not run.official:  # the official REPL holds only its own names
            self.sandbox.run_cell(f"question = {run.question!r}")
        return self.sandbox

    def end(self, run: Any) -> None:
        """Keep the kernel and the conversation for the next question."""
        self.sandbox = run.sandbox
        self.messages = run.messages

    def close(self) -> None:
        if self.sandbox is not None:
            kernels = getattr(self.rig, "kernels", None)
            if kernels is not None:
                kernels.retire(self.sandbox)
            else:
                self.sandbox.close()
            self.sandbox = None
