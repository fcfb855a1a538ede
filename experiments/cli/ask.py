"""`rlm-rig ask`: one RLM run over one document."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import (
    ConfigOpt,
    SetOpt,
    TapeOpt,
    check_tape,
    default_run_dir,
    err,
    guarded,
    load_cfg,
    read_doc,
    UserError,
    sigterm_as_interrupt,
)


def register(app: typer.Typer) -> None:
    app.command()(guarded(ask))


def ask(
    doc: Path = typer.Option(..., "--doc", help="the document: a text file, a .json/.jsonl file (a list or a dict), "
                             "or a folder of .txt files (a list)"),
    question: str = typer.Option(..., "--question", "-q"),
    config: str = ConfigOpt,
    controller_replay: Optional[Path] = typer.Option(None, "--controller-replay", help="replay these controller responses"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<time>-ask-<profile>)"),
    force: bool = typer.Option(False, "--force", help="replace an earlier `ask` run in --out (only its files)"),
    tape: Optional[Path] = TapeOpt,
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Answer one question about one long document with the RLM."""
    from rlm_rig.controller.rig import Rig
    from rlm_rig.records.runlog import RunFolder

    cfg = load_cfg(config, overrides)
    check_tape(tape)
    text = read_doc(doc, controller_replay)
    run_dir = out_dir or default_run_dir(cfg, "ask")
    folder = RunFolder(run_dir)
    held = folder.claim("ask", force=force)  # before any server starts: never over another run's or the user's files
    sigterm_as_interrupt()
    from rlm_rig.experiments.cli.live import AskProgress

    try:
        with Rig(cfg, run_dir=run_dir, controller_replay=controller_replay, tape=tape) as rig:
            traj_path = folder.ask_trajectory_path
            with AskProgress(rig.worker, cfg.rlm.max_iterations) as live:
                t = rig.ask(text, question, save_to=traj_path, on_event=live.on_event)
    finally:
        held.release()
    err.print(f"stop: {t.stop_reason}  turns: {len(t.turns)}  cells: {len(t.cells)}  sub_calls: {len(t.sub_calls)}")
    from rich.markup import escape

    from rlm_rig.repl.text import terminal_safe

    if t.error:
        err.print(f"[red]run error:[/] {escape(terminal_safe(t.error.splitlines()[0]))}")
    # plain print: rich would wrap long paths, and scripts read these two lines. The answer is model
    # output: escape sequences are shown, not obeyed (trajectory.json keeps the raw text).
    print(f"answer: {terminal_safe(t.final_answer) if t.final_answer is not None else None}")
    print(f"trajectory: {traj_path}")
    from rlm_rig.controller.tools import tool_result_error

    bad_tool = tool_result_error(t)
    if bad_tool:  # the cell was told; the user's tool is broken: say so in one line (the run is saved)
        raise UserError(bad_tool)
