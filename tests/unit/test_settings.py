"""Each setting has one owner and one default (issue 19, part 2).

A profile section is the settings type of the room that reads it; the constructors that can be
called without a profile (WorkerClient, TransformersWorker, WorkerWatch, ServerSpec, ReplayModel)
take their keyword defaults from those types. These tests introspect every settings type and every
such construction path, and fail when a second default appears or configs mirrors a room's field.
"""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml
from pydantic import BaseModel

from rlm_rig.configs.load import RENAMED, ConfigError, load_config, validate_config
from rlm_rig.configs.schema import ClusterConfig, EvalSettings, RigConfig
from rlm_rig.controller.settings import ControllerSettings, RLMSettings
from rlm_rig.interp.config import InterpConfig
from rlm_rig.repl.types import SandboxLimits
from rlm_rig.worker.settings import DEFAULT_DTYPE, Sampling, ServerSettings, WatchSettings, WorkerSettings

ROOM_TYPES = (WorkerSettings, ServerSettings, WatchSettings, SandboxLimits, ControllerSettings, RLMSettings, InterpConfig)


def defaults_of(t: type) -> dict[str, object]:
    """Field name -> default of a dataclass or a pydantic model (factories called)."""
    if dataclasses.is_dataclass(t):
        out = {}
        for f in dataclasses.fields(t):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out
    return {n: f.get_default(call_default_factory=True) for n, f in t.model_fields.items() if not f.is_required()}


def param_defaults(fn) -> dict[str, object]:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def construction_paths():
    """(what, its keyword defaults, the settings type they must agree with, renames param -> field)."""
    from rlm_rig.interp.model import ReplayModel
    from rlm_rig.worker.client import WorkerClient
    from rlm_rig.worker.hf import TransformersWorker
    from rlm_rig.worker.server import ServerSpec
    from rlm_rig.worker.watch import WorkerWatch

    return [
        ("WorkerClient", param_defaults(WorkerClient.__init__), WorkerSettings, {"concurrency": "max_connections"}),
        ("TransformersWorker", param_defaults(TransformersWorker.__init__), WorkerSettings, {}),
        ("WorkerClient", param_defaults(WorkerClient.__init__), Sampling, {}),  # temperature, top_p, seed
        ("TransformersWorker", param_defaults(TransformersWorker.__init__), Sampling, {}),
        ("WorkerWatch", param_defaults(WorkerWatch.__init__), WatchSettings, {}),
        ("ServerSpec", defaults_of(ServerSpec), ServerSettings, {}),
        ("ServerSpec", {"dtype": defaults_of(ServerSpec)["dtype"]}, WorkerSettings, {}),
        ("ReplayModel", {"dtype": param_defaults(ReplayModel.__init__)["dtype"]}, WorkerSettings, {}),
        ("RigConfig", {k: v for k, v in defaults_of(RigConfig).items() if k == "sandbox"}, RigConfig, {}),
    ]


def disagreements(paths) -> list[str]:
    bad = []
    for what, params, owner, renames in paths:
        owned = defaults_of(owner)
        for name, value in params.items():
            field = renames.get(name, name)
            if field in owned and owned[field] != value:
                bad.append(f"{what}.{name}={value!r} but {owner.__name__}.{field}={owned[field]!r}")
    return bad


def test_every_construction_path_takes_the_owners_default():
    assert disagreements(construction_paths()) == []


def test_the_check_sees_a_second_default():
    def client(concurrency=8, max_tokens=512): ...

    assert disagreements([("f", param_defaults(client), WorkerSettings, {"concurrency": "max_connections"})]) == [
        "f.max_tokens=512 but WorkerSettings.max_tokens=256"]


def test_the_four_former_disagreements_have_one_value():
    cfg = validate_config({"name": "t", "controller": {"backend": "replay"}, "worker": {"model": "tiny"}})
    assert cfg.sandbox == SandboxLimits()  # cell timeout and memory: the sandbox's own defaults
    assert cfg.sandbox.cell_timeout_s == 120.0 and cfg.sandbox.memory_mb == 4096
    assert cfg.worker.max_tokens == 256 and cfg.worker.dtype == DEFAULT_DTYPE == "auto"


def test_configs_mirrors_no_room_field():
    """configs' own types (the eval section, the profile) hold no field a room's settings type owns."""
    owned = {f for t in ROOM_TYPES for f in defaults_of(t)} | {"model", "backend"}
    sections = set(RigConfig.model_fields)
    for t in (EvalSettings, ClusterConfig, RigConfig):
        mirrored = set(t.model_fields) - sections & owned if t is RigConfig else set(t.model_fields) & owned
        assert not mirrored, f"{t.__name__} mirrors {sorted(mirrored)}"
    for name, f in RigConfig.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and (dataclasses.is_dataclass(ann) or issubclass(ann, BaseModel)):
            assert ann in ROOM_TYPES + (EvalSettings, ClusterConfig), f"section {name} is {ann.__name__}, not a room's type"


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_old_keys_load_under_their_new_name(tmp_path, old, new):
    sec, key = old.split(".")
    data = {"name": "t", "controller": {"backend": "replay"}, "worker": {"model": "tiny"}}
    data.setdefault(sec, {})[key] = 700
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(data))
    cfg = load_config(p)
    node = cfg
    for part in new.split("."):  # a new key may sit deeper (worker.sampling.temperature)
        node = getattr(node, part)
    assert node == 700


def test_old_and_new_key_together_fail_in_one_line(tmp_path):
    p = tmp_path / "both.yaml"
    p.write_text("name: t\ncontroller: {backend: replay}\nworker: {model: tiny}\nrlm: {cell_timeout_s: 5}\n"
                 "sandbox: {cell_timeout_s: 6}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "\n" not in str(e.value) and "rlm.cell_timeout_s was renamed to sandbox.cell_timeout_s" in str(e.value)


def test_sandbox_section_is_the_sandbox_limits(tmp_path):
    cfg = load_config("cpu-tiny", ["sandbox.max_tasks=64", "sandbox.cell_timeout_s=9"])
    assert isinstance(cfg.sandbox, SandboxLimits) and cfg.sandbox.max_tasks == 64 and cfg.sandbox.cell_timeout_s == 9
    with pytest.raises(ConfigError, match="sandbox.max_taks: unknown key"):
        load_config("cpu-tiny", ["sandbox.max_taks=64"])
