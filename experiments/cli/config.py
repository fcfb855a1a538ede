"""`rlm-rig config`: validate a profile and print it resolved."""
from __future__ import annotations

from typing import Optional

import typer

from rlm_rig.experiments.cli._common import ConfigOpt, SetOpt, guarded, load_cfg, out


def register(app: typer.Typer) -> None:
    app.command("config")(guarded(show_config))


def show_config(config: str = ConfigOpt, overrides: Optional[list[str]] = SetOpt) -> None:
    """Validate a profile (with overrides) and print it resolved."""
    import yaml

    cfg = load_cfg(config, overrides)
    out.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), highlight=False, markup=False)
