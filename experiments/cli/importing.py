"""``rlm-rig import --format rlm-jsonl FILE... --out DIR``: logs of other tools as a rig run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import UserError, guarded, out


def register(app: typer.Typer) -> None:
    app.command("import")(guarded(import_cmd))


def import_cmd(
    files: list[Path] = typer.Argument(..., help="official RLM log file(s) (.jsonl), or folders of them"),
    fmt: str = typer.Option("rlm-jsonl", "--format", "-f", help="rlm-jsonl: the official RLM logger's JSONL"),
    out_dir: Path = typer.Option(..., "--out", help="the run folder to write"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="score with this dataset's rules (with --gold)"),
    gold: Optional[Path] = typer.Option(None, "--gold", help='JSONL of {"id", "gold"[, "answer_type"]} per run'),
    question: str = typer.Option("", "--question", "-q", help="the question asked (the log does not record it)"),
    doc: Optional[Path] = typer.Option(None, "--doc", help="the document the runs read (its length and hash)"),
) -> None:
    """Turn official RLM run logs into a run folder that `view`, `report`, `score` and `interp` read."""
    from rlm_rig.experiments.runs.imported import import_logs

    if gold is not None and not gold.is_file():
        raise UserError(f"--gold {str(gold)!r} is not a file")
    try:
        summary = import_logs(files, out_dir, fmt=fmt, dataset=dataset, gold_file=gold, question=question, doc=doc)
    except ValueError as e:  # a log that is not an official one, a bad gold file, an unknown format or dataset
        raise UserError(str(e).splitlines()[0]) from None
    out.print(f"imported {summary.get('n')} run(s) into {out_dir}")
