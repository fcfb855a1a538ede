"""Attribution patching vs exact patching on SmolLM2-135M-Instruct (a reduced study for CPU).

    .venv/bin/python -m experiments.studies.smollm2_attr --out runs/smollm2-attr [--pairs 3] [--layers 0,9,18,29]

The counting set's passages are answered by SmolLM2 (transformers greedy, bf16, the rig's in-process
worker), written as a run folder with exact gold, and k vs k±1 line-swap pairs are built. For each
pair: attribution patching (denoising, resid/attn/MLP, every token x layer), exact patching of EVERY
token at the chosen layers, and exact patching of the top-k sites per layer. The rank correlation and
sign agreement land in OUT/attr_vs_exact.csv and OUT/summary.json, figures in OUT/*.png.
WHY here and not in interp: interp must not import experiments; this driver owns the data.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--layers", default="0,9,18,29", help="layers exact-patched at every token")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    from interp.attribution import attribute_pair, compare, exact_sites, top_k_sites
    from interp.capture import attach_gold
    from interp.model import ReplayModel
    from interp.pairs import build_counting_pairs
    from interp.plots_maps import attribution_map
    from interp.selection import iter_sub_calls, load_gold_file
    from worker import SyncWorker, TransformersWorker, ensure_smollm2

    from .counting import make_counting_set
    from .counting_run import GOLD_FILE, answer_items, write_counting_run

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    items = make_counting_set(seed=a.seed, ks=[2, 3, 4, 5], lengths=(10,), per_cell=2)
    with SyncWorker(TransformersWorker(ensure_smollm2(), dtype="bfloat16", max_tokens=16)) as sync:
        answers = answer_items(sync, items, max_tokens=16)
    run = write_counting_run(out / "run", items, answers, worker_model="smollm2",
                             worker_config={"model": "smollm2", "dtype": "bfloat16", "max_tokens": 16})
    gold = load_gold_file(run / GOLD_FILE) if (run / GOLD_FILE).exists() else None
    model = ReplayModel("smollm2", dtype="float32")
    subs = [attach_gold(i, gold) for i in iter_sub_calls(run)]
    pairs, skipped = build_counting_pairs(model, subs, n_pairs=a.pairs, corruptions=["line_remove", "line_add"],
                                          seed=a.seed)
    layers = [int(x) for x in a.layers.split(",")]
    cmp_rows, timing, summ = [], [], {}
    for n, pair in enumerate(pairs):
        t = time.time()
        res = attribute_pair(model, pair, direction="denoise")
        t_attr = time.time() - t
        every = [(c, li, tok) for c in ("resid", "attn", "mlp") for li in layers for tok in range(pair.seq_len)]
        t = time.time()
        exact = exact_sites(model, pair, every, batch_size=16)
        t_exact = time.time() - t
        top = exact_sites(model, pair, top_k_sites(res, a.top_k), batch_size=16)
        cmp_rows += [dict(r, scope="all_tokens") for r in compare(res, exact, k=a.top_k)]
        cmp_rows += [dict(r, scope="top_k_all_layers") for r in compare(res, top, k=a.top_k)]
        timing.append(dict(pair=pair.pair_id, seq_len=pair.seq_len, attribution_s=t_attr, exact_s=t_exact,
                           exact_sites=len(every), denominator=res.denominator))
        if n == 0:
            for c in res.attr:
                attribution_map(res, c, out / f"attr_smollm2_{c}.png")
        summ = _write(out, cmp_rows, pairs[: n + 1], skipped, layers, timing, t0)  # after every pair: a partial
        print(f"pair {n + 1}/{len(pairs)} done", json.dumps(summ["by_component"]), flush=True)  # run still counts
    return summ


def _write(out: Path, cmp_rows: list, pairs: list, skipped: dict, layers: list, timing: list, t0: float) -> dict:
    cm = pd.DataFrame(cmp_rows)
    cm.to_csv(out / "attr_vs_exact.csv", index=False)
    summ = {
        "pairs": [p.pair_id for p in pairs], "skipped": skipped, "layers_exact_every_token": layers,
        "timing": timing, "wall_s": time.time() - t0,
        "by_component": {
            f"{s}/{c}": dict(median_spearman_after_edit=float(np.nanmedian(g["spearman_after_edit"])),
                             median_spearman=float(np.nanmedian(g["spearman"])),
                             mean_sign_agreement_top_k=float(np.nanmean(g["sign_agreement_top_k"])))
            for (s, c), g in cm.groupby(["scope", "component"])},
        "by_layer_all_tokens": cm[cm["scope"] == "all_tokens"].groupby(["component", "layer"])[
            ["spearman_after_edit", "sign_agreement_top_k"]].mean().reset_index().to_dict("records"),
    }
    (out / "summary.json").write_text(json.dumps(summ, indent=1))
    return summ


if __name__ == "__main__":
    main()
