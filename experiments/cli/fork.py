"""`rlm-rig fork` and `rlm-rig fork-study`: closed-loop counterfactual forks of a recorded run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import SetOpt, UserError, guarded, sigterm_as_interrupt

ControllerOpt = typer.Option(None, "--controller", help="live: the profile's controller model continues after the "
                             "fork point at temperature 0; replay: the recorded turns go on (default: live when the "
                             "run had a model controller, else replay)")
DocOpt = typer.Option(None, "--doc", help="an ask run's document (an eval run's examples are loaded again)")


def register(app: typer.Typer) -> None:
    app.command("fork")(guarded(fork_cmd))
    app.command("fork-study")(guarded(fork_study_cmd))


def _mode(controller: Optional[str]) -> Optional[str]:
    if controller not in (None, "live", "replay"):
        raise UserError(f"--controller {controller!r}: expected live or replay")
    return controller


def fork_cmd(
    run: Path = typer.Argument(..., help="the run folder (eval or ask)"),
    sample: str = typer.Argument(..., help="the sample id (an ask folder: ask)"),
    at: str = typer.Option(..., "--at", help="sub_call:K, the sub_call whose reply is replaced"),
    reply: str = typer.Option(..., "--reply", help="the reply sub_call K gets instead"),
    out: Path = typer.Option(..., "--out", help="the fork's folder"),
    controller: Optional[str] = ControllerOpt,
    doc: Optional[Path] = DocOpt,
    force: bool = typer.Option(False, "--force", help="replace an earlier fork in --out (only its files)"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Replay a run to sub_call K from its tape, replace reply K, let the controller continue; say what changed."""
    from rlm_rig.experiments.runs.fork import fork, parse_at

    sigterm_as_interrupt()
    rec = fork(run, sample, at=parse_at(at), reply=reply, out=out, controller=_mode(controller),  # type: ignore[arg-type]
               overrides=overrides or [], doc=doc, force=force)
    later = [s for s in rec.steps if s.changed]
    print(f"answer: {rec.answer_original!r} -> {rec.answer_fork!r} ({'changed' if rec.answer_changed else 'same'}); "
          f"{len(later)} later step(s) changed; {rec.worker_calls} worker call(s)")
    if rec.score_change is not None:
        print(f"score: {rec.score_original:.3f} -> {rec.score_fork:.3f}")
    print(f"fork: {out}")


def fork_study_cmd(
    run: Path = typer.Argument(..., help="the run folder (eval or ask)"),
    out: Path = typer.Option(..., "--out", help="the study's folder"),
    sample: Optional[list[str]] = typer.Option(None, "--sample", help="only these samples (repeatable)"),
    gold: Optional[Path] = typer.Option(None, "--gold", help="per-chunk gold, JSONL {sample, sub_call, gold} "
                                        "(default: the run's own, if it has one)"),
    controller: Optional[str] = ControllerOpt,
    doc: Optional[Path] = DocOpt,
    force: bool = typer.Option(False, "--force", help="replace an earlier study in --out (only its files)"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Fork every sub_call with the gold count, gold +- 1 and an empty reply: a table of how much each moves the answer."""
    from rlm_rig.experiments.studies.fork_study import format_summary, run_study, summarize

    sigterm_as_interrupt()
    if gold is not None and not gold.is_file():
        raise UserError(f"--gold {str(gold)!r} is not a file")
    table = run_study(run, out=out, controller=_mode(controller), samples=sample, gold=gold,  # type: ignore[arg-type]
                      overrides=overrides or [], doc=doc, force=force)
    print(format_summary(summarize(table)))
    print(f"{len(table)} forks; table: {out}")
