"""``rlm-rig plan``: the memory budget of a profile's GPUs and a verdict, before anything loads."""
from __future__ import annotations

from typing import Optional

import typer

from rlm_rig.experiments.cli._common import ConfigOpt, SetOpt, UserError, guarded, interp_section, load_cfg


def register(app: typer.Typer) -> None:
    app.command("plan")(guarded(plan_cmd))


def plan_cmd(
    config: str = ConfigOpt,
    overrides: Optional[list[str]] = SetOpt,
    gpu_gib: Optional[float] = typer.Option(None, "--gpu-gib", help="memory of each card in GiB (default: the "
                                            "card the profile was written for; A4500: 19.99)"),
) -> None:
    """Will this profile fit its GPUs? Weights, vLLM KV cache, controller context, interp peak; then a verdict."""
    from rlm_rig.configs.archs import UnknownArchitecture
    from rlm_rig.configs.memplan import make_plan, render
    from rlm_rig.worker.models import built_model_folder

    cfg = load_cfg(config, overrides)
    if gpu_gib is not None and gpu_gib <= 0:
        raise UserError(f"--gpu-gib must be positive, got {gpu_gib}")
    try:
        plan = make_plan(cfg, gpu_gib=gpu_gib, interp_cfg=interp_section(cfg), locate=built_model_folder)
    except UnknownArchitecture as e:
        raise UserError(str(e)) from None
    for line in render(plan):
        print(line)
    if not plan.fits:
        raise typer.Exit(1)
