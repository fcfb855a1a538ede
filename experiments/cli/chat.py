"""`rlm-rig chat`: an interactive session over one document (controller/session.py).

Questions come one a line on stdin (typed, or piped: `printf 'q1\\nq2\\n' | rlm-rig chat --doc F`); each gets
the REPL and the conversation the earlier ones left. Answers print as `ask` prints them (escape sequences
shown, not obeyed); each question's trajectory goes to RUN/trajectories/q001.json, q002.json, ...
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import (
    ConfigOpt,
    SetOpt,
    UserError,
    default_run_dir,
    err,
    guarded,
    load_cfg,
    read_doc,
    sigterm_as_interrupt,
)

QUIT = {"exit", "quit", ":q"}


def register(app: typer.Typer) -> None:
    app.command()(guarded(chat))


def chat(
    doc: Path = typer.Option(..., "--doc", help="the document (a text file)"),
    config: str = ConfigOpt,
    controller_replay: Optional[Path] = typer.Option(None, "--controller-replay", help="replay these controller responses"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<time>-chat-<profile>)"),
    force: bool = typer.Option(False, "--force", help="replace an earlier `chat` run in --out (only its files)"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Ask several questions about one document, one a line on stdin; the REPL and the conversation carry over."""
    from rlm_rig.controller.rig import Rig
    from rlm_rig.controller.tools import tool_result_error
    from rlm_rig.records.runlog import RunFolder

    cfg = load_cfg(config, overrides)
    text = read_doc(doc, controller_replay)
    run_dir = out_dir or default_run_dir(cfg, "chat")
    folder = RunFolder(run_dir)
    held = folder.claim("chat", force=force)  # before any server starts
    sigterm_as_interrupt()
    bad_tool = None
    try:
        with Rig(cfg, run_dir=run_dir, controller_replay=controller_replay) as rig, rig.session(text) as session:
            folder.trajectories_dir.mkdir(parents=True, exist_ok=True)
            for question in _questions():
                path = folder.chat_trajectory_path(session.asked + 1)
                t = session.ask(question, save_to=path)
                _show(t, path)
                bad_tool = bad_tool or tool_result_error(t)
    finally:
        held.release()
    if bad_tool:  # as `ask`: the cell was told; the user's tool is broken: one line, once the run is saved
        raise UserError(bad_tool)


def _questions():
    """Non-empty lines of stdin until EOF or `exit`; a prompt on stderr only when a person types."""
    tty = sys.stdin.isatty()
    while True:
        if tty:
            err.print("[bold]?[/] ", end="")
        line = sys.stdin.readline()
        if not line:
            return
        q = line.strip()
        if q.lower() in QUIT:
            return
        if q:
            yield q


def _show(t, path: Path) -> None:
    from rich.markup import escape

    from rlm_rig.repl.text import terminal_safe

    err.print(f"stop: {t.stop_reason}  turns: {len(t.turns)}  cells: {len(t.cells)}  sub_calls: {len(t.sub_calls)}"
              + (f"  compacted: {len(t.compactions)}" if t.compactions else ""))
    if t.error:
        err.print(f"[red]run error:[/] {escape(terminal_safe(t.error.splitlines()[0]))}")
    print(f"answer: {terminal_safe(t.final_answer) if t.final_answer is not None else None}", flush=True)
    print(f"trajectory: {path}", flush=True)
