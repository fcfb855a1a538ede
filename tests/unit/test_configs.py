"""Profiles validate; bad configs fail at once naming the key and the file."""
from pathlib import Path

import pytest

from rlm_rig.configs.load import ConfigError, load_config, resolve_profile

PROFILES = ["a4500x2", "a4500x2-hf", "single-gpu", "cpu-tiny"]


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_validate(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.chunk_budget() > 0


def test_a4500_profile_facts():
    cfg = load_config("a4500x2")
    c = cfg.controller
    # the controller is a vLLM server on GPU 0, 4-bit bitsandbytes, a 32K window, prefix caching,
    # and as many server slots as examples run at once
    assert c.backend == "openai" and c.model == "Qwen/Qwen2.5-Coder-14B-Instruct" and c.server is not None
    assert c.server.device == "cuda" and c.server.cuda_visible_devices == "0" and c.server.quantization == "bitsandbytes"
    assert c.server.max_model_len >= 32768 and c.server.enable_prefix_caching is True
    assert c.server.max_num_seqs == cfg.eval.max_samples == 4
    assert c.server.port != cfg.worker.server.port
    assert cfg.worker.model == "Qwen/Qwen2.5-7B-Instruct" and cfg.worker.dtype == "float16"
    assert cfg.worker.server.cuda_visible_devices == "1" and cfg.worker.backend == "vllm"
    hf = load_config("a4500x2-hf")
    assert hf.controller.backend == "transformers" and hf.controller.quantization == "nf4"
    assert hf.controller.device == "cuda:0" and hf.worker == cfg.worker


def test_served_controller_command_has_the_verified_flags():
    """The exact vLLM command line the a4500x2 controller starts with (vLLM 0.32.0 + vllm-bnb-plugin:
    --quantization bitsandbytes alone; the plugin sets the load format)."""
    from rlm_rig.worker.server import ServerSpec, VLLMServer

    s = load_config("a4500x2").controller.server
    spec = ServerSpec(model="Qwen/Qwen2.5-Coder-14B-Instruct", served_name="controller", port=s.port, device=s.device,
                      cuda_visible_devices=s.cuda_visible_devices, max_model_len=s.max_model_len,
                      gpu_memory_utilization=s.gpu_memory_utilization, quantization=s.quantization,
                      max_num_seqs=s.max_num_seqs, enable_prefix_caching=s.enable_prefix_caching)
    srv = VLLMServer(spec, log_dir="/nonexistent", name="controller")
    cmd = srv.command()
    flag = lambda f: cmd[cmd.index(f) + 1]  # noqa: E731
    assert flag("--quantization") == "bitsandbytes" and "--load-format" not in cmd
    assert flag("--max-model-len") == "32768" and flag("--max-num-seqs") == "4" and "--enable-prefix-caching" in cmd
    assert srv.environment()["CUDA_VISIBLE_DEVICES"] == "0"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


BASE = """
name: t
controller: {backend: replay, replay_file: %s}
worker: {model: tiny}
"""


def test_unknown_key_names_key_and_file(tmp_path):
    replay = resolve_profile("cpu-tiny").parent / "replays" / "chunk-count.yaml"
    p = _write(tmp_path, BASE % replay + "rlm: {max_iteratons: 3}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "rlm.max_iteratons" in str(e.value) and "unknown key" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_names_key(tmp_path):
    replay = resolve_profile("cpu-tiny").parent / "replays" / "chunk-count.yaml"
    p = _write(tmp_path, BASE % replay + "rlm: {max_iterations: lots}\n")
    with pytest.raises(ConfigError, match=r"rlm\.max_iterations.*lots"):
        load_config(p)


def test_missing_section(tmp_path):
    p = _write(tmp_path, "name: t\ncontroller: {backend: replay}\n")
    with pytest.raises(ConfigError, match=r"worker: missing required key"):
        load_config(p)


def test_missing_model_path(tmp_path):
    p = _write(tmp_path, "name: t\ncontroller: {backend: replay}\nworker: {model: ./no/such/model}\n")
    with pytest.raises(ConfigError, match=r"worker\.model.*does not exist"):
        load_config(p)


def test_model_dir_without_config_json(tmp_path):
    (tmp_path / "m").mkdir()
    p = _write(tmp_path, f"name: t\ncontroller: {{backend: replay}}\nworker: {{model: {tmp_path / 'm'}}}\n")
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(p)


def test_hub_id_accepted_without_download():
    cfg = load_config("cpu-tiny", ["worker.model=Qwen/Qwen2.5-7B-Instruct"])
    assert cfg.worker.model == "Qwen/Qwen2.5-7B-Instruct"


def test_overrides_parse_yaml_values():
    cfg = load_config("cpu-tiny", ["rlm.max_iterations=3", "sandbox.network=false", "worker.server.port=1234"])
    assert cfg.rlm.max_iterations == 3 and cfg.worker.server.port == 1234


def test_bad_override_forms():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config("cpu-tiny", ["rlm.max_iterations"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config("cpu-tiny", ["name.x=1"])
    with pytest.raises(ConfigError, match=r"rlm\.max_iterations"):
        load_config("cpu-tiny", ["rlm.max_iterations=-1"])


def test_unknown_profile_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-profile")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_controller_backend_requirements(tmp_path):
    p = _write(tmp_path, "name: t\ncontroller: {backend: transformers}\nworker: {model: tiny}\n")
    with pytest.raises(ConfigError, match="controller.model is required"):
        load_config(p)
    p = _write(tmp_path, "name: t\ncontroller: {backend: replay, replay_file: /nope.yaml}\nworker: {model: tiny}\n")
    with pytest.raises(ConfigError, match="replay_file"):
        load_config(p)


@pytest.mark.parametrize("name", PROFILES + ["cpu-small"])
def test_profiles_interp_sections_validate(name):
    from rlm_rig.interp.profile import load_interp_config

    cfg = load_config(name)
    icfg, spec, _ = load_interp_config(name)
    assert spec.model == cfg.worker.model and icfg == cfg.interp


def test_cli_rejects_a_bad_interp_key():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", "config", "-c", "cpu-tiny", "--set", "interp.batchsize=2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "batchsize" in r.stderr and "interp" in r.stderr
