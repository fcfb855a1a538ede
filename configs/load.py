"""Load a profile from YAML, apply ``key.path=value`` overrides, and validate it.

Errors are :class:`ConfigError`, whose message names the file and the dotted key, because a
researcher editing YAML at 2 a.m. needs "configs/a.yaml: rlm.max_iterations: ..." and not a
pydantic dump.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlm_rig.configs.schema import RigConfig

PROFILE_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    pass


# Keys a release renamed: old dotted path -> new dotted path. A profile (or a run folder's saved
# config.yaml, which `eval --resume` and interp re-read) that still uses an old name loads: its value
# moves to the new key. Both names at once is an error naming the two.
RENAMED = {
    "rlm.cell_timeout_s": "sandbox.cell_timeout_s",  # the sandbox enforces it
    "rlm.output_max_chars": "rlm.feedback_max_chars",  # vs sandbox.max_output_chars (what the kernel may print)
    "eval.concurrency": "eval.max_samples",  # examples in flight
    "worker.concurrency": "worker.max_connections",  # requests in flight
    "worker.temperature": "worker.sampling.temperature",  # sampling is set per level
    "controller.temperature": "controller.sampling.temperature",
}


def migrate_renamed(data: dict[str, Any], where: str = "<config>") -> list[str]:
    """Move every old key of :data:`RENAMED` to its new place in ``data`` (in place); returns one line per
    key moved, e.g. ``rlm.cell_timeout_s is now sandbox.cell_timeout_s``."""
    moved = []
    for old, new in RENAMED.items():
        *osec, okey = old.split(".")
        node = _section(data, osec)
        if node is None or okey not in node:
            continue
        *nsec, nkey = new.split(".")
        target = _section(data, nsec, create=True)
        if target is None:
            raise ConfigError(f"{where}: {old} was renamed to {new}, but {'.'.join(nsec)} is not a section")
        if nkey in target:
            raise ConfigError(f"{where}: {old} was renamed to {new}; give only {new}")
        target[nkey] = node.pop(okey)
        moved.append(f"{old} is now {new}")
    return moved


def _section(data: dict[str, Any], path: list[str], create: bool = False) -> dict[str, Any] | None:
    node: Any = data
    for part in path:
        if not isinstance(node, dict):
            return None
        if part not in node and create:
            node[part] = {}
        node = node.get(part)
    return node if isinstance(node, dict) else None


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
    key = RENAMED.get(key.strip(), key)  # `--set rlm.cell_timeout_s=10` still works: it sets the new key
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
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key"
        elif e["type"] in ("missing", "missing_keyword_only_argument"):
            msg = "missing required key"
        got = e.get("input")
        quiet = ("missing", "extra_forbidden", "unexpected_keyword_argument", "missing_keyword_only_argument")
        tail = f" (got {got!r})" if e["type"] not in quiet and not isinstance(got, dict) else ""
        lines.append(f"{where}: {loc}: {msg}{tail}")
    return "\n".join(lines)


def load_config(name_or_path: str | Path, overrides: list[str] | None = None, *, check_files: bool = True) -> RigConfig:
    """The one profile loader: a name in configs/ or a path (a run folder's config.yaml too), ``--set``
    overrides, renamed keys moved (RENAMED), validated. ``check_files=False`` skips files only a live
    run needs (the controller's replay file), for readers of a finished run such as interp."""
    path = resolve_profile(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data.setdefault("name", path.stem)  # a profile is named by its file unless it says otherwise
    for ov in overrides or []:
        apply_override(data, ov)
    _anchor_paths(data, path.parent)
    return validate_config(data, str(path), check_files=check_files)


def _anchor_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file references in a profile are relative to the profile's own folder when they exist there."""
    refs = [("controller", "replay_file"), ("controller", "model"), ("controller", "system_prompt_file"),
            ("worker", "model")]
    workers = data.get("workers")
    refs += [(("workers", n), "model") for n in (workers if isinstance(workers, dict) else {})]
    for section, key in refs:
        sec = data.get(section) if isinstance(section, str) else (data.get(section[0]) or {}).get(section[1])
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            val = sec[key]
            cand = base / val
            if not Path(val).is_absolute() and not Path(val).exists() and cand.exists():
                sec[key] = str(cand.resolve())


def validate_config(data: dict[str, Any], where: str = "<config>", *, check_files: bool = True) -> RigConfig:
    """The one validation of a profile (a YAML file, a run folder's saved config, a test's dict)."""
    data = copy.deepcopy(data)
    migrate_renamed(data, where)
    try:
        cfg = RigConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where)) from None
    if check_files and cfg.rlm.tools:  # a tool that cannot be imported fails here, before any server starts
        try:
            cfg.rlm.import_tools()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    replay = cfg.controller.replay_file
    if check_files and cfg.controller.backend == "replay" and replay and not Path(replay).expanduser().exists():
        raise ConfigError(f"{where}: controller.replay_file {replay!r} does not exist")
    return cfg
