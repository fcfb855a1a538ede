"""`rlm-rig plan` (memory budget + verdict) and `rlm-rig doctor` (machine readiness), on this CPU box."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.configs.archs import arch_for
from rlm_rig.experiments.cli._common import interp_section
from rlm_rig.configs.memplan import GiB, make_plan, render

REPO = Path(__file__).resolve().parents[2]
RIG = [sys.executable, "-m", "rlm_rig.experiments.cli"]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*RIG, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def plan_of(name: str, *overrides: str, gpu_gib: float | None = None):
    cfg = load_config(name, list(overrides))
    return make_plan(cfg, gpu_gib=gpu_gib, interp_cfg=interp_section(cfg))


def test_architecture_facts_ship_and_a_local_config_wins(tiny_model_path):
    a = arch_for("Qwen/Qwen2.5-Coder-14B-Instruct")
    assert (a.layers, a.hidden, a.heads, a.kv_heads, a.intermediate, a.vocab) == (48, 5120, 40, 8, 13824, 152064)
    assert 14.5e9 < a.params() < 15.0e9 and a.kv_bytes_per_token(2) == 192 * 1024
    w = arch_for("Qwen/Qwen2.5-7B-Instruct")
    assert 7.5e9 < w.params() < 7.7e9 and w.kv_bytes_per_token(2) == 56 * 1024
    local = arch_for(str(tiny_model_path))
    assert local.source.endswith("config.json") and local.hidden == json.loads((tiny_model_path / "config.json").read_text())["hidden_size"]


def test_a4500x2_plan_fits_with_the_published_arithmetic():
    p = plan_of("a4500x2")
    assert [g.gpu for g in p.gpus] == ["GPU 0", "GPU 1"] and p.fits
    g0 = {x.label.split(",")[0]: x.gib for x in p.gpu("GPU 0").phases[0].lines}
    assert 9.0 < g0["controller: weights"] < 10.0  # 14.8B: NF4 layers + bf16 embeddings and head
    g1 = p.gpu("GPU 1")
    assert [ph.name for ph in g1.phases] == ["eval", "interp"]
    assert g1.phases[0].lines[0].gib == pytest.approx(7.6156e9 * 2 / GiB, rel=0.01)  # the FP16 worker
    interp = g1.phases[1].lines[-1]
    assert "8272 tokens" in interp.label and "offloaded" in interp.label
    assert "verdict: fits" in render(p)[-1]


def test_plan_names_the_knob_when_short():
    # a 128K window for the controller cannot fit its KV pool on a 20 GB card
    p = plan_of("a4500x2", "controller.server.max_model_len=131072")
    assert not p.fits and not p.gpu("GPU 0").fits and p.gpu("GPU 1").fits
    short = " ".join(m for ph in p.gpu("GPU 0").phases for m in ph.problems)
    assert "short by" in short and "lower max_model_len to" in short
    # interp without offloading on a 16 GiB card: over the card, the interp knobs named
    p = plan_of("a4500x2", "interp.offload_reference=false", "interp.batch_size=8", gpu_gib=16)
    short = " ".join(m for ph in p.gpu("GPU 1").phases for m in ph.problems)
    assert "interp.batch_size" in short and "offload_reference" in short


def test_plan_cli_verdicts_and_errors():
    ok = cli("plan", "-c", "a4500x2")
    assert ok.returncode == 0 and "GPU 0" in ok.stdout and "verdict: fits" in ok.stdout, ok.stderr
    short = cli("plan", "-c", "a4500x2", "--set", "controller.server.max_model_len=131072")
    assert short.returncode == 1 and "short by" in short.stdout
    bad = cli("plan", "-c", "a4500x2", "--set", "worker.model=someorg/unknown-model")
    assert bad.returncode == 2 and "no architecture facts for 'someorg/unknown-model'" in bad.stderr
    cpu = cli("plan", "-c", "cpu-small")
    assert cpu.returncode == 0 and "no GPU used" in cpu.stdout


@pytest.mark.slow
def test_interp_plan_within_15_percent_of_the_measured_peak():
    """Random weights at Qwen2.5-7B's real width and vocabulary, 1 layer, a patching sweep (reference
    run + one patched batch of 2) at 1024 tokens through interp's own code; the peak is measured in a
    fresh process (bench/bench_plan_interp.py explains how)."""
    spec = importlib.util.spec_from_file_location("bench_plan_interp", REPO / "bench" / "bench_plan_interp.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shape = bench.SHAPES[0]
    measured = bench.measure(shape)["peak_delta_gib"]
    predicted = bench.predicted(shape)
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


@pytest.mark.slow
def test_doctor_runs_clean_for_cpu_small():
    r = cli("doctor", "-c", "cpu-small")
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    checks = [x for x in lines[1:-1]]
    names = " ".join(checks)
    for what in ("GPUs", "torch", "vllm", "bitsandbytes", "nnsight", "bubblewrap", "port", "model (worker)", "disk"):
        assert what in names
    assert all(x.startswith(("ok ", "warn")) for x in checks), checks
    assert lines[-1].endswith("ready")


@pytest.mark.slow
def test_doctor_explains_why_a4500x2_cannot_run_here():
    r = cli("doctor", "-c", "a4500x2")
    assert r.returncode == 1
    out = r.stdout
    assert "FAIL GPUs: no CUDA GPU visible" in out and "-> fix:" in out
    assert "FAIL torch:" in out and "CPU build" in out and "make install-gpu" in out
    assert "vllm-bnb-plugin" in out
    assert "a4500x2 cannot run on this machine" in out and "-c cpu-small" in out
