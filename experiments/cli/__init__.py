"""The one ``rlm-rig`` command line: one module per command group, mounted here.

Each command module exposes ``register(app)`` and imports only ``experiments.cli._common`` from the
CLI, so nothing imports back into this package and there are no cycles. Heavy imports happen
inside the commands, so ``rlm-rig --help`` stays fast.
"""
from __future__ import annotations

import typer

from rlm_rig.experiments.cli import (ask, boundary, chat, config, doctor, evaluate, export, fork, importing, interp,
                                     plan, report, serve, view)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rlm-rig: a research rig for Recursive Language Models")
for _group in (ask, chat, evaluate, fork, report, boundary, view, export, importing, interp, plan, doctor, serve, config):
    _group.register(app)


def main() -> None:
    app()

