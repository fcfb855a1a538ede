"""``rlm-rig ledger RUN`` and ``rlm-rig calibrate RUN``: the loss ledger and the worker's calibration of one run
(experiments/analysis/ledger.py, calibration.py; docs/BOUNDARY.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import UserError, guarded


def register(app: typer.Typer) -> None:
    app.command("ledger")(guarded(ledger_cmd))
    app.command("calibrate")(guarded(calibrate_cmd))


def _run(run: Path) -> None:
    from rlm_rig.records.runlog import RunFolder

    if not RunFolder(run).is_run():
        raise UserError(f"{str(run)!r} is not a run folder (no samples.jsonl, config.yaml or trajectory.json)")


def ledger_cmd(
    run: Path = typer.Argument(..., help="run folder of a generated set (needle-sweep, ...) or the counting set"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="default: RUN/ledger"),
    capture: Optional[Path] = typer.Option(None, "--capture", help="an `interp capture` folder of this run: held-out "
                                           "probes split wrong replies into represented-not-said / misread"),
    layer: Optional[int] = typer.Option(None, "--probe-layer", help="the layer whose probe decides (with --capture)"),
) -> None:
    """Assign every lost piece of gold to a stage (never sent, represented not said, misread, mis-aggregated,
    format) and plot the stages against the gold's position in the document."""
    from rlm_rig.experiments.analysis.boundary import write_ledger

    _run(run)
    if capture is not None and not capture.is_dir():
        raise UserError(f"--capture {str(capture)!r} is not a folder")
    try:
        res = write_ledger(run, out_dir or run / "ledger", capture=capture, layer=layer)
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(f"ledger: {res['table']}  plot: {res['plot']}")


def calibrate_cmd(
    run: Path = typer.Argument(..., help="run folder whose sub_calls recorded logprobs, with per-chunk gold"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="default: RUN/calibration"),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0, help="low confidence: below this"),
    bins: int = typer.Option(10, "--bins", min=2, help="equal-width confidence bins"),
) -> None:
    """Reliability diagram and ECE of the worker's reply confidence against per-chunk gold, and whether
    final-answer errors concentrate in examples with a low-confidence chunk."""
    from rlm_rig.experiments.analysis.boundary import write_calibration

    _run(run)
    try:
        res = write_calibration(run, out_dir or run / "calibration", threshold=threshold, bins=bins)
    except ValueError as e:
        raise UserError(str(e).splitlines()[0]) from None
    print(f"ECE {res['ece']:.4f} over {res['n']} replies; diagram: {res['plot']}")
