"""What every ``rlm-rig`` command shares: consoles, common options, the error contract, profile loading.

Expected failures (a wrong path, a bad config, a dead worker, a server that would not start) end
with one red line naming the problem and exit code 2, never a traceback; ``RLM_RIG_DEBUG=1``
shows the traceback too. This module imports nothing else of the CLI, so command modules can all
import it without cycles.
"""
from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

err = Console(stderr=True)
out = Console()

ConfigOpt = typer.Option("cpu-tiny", "--config", "-c", help="profile name in configs/ or a YAML path")
SetOpt = typer.Option(None, "--set", "-s", help="override one key, e.g. --set rlm.max_iterations=8 (repeatable)")
TapeOpt = typer.Option(None, "--tape", help="a run folder whose tape answers identical sub_calls (same weights, "
                       "messages, sampling, seed); only the changed ones reach the worker")


class UserError(Exception):
    """An expected failure: shown as one line, exit code 2."""


def _expected() -> tuple[type[BaseException], ...]:
    from rlm_rig.configs.load import ConfigError
    from rlm_rig.records.outdirs import OutDirError
    from rlm_rig.experiments.runs.preflight import DiskFullError, RunInputError

    from rlm_rig.repl.types import SandboxError
    from rlm_rig.worker.settings import MissingSecret
    from rlm_rig.controller.prompts import PromptFileError
    from rlm_rig.records.tape import TapeMismatch

    kinds: list[type[BaseException]] = [UserError, ConfigError, FileNotFoundError, NotADirectoryError, PermissionError,
                                        RunInputError, DiskFullError, SandboxError, OutDirError, FileExistsError,
                                        MissingSecret, PromptFileError, TapeMismatch]
    try:
        from rlm_rig.worker.errors import ServerStartError, WorkerError

        kinds += [ServerStartError, WorkerError]
    except ImportError:
        pass
    return tuple(kinds)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except _expected() as e:
            if os.environ.get("RLM_RIG_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]; servers stopped")
            raise typer.Exit(130)

    return wrapper


def check_tape(tape: Optional[Path], ray: Optional[str] = None) -> None:
    """``--tape RUN`` names a run folder; a Ray eval does not read tapes yet."""
    if tape is not None and not tape.is_dir():
        raise UserError(f"--tape {str(tape)!r} is not a run folder")
    if tape is not None and ray is not None:
        raise UserError("--tape is not supported with --ray yet: run the eval on one box")


def sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `with Rig(...)` block stops its servers."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def load_cfg(config: str, overrides: Optional[list[str]]) -> Any:
    """Load and validate a profile (the one loader; its `interp:` section is interp's own settings type)."""
    from rlm_rig.configs.load import load_config

    return load_config(config, overrides or [])


def interp_section(cfg: Any) -> Any:
    """The profile's validated ``interp:`` section, for plan and doctor."""
    return cfg.interp


def default_run_dir(cfg: Any, kind: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.runs_dir) / f"{stamp}-{kind}-{cfg.name}"


def run_report(runs: list[Path], out_dir: Path) -> None:
    """Write the report of one or more runs and say where it is (also used by eval and demo)."""
    from rlm_rig.experiments.analysis.report import write_report

    write_report([Path(r) for r in runs], Path(out_dir))
    out.print(f"report: {Path(out_dir) / 'report.md'}")


def read_doc(doc: Path, controller_replay: Optional[Path]) -> "str | list | dict":
    """`ask` and `chat`: the document (a str, or the list / dict a .json, .jsonl or folder of .txt files holds),
    after checking the replay file is a file."""
    from rlm_rig.experiments.datasets.contexts import ContextFileError, load_context_file

    if controller_replay is not None and not controller_replay.is_file():
        raise UserError(f"--controller-replay {str(controller_replay)!r} is not a file")
    try:
        return load_context_file(doc)
    except ContextFileError as exc:
        raise UserError(str(exc)) from None
