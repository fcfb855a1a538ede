"""``rlm-rig doctor``: is this machine ready for a profile? One line per check, the fix on failure."""
from __future__ import annotations

from typing import Optional

import typer

from rlm_rig.experiments.cli._common import ConfigOpt, SetOpt, guarded, interp_section, load_cfg


def register(app: typer.Typer) -> None:
    app.command("doctor")(guarded(doctor_cmd))


def doctor_cmd(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt) -> None:
    """Check GPUs against the plan, torch's CUDA build, vllm/bitsandbytes/nnsight, bubblewrap, ports, models, disk."""
    from rlm_rig.configs.memplan import make_plan
    from rlm_rig.worker.models import built_model_folder
    from rlm_rig.experiments.runs.doctor import FAIL, diagnose, why_not_here

    cfg = load_cfg(config, overrides)
    icfg = interp_section(cfg)
    plan = make_plan(cfg, interp_cfg=icfg, locate=built_model_folder)
    checks = diagnose(cfg, plan, icfg)
    print(f"doctor for profile {cfg.name}")
    for c in checks:
        print(c.line(), flush=True)
    failed = [c for c in checks if c.status == FAIL]
    reason = why_not_here(cfg, plan, checks)
    if reason:
        print(reason)
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed" + ("" if failed else ": ready"))
    if failed:
        raise typer.Exit(1)
