"""interp performance figures, as ratios (never asserted in tests).

1. Capture overhead: nnsight capture of the residual stream (and attn/MLP outputs) at every layer
   vs a plain transformers forward of the same padded batch. Target <= 1.15x.
2. Patching throughput: patches/second with several patched copies per forward vs one per forward.

    python bench/bench_interp.py                 # the rig's tiny model
    python bench/bench_interp.py --size mid      # a random 8-layer, 512-wide Qwen2 (same tokenizer)

Timings interleave the variants and report medians, so background load hits both alike.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlm_rig.interp.methods.capture import attach_gold, capture_batch, plain_forward, prepare
from rlm_rig.interp.config import InterpConfig
from tests.demo_run import make_demo_run
from rlm_rig.interp.model import ReplayModel
from rlm_rig.worker.models import resolve_model
from rlm_rig.interp.data.pairs import build_counting_pairs
from rlm_rig.interp.methods.patching import patch_pair, sweep_specs
from rlm_rig.interp.data.selection import iter_sub_calls


def mid_model(dest: Path) -> str:
    """A bigger random Qwen2 sharing the tiny tokenizer: more compute per token, like a real model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny = Path(resolve_model("tiny"))
    base = AutoConfig.from_pretrained(tiny).to_dict()
    base.update(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2)
    base.pop("layer_types", None)  # re-derived for the new depth
    cfg = type(AutoConfig.from_pretrained(tiny)).from_dict(base)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(dest)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens", "generation_config")):
            shutil.copy(f, dest / f.name)
    return str(dest)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def wall_and_cpu(fn) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds: on a shared, busy machine the CPU time is the
    steadier measure of the work done (other processes' load does not count into it)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "mid"], default="tiny")
    ap.add_argument("--batch", type=int, default=8, help="sub_calls per capture forward")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--patch-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-interp-"))
    try:
        path = "tiny" if args.size == "tiny" else mid_model(tmp / "mid")
        model = ReplayModel(path, dtype="float32")
        run = make_demo_run(tmp / "run", n_samples=4, chunks_per_sample=4, lines_per_chunk=10)
        cfg = InterpConfig(capture_positions=["last", "answer", "number"])
        items = [attach_gold(i) for i in iter_sub_calls(run)]
        batch = [prepare(model, it, cfg) for it in items[: args.batch]]
        layers = list(range(model.n_layers))
        toks = sum(len(p.seq) for p in batch)
        print(f"model={args.size} layers={model.n_layers} d={model.d_model} batch={len(batch)} tokens={toks}")

        print("\n== capture overhead (median seconds per forward) ==")
        for comps in (["resid"], ["resid", "attn", "mlp"]):
            for _ in range(2):  # warm-up
                plain_forward(model, batch)
                capture_batch(model, batch, layers, comps)
            plain, cap = [], []
            for k in range(args.repeats):  # alternate the order so drifts in load hit both alike
                runs = [("p", lambda: plain_forward(model, batch)), ("c", lambda: capture_batch(model, batch, layers, comps))]
                for tag, fn in (runs if k % 2 == 0 else runs[::-1]):
                    (plain if tag == "p" else cap).append(wall_and_cpu(fn))
            mp, mc = (statistics.median(w for w, _ in x) for x in (plain, cap))
            cp, cc = (statistics.median(c for _, c in x) for x in (plain, cap))
            print(f"components={'+'.join(comps):<14} wall: plain {mp * 1e3:7.1f} ms capture {mc * 1e3:7.1f} ms "
                  f"ratio {mc / mp:5.2f}x | cpu: plain {cp * 1e3:7.1f} ms capture {cc * 1e3:7.1f} ms "
                  f"ratio {cc / cp:5.2f}x  (target <= 1.15x)")

        print("\n== patching throughput ==")
        pairs, _ = build_counting_pairs(model, items, n_pairs=1, corruptions=["remove", "add"])
        pair = pairs[0]
        specs = sweep_specs(pair, layers, ["resid", "attn", "mlp"],
                            ["chunk_before", "edit", "edit_next", "chunk_after", "post_chunk", "last"], ["all", "last"])
        n = len(specs)
        res: dict[int, list[tuple[float, float]]] = {}
        for bs in (1, args.patch_batch):
            patch_pair(model, pair, specs[: min(n, bs)], directions=["denoise"], batch_size=bs)  # warm-up
        for _ in range(max(2, args.repeats // 3)):
            for bs in (1, args.patch_batch):
                res.setdefault(bs, []).append(wall_and_cpu(
                    lambda: patch_pair(model, pair, specs, directions=["denoise"], batch_size=bs)))
        print(f"pair seq_len={pair.seq_len}, {n} patches per sweep (+1 reference forward)")
        med = {bs: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)) for bs, ts in res.items()}
        for bs, (w, c) in med.items():
            print(f"batch_size={bs:<3} wall {w:7.2f} s/sweep {n / w:8.1f} patches/s | cpu {c:7.2f} s {n / c:8.1f} patches/cpu-s")
        b = args.patch_batch
        print(f"speed-up batched vs one per forward: wall {med[1][0] / med[b][0]:.2f}x, cpu {med[1][1] / med[b][1]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
