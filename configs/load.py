"""Load a profile from YAML, apply ``key.path=value`` overrides, and validate it.

Errors are :class:`ConfigError`, whose message names the file and the dotted key, because a
researcher editing YAML at 2 a.m. needs "configs/a.yaml: rlm.max_iterations: ..." and not a
pydantic dump.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import RigConfig

PROFILE_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    pass


def resolve_profile(name_or_path: str | Path) -> Path:
    """A path, or a profile name such as ``cpu-tiny`` that lives in ``configs/``."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    for cand in (PROFILE_DIR / f"{name_or_path}.yaml", PROFILE_DIR / str(name_or_path)):
        if cand.exists():
            return cand
    names = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} not found: not a file, and not one of the profiles {names}")


def apply_override(data: dict[str, Any], override: str, source: str = "--set") -> None:
    """Set ``a.b.c=value`` in nested dicts; the value is parsed as YAML (so 3, true, [a, b] work)."""
    if "=" not in override:
        raise ConfigError(f"{source}: override {override!r} must look like key.path=value")
    key, raw = override.split("=", 1)
    parts = [k for k in key.strip().split(".") if k]
    if not parts:
        raise ConfigError(f"{source}: override {override!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: override {override!r}: value is not valid YAML ({e})") from None
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: cannot set {key!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def _format_validation(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "missing required key"
        got = e.get("input")
        tail = f" (got {got!r})" if e["type"] not in ("missing", "extra_forbidden") and not isinstance(got, dict) else ""
        lines.append(f"{where}: {loc}: {msg}{tail}")
    return "\n".join(lines)


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> RigConfig:
    path = resolve_profile(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for ov in overrides or []:
        apply_override(data, ov)
    _anchor_paths(data, path.parent)
    return validate_config(data, str(path))


def _anchor_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file references in a profile are relative to the profile's own folder when they exist there."""
    refs = [("controller", "replay_file"), ("controller", "model"), ("worker", "model")]
    for section, key in refs:
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            val = sec[key]
            cand = base / val
            if not Path(val).is_absolute() and not Path(val).exists() and cand.exists():
                sec[key] = str(cand.resolve())


def validate_config(data: dict[str, Any], where: str = "<config>") -> RigConfig:
    try:
        return RigConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where)) from None
