"""Memory and decode speed of the rig's real-size architectures with random weights (no hub needed).

Builds the architecture from its published shape, saves random weights, and loads them back the way
the rig loads the real checkpoint (the controller in 4-bit NF4 through bitsandbytes, the worker in
FP16 through transformers), then measures load time, GPU memory and greedy decode tokens/s.

    python bench/bench_gpu.py --arch qwen2.5-coder-14b --quant nf4 --device cuda:0
    python bench/bench_gpu.py --arch qwen2.5-7b --quant none --dtype float16 --device cuda:0
    python bench/bench_gpu.py --arch tiny --quant nf4 --device cpu      # the same path on CPU, in seconds

Prints one JSON line; `--out FILE` appends it to a JSONL file.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

# Shapes from the models' published config.json files (Qwen2 architecture).
ARCHS: dict[str, dict[str, Any]] = {
    "qwen2.5-coder-14b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                              num_key_value_heads=8, vocab_size=152064, max_position_embeddings=32768,
                              rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=3000, max_position_embeddings=4096, tie_word_embeddings=False),
}


def build_random(arch: str, folder: Path, dtype: str, seed: int = 0) -> float:
    """Random weights saved as a normal checkpoint folder; returns seconds taken."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    cfg = Qwen2Config(**ARCHS[arch])
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.save_pretrained(folder)
    del model
    return time.perf_counter() - t0


def measure(folder: Path, *, quant: str, dtype: str, device: str, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    kw: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if quant != "none":
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant,
                                                       bnb_4bit_compute_dtype=getattr(torch, dtype),
                                                       bnb_4bit_use_double_quant=True)
        kw["device_map"] = {"": device}
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    if quant == "none":
        model.to(device)
    model.eval()
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab - 10, (1, prompt_tokens), generator=g).to(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        sync()
        t0 = time.perf_counter()
        model(ids)
        sync()
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        sync()
        gen_s = time.perf_counter() - t0
    n_new = int(out.shape[1] - ids.shape[1])
    res = {
        "load_s": round(load_s, 2),
        "footprint_gib": round(model.get_memory_footprint() / 2**30, 3),
        "prefill_tok_per_s": round(prompt_tokens / prefill_s, 1),
        "decode_tok_per_s": round(n_new / max(1e-9, gen_s - prefill_s), 2),
        "new_tokens": n_new,
        "n_linear4bit": 0,
    }
    if quant != "none":
        import bitsandbytes as bnb

        res["n_linear4bit"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    if cuda:
        res["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        res["gpu"] = torch.cuda.get_device_name(device)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--quant", choices=["none", "nf4", "fp4"], default="nf4")
    ap.add_argument("--dtype", default="bfloat16", help="weights (quant none) or compute dtype (nf4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: a temp dir)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        folder = Path(tmp) / a.arch
        build_s = build_random(a.arch, folder, "bfloat16" if a.quant != "none" else a.dtype)
        res = {"arch": a.arch, "quant": a.quant, "dtype": a.dtype, "device": a.device, "build_s": round(build_s, 1),
               **measure(folder, quant=a.quant, dtype=a.dtype, device=a.device, prompt_tokens=a.prompt_tokens,
                         new_tokens=a.new_tokens)}
    line = json.dumps(res)
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return res


if __name__ == "__main__":
    main()
