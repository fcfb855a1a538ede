"""bench/bench_gpu.py's load path (random real-shape weights -> NF4 / FP16 load -> decode), run on CPU with the tiny shape.

The real-size runs need a GPU; this keeps the code they run exercised here.
"""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench_gpu", Path(__file__).resolve().parents[2] / "bench" / "bench_gpu.py")
bench_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_gpu)


@pytest.mark.parametrize("quant,dtype", [("nf4", "bfloat16"), ("none", "float32")])
def test_tiny_shape_through_the_gpu_bench_path(quant, dtype, tmp_path):
    res = bench_gpu.main(["--arch", "tiny", "--quant", quant, "--dtype", dtype, "--prompt-tokens", "32",
                          "--new-tokens", "8", "--workdir", str(tmp_path)])
    assert res["new_tokens"] == 8 and res["decode_tok_per_s"] > 0 and res["footprint_gib"] > 0
    assert (res["n_linear4bit"] > 0) == (quant == "nf4")


def test_real_shapes_are_the_published_ones():
    from transformers import Qwen2Config

    c14 = Qwen2Config(**bench_gpu.ARCHS["qwen2.5-coder-14b"])
    c7 = Qwen2Config(**bench_gpu.ARCHS["qwen2.5-7b"])
    assert c14.hidden_size // c14.num_attention_heads == 128 and c7.hidden_size // c7.num_attention_heads == 128
    # parameter counts from the shapes: ~14.8B and ~7.6B
    def params(c):
        h, i, L, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
        kv = c.num_key_value_heads * (h // c.num_attention_heads)
        per_layer = h * h + 2 * h * kv + h * h + 3 * h * i + (h + 2 * kv)  # q,k,v,o, mlp, qkv biases
        return L * per_layer + 2 * v * h
    assert 14.5e9 < params(c14) < 15.0e9 and 7.5e9 < params(c7) < 7.7e9
