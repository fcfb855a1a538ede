"""What interp needs of a profile: its ``interp:`` section and the worker weights to replay.

The profile is read by the rig's one loader (`configs.load_config`); this module only picks interp's
part and applies the command line's overrides. The replay target is checked like any model
reference (`worker.models.check_model_ref`), so a wrong path fails before anything loads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from rlm_rig.interp.config import InterpConfig, InterpConfigError
from rlm_rig.worker.models import check_model_ref
from rlm_rig.worker.settings import DEFAULT_DTYPE


class WorkerModelSpec(BaseModel):
    """The worker weights a run used: interp replays exactly these."""

    model: str
    dtype: str = DEFAULT_DTYPE


def replay_target(cfg: InterpConfig, worker: Any | None, source: str) -> WorkerModelSpec:
    """``interp.model`` / ``interp.dtype`` when set, else the worker's: the replay runs the run's model."""
    model = cfg.model or (worker.model if worker is not None else None)
    if not model:
        raise InterpConfigError(f"{source}: no model to replay: set worker.model or interp.model")
    try:
        model = check_model_ref(str(model))
    except ValueError as exc:
        raise InterpConfigError(f"{source}: interp.model: {exc}") from None
    dtype = cfg.dtype or (worker.dtype if worker is not None else None) or DEFAULT_DTYPE
    return WorkerModelSpec(model=model, dtype=str(dtype))


def load_interp_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> tuple[InterpConfig, WorkerModelSpec, dict[str, Any]]:
    """A profile (name, path, or a run folder's config.yaml; None: defaults + overrides) -> (interp
    settings, the weights to replay, the profile as a dict). ``None`` overrides are ignored."""
    from rlm_rig.configs.load import ConfigError, load_config

    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    rig, source, base = None, "<defaults>", {}
    if path is not None:
        try:
            rig = load_config(path, check_files=False)
        except ConfigError as exc:
            raise InterpConfigError(str(exc)) from None
        source, base = str(path), rig.interp.model_dump(exclude_unset=True)
    try:
        cfg = InterpConfig.model_validate({**base, **ov})
    except ValidationError as exc:
        raise InterpConfigError(f"{source}: invalid 'interp' section:\n{exc}") from None
    return cfg, replay_target(cfg, rig.worker if rig else None, source), rig.model_dump(mode="json") if rig else {}
