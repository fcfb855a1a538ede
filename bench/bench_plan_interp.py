"""Measured peak memory of interp's capture, patching sweep and `interp controller` vs `rlm-rig plan`'s prediction.

Random-weight Qwen2 models with Qwen2.5-7B's real width and vocabulary (hidden 3584, 28 query / 4 KV
heads, intermediate 18944, vocabulary 152,064) but only 1-2 layers, run through interp's own code
(`capture_batch`, `reference_run` + `patched_logits`) at 1K-4K tokens on the CPU; and, for `interp controller`,
Qwen2.5-Coder-14B's width (hidden 5120, 40 / 8 heads, intermediate 13824) at 1-2 layers over a synthetic
controller pair, through the job's own per-pair step (`controller_job._attribute`: attribution, its exact checks).
The widths come from the shipped facts (configs/facts/models.yaml).

How the peak is measured, and why this way: each shape runs in a FRESH subprocess with glibc's
``MALLOC_MMAP_THRESHOLD_=65536``, so every tensor of 64 KiB or more is its own mmap and freeing it
returns the pages at once; the process's resident-set high-water mark (``ru_maxrss``) then tracks
the live tensors. The weights are allocated without an init pass (meta device, then ``to_empty``
and an in-place fill), so building them never rises above the weights themselves; the peak of the
run is ``ru_maxrss`` at the end minus the resident size after building. torch's profiler
(``profile_memory``) reports per-operator allocations, not the process's peak, and misses what
oneDNN allocates outside torch's allocator; RSS sees everything the process holds.

    python bench/bench_plan_interp.py                  # the recorded shapes (docs/BENCHMARKS.md)
    python bench/bench_plan_interp.py --job controller  # only the `interp controller` shapes
    python bench/bench_plan_interp.py --one '{"layers": 1, "tokens": 1024, "job": "patch"}'
    python bench/bench_plan_interp.py --gpu cuda:0 --out docs/gpu-bench.jsonl   # on a GPU: the real 28 layers,
        # fp16, an 8K-token chunk, the process capped at 20 GB; the peak is torch.cuda.max_memory_allocated;
        # and the a4500x2 controller replay: the 14B's 48 layers in NF4, a 16K-token conversation
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

WORKER = "Qwen/Qwen2.5-7B-Instruct"  # capture and patch run at its width (configs/facts/models.yaml)
CONTROLLER = "Qwen/Qwen2.5-Coder-14B-Instruct"  # `interp controller` runs at its width
SHAPES = [  # the test runs the first; the bench records them all
    {"layers": 1, "tokens": 1024, "job": "patch", "batch_size": 2},
    {"layers": 1, "tokens": 2048, "job": "patch", "batch_size": 2},
    {"layers": 2, "tokens": 2048, "job": "patch", "batch_size": 2},
    {"layers": 1, "tokens": 4096, "job": "patch", "batch_size": 2},
    {"layers": 2, "tokens": 1024, "job": "capture", "batch_size": 4},
    {"layers": 1, "tokens": 4096, "job": "capture", "batch_size": 1},
    # `interp controller`: attribution (one layer's graph at a time) and its exact follow-ups over a conversation
    {"layers": 1, "tokens": 1024, "job": "controller", "batch_size": 2},
    {"layers": 1, "tokens": 2048, "job": "controller", "batch_size": 2},
    {"layers": 2, "tokens": 2048, "job": "controller", "batch_size": 2},
    # narrow and deep (the 14B's depth halved, no GQA): the prefix's KV cache and its B patched copies
    # (memplan.controller_prefix_exact_bytes) outweigh attribution, as at the 14B's 48 layers x 16K tokens on a GPU
    {"layers": 24, "tokens": 2048, "job": "controller", "batch_size": 2,
     "arch": {"hidden": 512, "heads": 4, "kv_heads": 4, "intermediate": 1024, "vocab": 1000}},
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


def _arch(shape: dict[str, Any]):
    """The shape's architecture: its model's real width (shipped facts), `layers` of them, `arch` overriding."""
    from dataclasses import replace

    from rlm_rig.configs.archs import arch_for

    model = arch_for(CONTROLLER if shape["job"] == "controller" else WORKER)
    return replace(model, layers=shape["layers"], **shape.get("arch", {}))


def _qwen2_config(a: Any):
    from transformers import Qwen2Config

    return Qwen2Config(num_hidden_layers=a.layers, hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab,
                       max_position_embeddings=a.max_positions, tie_word_embeddings=a.tied)


def _build(a: Any, dtype: str, device: str = "cpu"):
    """A random Qwen2 of architecture `a`, allocated without an init pass (see the module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = _qwen2_config(a)
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


def _build_4bit(a: Any, dtype: str, device: str, quant: str):
    """Random weights saved as a checkpoint, loaded back in 4-bit by the loader `interp controller` uses."""
    import tempfile

    from transformers import AutoModelForCausalLM

    from rlm_rig.interp.model import _load_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        _build(a, "float16", "cpu").save_pretrained(tmp)
        return _load_causal_lm(AutoModelForCausalLM, tmp, dtype, device, quant)


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
    m.name, m.path, m.device, m.tokenizer = "random-weights", "", next(hf.parameters()).device, None
    m.hf, m.pad_id = hf, 0
    m.dtype = next(p.dtype for p in hf.parameters() if p.dtype.is_floating_point)
    m.quantization = getattr(getattr(hf.config, "quantization_config", None), "bnb_4bit_quant_type", "none")
    m.nn = nnsight.TransformersModel(hf, tokenizer=_id_tokenizer())
    return m


def _worker_job(model: Any, shape: dict[str, Any], ids: list[int]) -> None:
    """capture_batch, or a patching sweep's reference run and one patched batch, as interp's worker jobs run them."""
    T, n, layers = shape["tokens"], shape.get("batch_size", 2), list(range(shape["layers"]))
    if shape["job"] == "capture":
        from rlm_rig.interp.methods.capture import Prepared, capture_batch

        batch = [Prepared(item=None, prompt_ids=ids, seq=ids, positions=[("last", T - 1, -1)]) for _ in range(n)]
        capture_batch(model, batch, layers, ["resid"])
        return
    from rlm_rig.interp.methods.patching import PatchSpec, patched_logits, reference_run

    corrupt = list(ids)
    corrupt[T // 2] = corrupt[T // 2] + 1
    pair = SimpleNamespace(clean_ids=ids, corrupt_ids=corrupt,
                           positions={"edit": [T // 2], "last": [T - 1], "all": list(range(T))})
    sites = [("resid", li) for li in layers]
    _, _, acts = reference_run(model, pair, sites, offload=bool(shape.get("offload", False)))
    specs = [PatchSpec("resid", layers[k % len(layers)], ("edit", "last")[k % 2]) for k in range(n)]
    patched_logits(model, corrupt, specs, acts, 0, pair)


def controller_pair(ids: list[int]):
    """A controller pair laid out like `methods.controller.build_pair`'s over a chunk-count conversation: an
    earlier cell output, the last cell output holding the told value that is edited (+1) ~100 tokens before the
    end, a printed total after it, and 8 teacher-forced answer tokens; the cell groups feed the per-cell rows
    and the whole-cell exact patches."""
    from rlm_rig.interp.data.pairs import Pair, _positions

    T = len(ids)
    e = T - 96
    corrupt = list(ids)
    corrupt[e] += 1
    groups = {"cell0": list(range(T // 4, T // 4 + 64)), "cell1": list(range(T - 128, T - 64)),
              "value1": [e], "cell2": list(range(T - 48, T - 16)), "total2": [T - 40]}
    pos = {**_positions(ids, corrupt, groups["cell1"], T - 8), **groups}
    return Pair(pair_id="bench:value1", run="bench", sample="bench", sub_call=1, corruption="chunk_value",
                description="synthetic", clean_ids=ids, corrupt_ids=corrupt, clean_target="7", corrupt_target="8",
                clean_token=ids[-1] + 1, corrupt_token=ids[-1] + 2, prompt_len=T - 8, positions=pos, chunk="bench",
                answer_prefix_ids=ids[-8:])


def _controller_job(model: Any, shape: dict[str, Any], ids: list[int]) -> None:
    """What `interp controller` runs per pair (controller_job._attribute): attribution, its top-k exact check on
    the shared prefix's KV cache, the per-cell rows and the whole-cell exact patches. One direction: each
    direction repeats the same steps and frees them before the next."""
    from rlm_rig.interp.config import InterpConfig
    from rlm_rig.interp.controller_job import _attribute

    cfg = InterpConfig(directions=["denoise"], batch_size=shape.get("batch_size", 2),
                       offload_reference=bool(shape.get("offload", False)))
    _attribute(model, [controller_pair(ids)], cfg, None)


def _load(shape: dict[str, Any], dtype: str, device: str):
    quant = shape.get("quant", "none")
    if quant != "none":
        return _replay_model(_build_4bit(_arch(shape), dtype, device, quant))
    return _replay_model(_build(_arch(shape), dtype, device))


def run_one(shape: dict[str, Any]) -> dict[str, Any]:
    """In THIS process (call through `measure`, which starts a fresh one): build, run, report the peak."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))
    dtype = shape.get("dtype", "bfloat16")
    device = shape.get("device", "cpu")
    cuda = device.startswith("cuda")
    if cuda:  # the A4500's 20 GB, whatever card this runs on
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, 20e9 / total), device)
    model = _load(shape, dtype, device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_bytes()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(100, min(150000, model.hf.config.vocab_size - 10), (shape["tokens"],), generator=g).tolist()
    oom = False
    try:
        (_controller_job if shape["job"] == "controller" else _worker_job)(model, shape, ids)
    except torch.OutOfMemoryError:  # over the 20 GB cap: the plan said it fits, the card says not
        oom = True
    peak = torch.cuda.max_memory_allocated(device) if cuda else _peak_bytes()
    return {**shape, "dtype": dtype, "weights_rss_gib": base / 2**30, "peak_delta_gib": (peak - base) / 2**30,
            **({"oom_at_20gb": True} if oom else {})}


def measure(shape: dict[str, Any], timeout_s: float = 900) -> dict[str, Any]:
    """`run_one` in a fresh subprocess (the peak is a per-process high-water mark)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(shape)], env=env,
                       capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"measurement of {shape} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def predicted(shape: dict[str, Any]) -> float:
    """`rlm-rig plan`'s transient (GiB, weights not included) for the same shape: interp's capture or patching
    term, or `interp controller`'s (controller_replay_bytes)."""
    from rlm_rig.configs.memplan import controller_replay_bytes, interp_capture_bytes, interp_patch_bytes

    a = _arch(shape)
    b = 2 if shape.get("dtype", "bfloat16") in ("bfloat16", "float16") else 4
    n, offload = shape.get("batch_size", 2), bool(shape.get("offload", False))
    if shape["job"] == "controller":
        return controller_replay_bytes(a, b, tokens=shape["tokens"], batch_size=n, offload=offload) / 2**30
    if shape["job"] == "capture":
        return interp_capture_bytes(a, b, batch=shape.get("batch_size", 1), tokens=shape["tokens"],
                                    n_sites=shape["layers"]) / 2**30
    return interp_patch_bytes(a, b, batch_size=n, tokens=shape["tokens"], n_sites=shape["layers"],
                              offload=offload) / 2**30


def gpu_controller_shape() -> dict[str, Any]:
    """What a4500x2 runs for `interp controller` on GPU 0: the 14B's 48 layers in NF4 (the profile's controller
    quantization and dtype), a conversation of `interp.controller_max_tokens`, its batch size and offload. Without
    bitsandbytes: fp16 weights, as many layers as fit in the NF4 model's weight bytes, said in the row."""
    import importlib.util
    from dataclasses import replace

    from rlm_rig.configs.archs import arch_for
    from rlm_rig.configs.memplan import weight_bytes
    from rlm_rig.interp.controller_job import controller_target
    from rlm_rig.interp.profile import load_interp_config

    cfg, _, profile = load_interp_config("a4500x2")
    spec = controller_target(profile, cfg)
    a = arch_for(CONTROLLER)
    shape = {"layers": a.layers, "tokens": cfg.controller_max_tokens, "job": "controller", "batch_size": cfg.batch_size,
             "dtype": spec.dtype, "quant": spec.quantization, "offload": cfg.offload_reference}
    if importlib.util.find_spec("bitsandbytes") is None:
        budget = weight_bytes(a, spec.dtype, spec.quantization)
        fit = max(k for k in range(1, a.layers + 1) if weight_bytes(replace(a, layers=k), "float16", None) <= budget)
        shape.update(layers=fit, dtype="float16", quant="none",
                     note=f"bitsandbytes not importable: fp16 weights, {fit} of {a.layers} layers (the NF4 model's "
                          "weight bytes)")
    return shape


def _gpu_shapes(device: str) -> list[dict[str, Any]]:
    """The real-size shapes on `device`, or one line and exit 2 when no CUDA GPU is there."""
    import torch

    if not torch.cuda.is_available():
        print(f"bench_plan_interp: --gpu {device}: torch {torch.__version__} sees no CUDA GPU; run it on the GPU box "
              "after `make install-gpu`", file=sys.stderr)
        sys.exit(2)
    return [{**s, "device": device} for s in GPU_SHAPES + [gpu_controller_shape()]]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", help="a JSON shape: run it in this process and print one JSON line")
    ap.add_argument("--out", default=None, help="append the result lines to this JSONL file")
    ap.add_argument("--gpu", default=None, help="a CUDA device: run the real-size GPU shapes there instead")
    ap.add_argument("--job", default=None, choices=["capture", "patch", "controller"], help="only this job's shapes")
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(json.loads(a.one))))
        return []
    rows = []
    for shape in (_gpu_shapes(a.gpu) if a.gpu else SHAPES):
        if a.job and shape["job"] != a.job:
            continue
        m = measure(shape, timeout_s=3600 if a.gpu else 900)  # the GPU's 14B: save 29 GB of weights, load in NF4
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
