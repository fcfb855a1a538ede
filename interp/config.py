"""interp's settings type: a profile's ``interp:`` section *is* an `InterpConfig` (configs composes it).

Imports nothing of the rig, so configs can compose it; reading a profile goes through the one loader
(`configs.load_config`, wrapped for interp in `interp.profile`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Component = Literal["resid", "attn", "mlp"]
Direction = Literal["denoise", "noise"]
CorruptionName = Literal["remove", "add", "alter", "line_remove", "line_add"]

CAPTURE_POSITIONS = ("last", "answer", "number")
PATCH_POSITIONS = ("chunk_before", "edit", "edit_next", "chunk_after", "post_chunk", "last", "all")


class InterpConfigError(ValueError):
    """A profile or an ``interp:`` section that cannot be used, with the reason and the file."""


class InterpConfig(BaseModel):
    """The ``interp:`` section of a profile. Every field has a default, so the section is optional."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- model and device ---------------------------------------------------------------------
    model: str | None = Field(None, description="override worker.model (hub id, local path or 'tiny')")
    dtype: str | None = Field(None, description="override worker.dtype; default: the worker's own dtype")
    device: str = Field("cpu", description="torch device for the replay, e.g. cuda:0 (after CUDA_VISIBLE_DEVICES=1)")
    layers: list[int] | None = Field(None, description="layers to capture/patch; None = all; negatives count from the end")
    components: list[Component] = Field(default_factory=lambda: ["resid"])
    # -- capture ---------------------------------------------------------------------------------
    capture_positions: list[str] = Field(default_factory=lambda: ["last", "number"])
    max_answer_tokens: int = Field(16, ge=1, description="answer tokens captured per sub_call for position 'answer'")
    capture_batch_size: int = Field(4, ge=1)
    max_batch_tokens: int = Field(16384, ge=64, description="padded tokens per capture forward (memory bound)")
    max_prompt_tokens: int | None = Field(None, ge=8, description="skip sub_calls whose prompt is longer")
    shard_mb: float = Field(256.0, gt=0, description="activation shard size before it is flushed to disk")
    save_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    replay: bool = Field(True, description="greedy-decode every captured sub_call and compare with the record")
    max_new_tokens: int = Field(256, ge=1, description="cap on replay generation length")
    # -- patching ----------------------------------------------------------------------------------
    n_pairs: int = Field(16, ge=1)
    corruptions: list[CorruptionName] = Field(default_factory=lambda: ["remove", "add", "alter"])
    patch_positions: list[str] = Field(
        default_factory=lambda: ["chunk_before", "edit", "edit_next", "chunk_after", "post_chunk", "last"]
    )
    attn_mlp_positions: list[str] = Field(default_factory=lambda: ["all", "last"])
    directions: list[Direction] = Field(default_factory=lambda: ["denoise", "noise"])
    batch_size: int = Field(8, ge=1, description="patched copies per forward")
    max_pair_tokens: int | None = Field(None, ge=8, description="skip pairs whose prompt is longer")
    offload_reference: bool = Field(False, description="keep patching source activations in CPU memory")
    # -- faithfulness (teacher-forced replay of the recorded tokens) ---------------------------------
    faithful_max_dlogprob: float = Field(
        0.5, gt=0, description="a sub_call is faithful when every recorded token's replayed logprob is within this "
        "many nats of vLLM's (docs/INTERP.md: measured 5e-6 in float32, <= 0.21 in bfloat16)")
    faithful_require_argmax: bool = Field(False, description="also require the replay's argmax to be every recorded "
                                          "token (bf16 near-ties flip it; see docs/INTERP.md)")
    faithful_only: bool = Field(False, description="drop unfaithful sub_calls from every analysis (else: flag them)")
    # -- attribution patching, heads, logit lens -------------------------------------------------------
    attr_components: list[Component] = Field(default_factory=lambda: ["resid", "attn", "mlp"])
    attr_top_k: int = Field(10, ge=1, description="sites per layer checked by exact patching after attribution")
    attr_validate_max_tokens: int = Field(
        0, ge=0, description="also run exact patching at EVERY token x layer for pairs up to this length "
        "(the attribution-vs-exact validation; 0 = off)")
    attr_validate_layers: list[int] | None = Field(
        None, description="layers of that every-token validation (None = all; a 135M model's 30 layers x 3 "
        "components x 170 tokens is ~15K forward passes, so a CPU study picks a few)")
    controller_max_tokens: int | None = Field(
        16384, ge=64, description="interp controller: conversations longer than this are skipped (too_long); "
        "`plan` sizes the controller replay by it (a4500x2: 16K tokens fit GPU 0 with the NF4 weights)")
    head_positions: list[str] = Field(default_factory=lambda: ["last", "edit"])
    # -- statistics and probes -------------------------------------------------------------------
    min_denominator: float = Field(
        0.1, ge=0, description="pairs whose |LD_clean - LD_corrupt| is below this (logits) are left out of the "
        "normalized metric and reported; see docs/INTERP.md")
    seed: int = 0
    ci: Literal["bootstrap", "t"] = "bootstrap"
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)
    n_boot: int = Field(2000, ge=100)
    probe_position: str = Field("last", description="captured position the probes read")
    probe_component: Component = "resid"
    probe_test_size: float = Field(0.3, gt=0.0, lt=1.0)
    probe_c: float = Field(1.0, gt=0.0, description="inverse L2 strength of the logistic probe")
    probe_splits: int = Field(1, ge=1, description="random by-chunk train/test splits averaged per layer")
    # -- GPU time-sharing ------------------------------------------------------------------------
    stop_server: bool = Field(False, description="stop the rig's vLLM worker before loading the replay model")
    server_pid_file: str | None = Field(None, description="pid file of the rig-managed server (JSON or bare pid)")

    @field_validator("capture_positions")
    @classmethod
    def _cap_pos(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p not in CAPTURE_POSITIONS]
        if bad:
            raise ValueError(f"unknown capture position(s) {bad}; choose from {list(CAPTURE_POSITIONS)}")
        return v

    @field_validator("patch_positions", "attn_mlp_positions")
    @classmethod
    def _patch_pos(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p not in PATCH_POSITIONS and not p.startswith("last-")]
        if bad:
            raise ValueError(f"unknown patch position(s) {bad}; choose from {list(PATCH_POSITIONS)} or 'last-K'")
        return v
