"""`plan` covers `interp controller` on the controller's card: the controller's weights as the rig loaded them
(NF4) plus the peak of attribution / exact patching over a conversation of `interp.controller_max_tokens`."""
from __future__ import annotations

from rlm_rig.configs.load import load_config
from rlm_rig.configs.memplan import GiB, controller_replay_bytes, make_plan
from rlm_rig.configs.archs import arch_for
from rlm_rig.experiments.cli._common import interp_section


def _phase(name: str, *overrides: str):
    cfg = load_config(name, list(overrides))
    plan = make_plan(cfg, interp_cfg=interp_section(cfg))
    g0 = plan.gpu("GPU 0")
    return plan, next(p for p in g0.phases if p.name == "controller replay")


def test_both_a4500x2_profiles_fit_the_controller_replay_on_gpu_0_in_nf4():
    for name in ("a4500x2", "a4500x2-hf"):
        plan, p = _phase(name)
        labels = [x.label for x in p.lines]
        assert "4-bit NF4" in labels[0] and "16384-token conversation" in labels[2], labels
        assert 9.0 < p.lines[0].gib < 9.5 and p.total < plan.gpu("GPU 0").capacity_gib and not p.problems


def test_a_longer_conversation_is_refused_with_the_knob():
    _, p = _phase("a4500x2", "interp.controller_max_tokens=32768")
    assert p.problems and "controller replay phase needs" in p.problems[0] and "offload_reference" in p.problems[0]


def test_the_peak_grows_with_the_conversation_and_offload_removes_the_stored_inputs():
    from dataclasses import replace

    a = arch_for("Qwen/Qwen2.5-Coder-14B-Instruct")
    small = controller_replay_bytes(a, 2, tokens=4096, batch_size=2, offload=True)
    big = controller_replay_bytes(a, 2, tokens=16384, batch_size=2, offload=True)
    kept = controller_replay_bytes(a, 2, tokens=16384, batch_size=2, offload=False)
    assert small < big < kept
    a4 = replace(a, layers=4)  # few layers: attribution is the peak, and offload takes exactly its stored inputs
    off = controller_replay_bytes(a4, 2, tokens=16384, batch_size=2, offload=True)
    on = controller_replay_bytes(a4, 2, tokens=16384, batch_size=2, offload=False)
    assert abs((on - off) - 2 * a4.layers * 16384 * a4.hidden * 2) < 1e-6 * on


def test_the_top_k_check_on_the_prefix_kv_cache_is_counted_and_is_never_offloaded():
    """`prefix_exact.exact_sites_prefix` keeps the prefix's KV cache and runs each batch of B patched copies on it,
    which DynamicCache concatenates into B full-length copies: (1 + B) x the conversation's KV. At a4500x2's shape
    (48 layers, 16K tokens, B = 2, offloaded layer inputs) that is 9.0 GiB, above attribution's 5.7."""
    a = arch_for("Qwen/Qwen2.5-Coder-14B-Instruct")
    kv = 16384 * a.kv_bytes_per_token(2)
    b2 = controller_replay_bytes(a, 2, tokens=16384, batch_size=2, offload=True)
    b4 = controller_replay_bytes(a, 2, tokens=16384, batch_size=4, offload=True)
    assert b2 >= 3 * kv and abs((b4 - b2) - 2 * kv) < 0.01 * kv


def test_cpu_profiles_have_no_controller_replay_phase():
    cfg = load_config("cpu-small", [])
    plan = make_plan(cfg, interp_cfg=interp_section(cfg))
    assert not any(p.name == "controller replay" for g in plan.gpus for p in g.phases)


def test_the_replay_loads_the_controller_as_the_rig_did():
    import pytest

    from rlm_rig.interp.config import InterpConfigError
    from rlm_rig.interp.controller_job import controller_target
    from rlm_rig.interp.profile import load_interp_config

    for name in ("a4500x2", "a4500x2-hf"):
        cfg, _, profile = load_interp_config(name)
        spec = controller_target(profile, cfg)
        assert (spec.model, spec.quantization, spec.device) == ("Qwen/Qwen2.5-Coder-14B-Instruct", "nf4", "cuda:0")
    cfg, _, profile = load_interp_config("cpu-small")
    with pytest.raises(InterpConfigError, match="give --model"):
        controller_target(profile, cfg)
    assert controller_target(profile, cfg, model="smollm2").dtype == "float32"  # the profile's interp.dtype
