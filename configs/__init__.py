"""Rig profiles (YAML in this folder): the rooms' settings types composed, and the one loader."""
from configs.load import RENAMED, ConfigError, apply_override, load_config, resolve_profile, validate_config
from configs.schema import EvalSettings, RigConfig

__all__ = ["ConfigError", "EvalSettings", "RENAMED", "RigConfig", "apply_override", "load_config", "resolve_profile",
           "validate_config"]
