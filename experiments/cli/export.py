"""``rlm-rig export RUN --format rlm-jsonl [--out DIR]``: trajectories in other tools' formats."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import UserError, guarded

FORMATS = ("rlm-jsonl",)


def register(app: typer.Typer) -> None:
    app.command("export")(guarded(export_cmd))


def export_cmd(
    run: Path = typer.Argument(..., help="run folder (eval) or ask folder"),
    fmt: str = typer.Option("rlm-jsonl", "--format", "-f", help="rlm-jsonl: the official RLM logger's JSONL"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="default: RUN/export/<format>"),
) -> None:
    """Write each trajectory of a run in another tool's format (the official RLM visualizer's)."""
    from rlm_rig.experiments.view.rlm_jsonl import export_run

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not known; formats: {', '.join(FORMATS)}")
    if not run.is_dir():
        raise UserError(f"{str(run)!r} is not a folder")
    try:
        paths = export_run(run, out_dir or run / "export" / fmt)
    except ValueError as e:
        raise UserError(f"{run}: {str(e).splitlines()[0]}") from None
    print(f"{len(paths)} file(s) in {out_dir or run / 'export' / fmt}")