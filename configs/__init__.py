"""Rig profiles (YAML in this folder) and their validation."""
from configs.load import ConfigError, apply_override, load_config, resolve_profile, validate_config
from configs.schema import (
    BUILTIN_MODELS,
    ControllerConfig,
    EvalConfig,
    RigConfig,
    RLMConfig,
    SandboxConfig,
    ServerConfig,
    WorkerConfig,
    check_model_ref,
)

__all__ = [
    "BUILTIN_MODELS", "ConfigError", "ControllerConfig", "EvalConfig", "RLMConfig", "RigConfig", "SandboxConfig",
    "ServerConfig", "WorkerConfig", "apply_override", "check_model_ref", "load_config", "resolve_profile",
    "validate_config",
]
