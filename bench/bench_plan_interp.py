"""Measured peak memory of interp's capture and patching sweep vs `rlm-rig plan`'s prediction.

Random-weight Qwen2 models with Qwen2.5-7B's real width and vocabulary (hidden 3584, 28 query / 4 KV
heads, intermediate 18944, vocabulary 152,064) but only 1-2 layers, run through interp's own code
(`capture_batch`, `reference_run` + `patched_logits`) at 1K-4K tokens on the CPU.

How the peak is measured, and why this way: each shape runs in a FRESH subprocess with glibc's
``MALLOC_MMAP_THRESHOLD_=65536``, so every tensor of 64 KiB or more is its own mmap and freeing it
returns the pages at once; the process's resident-set high-water mark (``ru_maxrss``) then tracks
the live tensors. The weights are allocated without an init pass (meta device, then ``to_empty``
and an in-place fill), so building them never rises above the weights themselves; the peak of the
run is ``ru_maxrss`` at the end minus the resident size after building. torch's profiler
(``profile_memory``) reports per-operator allocations, not the process's peak, and misses what
oneDNN allocates outside torch's allocator; RSS sees everything the process holds.

    python bench/bench_plan_interp.py                  # the recorded shapes (docs/BENCHMARKS.md)
    python bench/bench_plan_interp.py --one '{"layers": 1, "tokens": 1024, "job": "patch"}'
    python bench/bench_plan_interp.py --gpu cuda:0 --out docs/gpu-bench.jsonl   # on a GPU: the real 28 layers,
        # fp16, an 8K-token chunk, the process capped at 20 GB; the peak is torch.cuda.max_memory_allocated
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

QWEN7B_WIDTH = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                    vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False)
SHAPES = [  # the test runs the first; the bench records them all
    {"layers": 1, "tokens": 1024, "job": "patch", "batch_size": 2},
    {"layers": 1, "tokens": 2048, "job": "patch", "batch_size": 2},
    {"layers": 2, "tokens": 2048, "job": "patch", "batch_size": 2},
    {"layers": 1, "tokens": 4096, "job": "patch", "batch_size": 2},
    {"layers": 2, "tokens": 1024, "job": "capture", "batch_size": 4},
    {"layers": 1, "tokens": 4096, "job": "capture", "batch_size": 1},
]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


GPU_SHAPES = [  # the a4500x2 interp settings on the real Qwen2.5-7B shape (issue 9, part 4)
    {"layers": 28, "tokens": 8272, "job": "capture", "batch_size": 1, "dtype": "float16"},
    {"layers": 28, "tokens": 8272, "job": "patch", "batch_size": 2, "dtype": "float16", "offload": True},
]


def _build(layers: int, dtype: str, device: str = "cpu"):
    """A random Qwen2 at the real width, allocated without an init pass (see the module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(num_hidden_layers=layers, **QWEN7B_WIDTH)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model = model.to_empty(device=device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    model.model.rotary_emb = Qwen2RotaryEmbedding(config=cfg).to(device)  # to_empty left its buffers uninitialised
    return model.eval()


def _id_tokenizer():
    """nnsight wants a tokenizer; the runs feed token ids, so a one-word vocabulary does."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                   pad_token="<pad>")


def _replay_model(hf: Any):
    """interp's ReplayModel around an in-memory model (no tokenizer: patching and capture take token ids)."""
    from rlm_rig.interp._nnsight import nnsight
    from rlm_rig.interp.model import ReplayModel


    m = ReplayModel.__new__(ReplayModel)
    m.name, m.path, m.device, m.tokenizer = "random-qwen2.5-7b-width", "", next(hf.parameters()).device, None
    m.hf, m.dtype, m.pad_id = hf, next(hf.parameters()).dtype, 0
    m.nn = nnsight.TransformersModel(hf, tokenizer=_id_tokenizer())
    return m


def run_one(shape: dict[str, Any]) -> dict[str, Any]:
    """In THIS process (call through `measure`, which starts a fresh one): build, run, report the peak."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    dtype = shape.get("dtype", "bfloat16")
    device = shape.get("device", "cpu")
    cuda = device.startswith("cuda")
    if cuda:  # the A4500's 20 GB, whatever card this runs on
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 20e9 / total), device)
    hf = _build(shape["layers"], dtype, device)
    model = _replay_model(hf)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_bytes()
    T, n = shape["tokens"], shape.get("batch_size", 2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(100, 150000, (T,), generator=g).tolist()
    layers = list(range(shape["layers"]))
    if shape["job"] == "capture":
        from rlm_rig.interp.methods.capture import Prepared, capture_batch

        batch = [Prepared(item=None, prompt_ids=ids, seq=ids, positions=[("last", T - 1, -1)]) for _ in range(n)]
        capture_batch(model, batch, layers, ["resid"])
    else:
        from rlm_rig.interp.methods.patching import PatchSpec, patched_logits, reference_run

        corrupt = list(ids)
        corrupt[T // 2] = corrupt[T // 2] + 1
        pair = SimpleNamespace(clean_ids=ids, corrupt_ids=corrupt,
                               positions={"edit": [T // 2], "last": [T - 1], "all": list(range(T))})
        sites = [("resid", li) for li in layers]
        _, _, acts = reference_run(model, pair, sites, offload=bool(shape.get("offload", False)))
        specs = [PatchSpec("resid", layers[k % len(layers)], ("edit", "last")[k % 2]) for k in range(n)]
        patched_logits(model, corrupt, specs, acts, 0, pair)
    peak = torch.cuda.max_memory_allocated(device) if cuda else _peak_bytes()
    return {**shape, "dtype": dtype, "weights_rss_gib": base / 2**30, "peak_delta_gib": (peak - base) / 2**30}


def measure(shape: dict[str, Any], timeout_s: float = 900) -> dict[str, Any]:
    """`run_one` in a fresh subprocess (the peak is a per-process high-water mark)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(shape)], env=env,
                       capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"measurement of {shape} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def predicted(shape: dict[str, Any]) -> float:
    """`rlm-rig plan`'s interp transient (GiB) for the same shape."""
    from rlm_rig.configs.archs import Arch
    from rlm_rig.configs.memplan import interp_capture_bytes, interp_patch_bytes

    a = Arch(layers=shape["layers"], hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064)
    b = 2 if shape.get("dtype", "bfloat16") in ("bfloat16", "float16") else 4
    if shape["job"] == "capture":
        return interp_capture_bytes(a, b, batch=shape.get("batch_size", 1), tokens=shape["tokens"],
                                    n_sites=shape["layers"]) / 2**30
    return interp_patch_bytes(a, b, batch_size=shape.get("batch_size", 2), tokens=shape["tokens"],
                              n_sites=shape["layers"], offload=bool(shape.get("offload", False))) / 2**30


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", help="a JSON shape: run it in this process and print one JSON line")
    ap.add_argument("--out", default=None, help="append the result lines to this JSONL file")
    ap.add_argument("--gpu", default=None, help="a CUDA device: run the real-size GPU_SHAPES there instead")
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(json.loads(a.one))))
        return []
    rows = []
    for shape in ([{**s, "device": a.gpu} for s in GPU_SHAPES] if a.gpu else SHAPES):
        m = measure(shape)
        p = predicted(shape)
        m.update(predicted_gib=round(p, 3), ratio=round(p / m["peak_delta_gib"], 3),
                 peak_delta_gib=round(m["peak_delta_gib"], 3), weights_rss_gib=round(m["weights_rss_gib"], 3))
        rows.append(m)
        print(json.dumps(m), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(m) + "\n")
    return rows


if __name__ == "__main__":
    main()
