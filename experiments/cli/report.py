"""`rlm-rig report` and `rlm-rig score`: tables and plots of run folders; official scores of outside outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import UserError, err, guarded, run_report
from rlm_rig.experiments.datasets.registry import generator_names, names


def register(app: typer.Typer) -> None:
    app.command("score")(guarded(score_cmd))
    app.command("report")(guarded(report_cmd))


def score_cmd(
    file: Path = typer.Argument(..., help="JSONL with gold, output (and answer_type for synth)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help=" | ".join(n for n in names() if n not in generator_names())),
    out_file: Optional[Path] = typer.Option(None, "--out", help="write scored rows here (default: stdout)"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
) -> None:
    """Score outputs of models run elsewhere with the official rules."""
    from rlm_rig.records.outdirs import claim_file
    from rlm_rig.experiments.datasets.scoring import score_file

    if not file.is_file():
        raise UserError(f"{str(file)!r} is not a file")
    if out_file is not None:
        claim_file(out_file, force=force)
    try:
        mean = score_file(dataset, file, out_file)
    except ValueError as e:
        raise UserError(str(e)) from None
    err.print(f"mean score: {mean:.4f}")

def report_cmd(
    runs: list[Path] = typer.Argument(..., help="run folder(s)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="default: RUN/report for one run"),
) -> None:
    """Tables (Markdown, CSV) and plots (PNG) for one or more runs, side by side."""
    from rlm_rig.records.runlog import RunFolder

    for r in runs:
        if not RunFolder(r).is_run():
            raise UserError(f"{str(r)!r} is not a run folder (no samples.jsonl, config.yaml or trajectory.json)")
    run_report(runs, out_dir or (runs[0] / "report" if len(runs) == 1 else Path("runs") / "report"))

