"""The controller room's settings: which model writes the code (`ControllerSettings`) and the RLM
loop's bounds (`RLMSettings`). A profile's ``controller:`` and ``rlm:`` sections *are* these types
(configs composes them); the loop reads them whole, nothing copies them field by field.

The cell's time limit is the sandbox's (``sandbox.cell_timeout_s``, `repl.SandboxLimits`), not the
loop's: the sandbox enforces it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlm_rig.worker.models import check_model_ref
from rlm_rig.worker.settings import Sampling, ServerSettings


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a profile fails at load time, naming the key and the file."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ControllerSettings(Strict):
    """Which model writes the code. Without a ``controller:`` section a profile has a replay controller with
    no file (enough for interp and plan; `eval` / `ask` then want ``--controller-replay``)."""

    backend: Literal["transformers", "openai", "replay"] = "replay"
    model: str | None = None
    quantization: Literal["none", "nf4", "fp4"] = "none"
    device: str = "cpu"
    dtype: str = "bfloat16"  # the controller's own weights (the worker's dtype is worker.dtype)
    max_new_tokens: int = Field(1024, ge=1)
    sampling: Sampling = Field(default_factory=Sampling)  # was controller.temperature (configs.load.RENAMED)
    sampling_by_depth: dict[int, Sampling] = Field(
        default_factory=dict, description="the controller of a run at depth d samples with sampling_by_depth[d], "
        "else with `sampling`; d counts as worker.sampling_by_depth does: 0 is the root run, 1 a run that the root "
        "started (rlm_query, or a rig-dialect sub_call at max_depth >= 2), so keys are >= 1")
    replay_file: str | None = None
    served_name: str | None = None
    server: ServerSettings | None = None
    system_prompt_file: str | None = Field(
        None, description="a str.format template for the system prompt: a path, or a name in configs/prompts/ "
        "(`rig`, `official`); its {placeholders} are listed in controller/prompts.py PLACEHOLDERS")
    user_prologue: str | None = Field(
        None, description="text put before the question in the controller's first user message")
    context_tokens: int | None = Field(
        None, ge=256, description="the controller's window for the context guard; default: the server's max_model_len, "
        "else the model's max_position_embeddings (transformers), else unguarded (replay)"
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return None if v is None else check_model_ref(v)

    @field_validator("sampling_by_depth")
    @classmethod
    def _depths(cls, v: dict[int, Sampling]) -> dict[int, Sampling]:
        """Depth 0 is the root, whose one setting is ``sampling``: a key below 1 is a mistake, not a second default."""
        bad = sorted(d for d in v if d < 1)
        if bad:
            raise ValueError(f"depth {bad[0]} is not a nested run (1: a run the root started; the root samples "
                             "with controller.sampling)")
        return v

    def sampling_at(self, depth: int) -> Sampling:
        """What the controller of a run at ``depth`` samples with (0: the root)."""
        return self.sampling_by_depth.get(depth, self.sampling)

    @field_validator("system_prompt_file")
    @classmethod
    def _prompt_file(cls, v: str | None) -> str | None:
        """Missing files and unknown placeholders fail at load time, not at the first turn."""
        if v is None:
            return None
        from rlm_rig.controller.prompts import check_template, find_prompt_file

        path = find_prompt_file(v)
        check_template(path.read_text(encoding="utf-8"), path.name)
        return v

    @model_validator(mode="after")
    def _needs(self) -> "ControllerSettings":
        if self.backend in ("transformers", "openai") and not self.model:
            raise ValueError(f"controller.model is required for backend {self.backend!r}")
        if self.backend == "openai" and self.server is None:
            raise ValueError("controller.server is required for backend 'openai' (give url: or start flags)")
        return self


class RLMSettings(Strict):
    dialect: Literal["rig", "official"] = Field(
        "rig", description="the REPL's names: rig (prompt, sub_call, FINAL/FINAL_VAR, also the answer dict) or "
        "official (the rlms package's context, llm_query, rlm_query, SHOW_VARS, answer dict)")
    max_iterations: int = Field(12, ge=1)
    max_depth: int = Field(1, ge=1, description="1: sub_calls are plain worker calls; 2+: nested RLMs (rig: every "
                           "sub_call of a level below the limit; official: each rlm_query, chosen by the model)")
    tools: dict[str, str] = Field(
        default_factory=dict, description="custom tools, name -> 'module:function'; they run in the parent, "
        "called from the REPL over the kernel's pipe with JSON arguments and results")
    tool_timeout_s: float = Field(30.0, gt=0, description="wall time one custom tool call may take")
    max_tool_calls: int = Field(200, ge=0, description="custom tool calls per run, nested runs counted apart")
    max_sub_calls: int = Field(200, ge=0)
    feedback_max_chars: int = Field(
        4000, ge=100, description="chars of a cell's output shown to the controller (the sandbox captures up to "
        "sandbox.max_output_chars; the rest is cut here)")
    max_controller_tokens: int = Field(200_000, ge=1)
    chunk_budget_tokens: int | None = Field(
        None, ge=16, description="max worker tokens per chunk; default derived from worker max_model_len"
    )
    instruction_reserve_tokens: int = Field(256, ge=0)
    max_example_wall_s: float | None = Field(
        None, gt=0, description="per-example wall-clock cap; the run then ends with its best answer so far"
    )
    session_compact_at: float = Field(
        0.75, gt=0.0, le=1.0, description="a session compacts its earlier questions (the controller summarises "
        "them) when they would fill more than this fraction of the controller's window")
    low_confidence: Literal["off", "tell", "resplit"] = Field(
        "off", description="act on the worker's reply confidence (controller/confidence.py): tell the controller, "
        "or re-ask a low-confidence chunk in halves")
    low_confidence_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="a reply whose probability is below this is low-confidence")
    @field_validator("low_confidence", mode="before")
    @classmethod
    def _off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false

    max_consecutive_cell_errors: int | None = Field(
        None, ge=1, description="stop after this many cells in a row failed (error, timeout, restart)"
    )

    def import_tools(self) -> dict:
        """name -> the imported callable; ToolImportError (a ValueError, one line) names the first that fails."""
        from rlm_rig.controller.tools import import_tools

        return import_tools(self.tools)

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: dict[str, str]) -> dict[str, str]:
        from rlm_rig.controller.tools import check_tool_name

        for name, ref in v.items():
            check_tool_name(name)
            if ":" not in ref:
                raise ValueError(f"tool {name!r}: {ref!r} must look like 'module:function'")
        return v
