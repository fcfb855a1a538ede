"""The RLM loop: controller backends, system prompt, parsing, caps and trajectory records."""
from controller.backends import ControllerLM, Generation, OpenAILM, ReplayExhausted, ReplayLM, TransformersLM, load_replay
from controller.loop import RLM, RunContext, estimate_chars_per_token
from controller.parsing import Final, ParsedTurn, closed_cell_end, parse_turn, truncate_cell
from controller.records import (
    SCHEMA_VERSION,
    CapEvent,
    CellRecord,
    ControllerTurn,
    SampleRow,
    SubCallRecord,
    Trajectory,
    append_jsonl,
    atomic_write_text,
    read_jsonl,
)
from controller.rig import Rig, package_versions, resolve_model
from controller.subcalls import SubCallBudget, SubCallRouter

__all__ = [
    "SCHEMA_VERSION", "CapEvent", "CellRecord", "ControllerLM", "ControllerTurn", "Final", "Generation", "OpenAILM",
    "ParsedTurn", "RLM", "ReplayExhausted", "ReplayLM", "Rig", "RunContext", "SampleRow", "SubCallBudget",
    "SubCallRecord", "SubCallRouter", "Trajectory", "TransformersLM", "append_jsonl", "atomic_write_text",
    "closed_cell_end", "estimate_chars_per_token", "load_replay", "package_versions", "parse_turn", "read_jsonl",
    "resolve_model", "truncate_cell",
]
