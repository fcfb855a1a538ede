"""The tiny random Qwen2: deterministic, loadable, and tokenizes everything the rig feeds it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rlm_rig.worker.tiny import CHATML_TEMPLATE, SPECIAL_TOKENS, build_tiny_model, ensure_tiny_model, tiny_corpus

SAMPLES = [
    "MATT: Roll for initiative. Travis, that's a natural 20!",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "Ünïcödé — 日本語のテキスト, emoji 🎲🐉, tabs\tand\r\nCRLF",
    "12345678901234567890 0.5 -3e-7 0xff",
    "   leading spaces and trailing   ",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def _digest(folder: Path, name: str) -> str:
    return hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path, tiny_model_path: Path) -> None:
    again = build_tiny_model(tmp_path / "s0", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        assert _digest(again, name) == _digest(tiny_model_path, name), name
    other = build_tiny_model(tmp_path / "s1", seed=1)
    assert _digest(other, "model.safetensors") != _digest(again, "model.safetensors")
    assert _digest(other, "tokenizer.json") == _digest(again, "tokenizer.json")  # tokenizer is seed-free


def test_shape_checks_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim=16"):
        build_tiny_model(tmp_path / "x", hidden_size=64, num_heads=4)
    with pytest.raises(ValueError, match="num_kv_heads"):
        build_tiny_model(tmp_path / "y", num_heads=4, num_kv_heads=3)


def test_config_is_servable_by_vllm_cpu(tiny_model_path: Path) -> None:
    cfg = json.loads((tiny_model_path / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 32
    assert cfg["max_position_embeddings"] >= 8192
    gen = json.loads((tiny_model_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0]  # <|im_end|>, <|endoftext|>


def test_tokenizer_round_trips_and_matches_raw_tokenizers(tiny_model_path: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    raw = Tokenizer.from_file(str(tiny_model_path / "tokenizer.json"))
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for text in SAMPLES + tiny_corpus(50):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text).ids, text  # transformers' Qwen2 pipeline == the trained one
        assert tok.decode(ids) == text
    # Qwen2 splits numbers into single digits; the tiny tokenizer must too
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    assert 2000 <= len(tok) <= 4096


def test_chat_template_is_chatml(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count the rolls."}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCount the rolls.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(msgs, tokenize=False) == text[: -len("<|im_start|>assistant\n")]
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "user\nab<|im_end|>" in tok.apply_chat_template(parts, tokenize=False)
    assert tok.chat_template == CHATML_TEMPLATE


def test_model_loads_and_generates_with_transformers(tiny_model_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    assert model.config.vocab_size == len(tok)  # every id the model can emit decodes
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, return_dict=True)
    x = torch.tensor([ids["input_ids"]])
    out = model.generate(x, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > x.shape[1]
    assert model.generate(x, max_new_tokens=12, do_sample=False).tolist() == out.tolist()  # greedy is stable


def test_ensure_builds_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_RIG_CACHE", str(tmp_path / "cache"))
    first = ensure_tiny_model(seed=3)
    assert first == tmp_path / "cache" / "models" / "tiny-qwen2-s3"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(seed=3) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in first.parent.iterdir()] == ["tiny-qwen2-s3"]  # no temp dirs left behind
    # a broken cache entry (no completion marker) is rebuilt, not trusted
    (first / "rlm_rig_tiny.json").unlink()
    assert ensure_tiny_model(seed=3) == first and (first / "rlm_rig_tiny.json").is_file()
    assert _digest(first, "model.safetensors") == json.loads((first / "rlm_rig_tiny.json").read_text())["weights_sha256"]
