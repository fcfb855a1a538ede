"""The viewer at scale, in headless Chromium (a figure, never a test).

A synthetic run folder of N samples (default 10,000; rows only, no trajectories: the samples page is
what scales with N) is turned into a site, then its samples page is opened from disk:

* first render: navigation start -> the table's first page drawn (``window.__samplesReady``);
* filter: one text search, failures-only, a score range, a class, and a sort over all N rows,
  each from the event to the table redrawn.

The same is measured on a 100-sample folder side by side, so the printed ratio shows how the page
scales with N. Target on the CPU box: under 2 s for each at 10,000.

    python bench/bench_view.py [--n 10000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rlm_rig.experiments.view.site import build_site
from rlm_rig.records.runlog import EvalSpec, RunFolder

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
CLASSES = ["wrong_answer", "worker_miscount", "wrong_aggregation", "parse_failure", "cap_hit"]


def synthetic_run(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder = RunFolder(path)  # the records room writes the layout; the rows stay raw dicts (the viewer reads them so)
    folder.write_config({"name": "synthetic", "controller": {"backend": "replay"},
                         "worker": {"backend": "vllm", "model": "tiny"}, "rlm": {"max_depth": 1}})
    folder.write_spec(EvalSpec(dataset="oolong-real", method="rlm"))
    with open(folder.samples_path, "w") as f:
        for i in range(n):
            gold = rng.randint(0, 40)
            ans = gold if rng.random() < 0.3 else rng.randint(0, 40)
            score = 1.0 if ans == gold else round(0.75 ** abs(ans - gold), 4)
            f.write(json.dumps({
                "id": f"s{i:05d}", "dataset": "oolong-real", "method": "rlm",
                "question": f"Total number of rolls by the character {rng.choice(['Vex', 'Grog', 'Keyleth', 'Scanlan'])} "
                            f"in episode {rng.randint(1, 115)}?",
                "question_type": rng.choice(["singledoc_rolls", "multidoc_rolls"]),
                "context_chars": rng.randint(20_000, 400_000), "context_tokens": rng.randint(5_000, 100_000),
                "gold": str(gold), "answer": f"\\boxed{{{ans}}}", "score": score, "lenient_score": score,
                "stop_reason": "final", "n_sub_calls": rng.randint(2, 40), "wall_s": rng.uniform(5, 120),
                "extra": {"failure_class": rng.choice(CLASSES)} if score < 1 else {},
            }) + "\n")
    return path


def measure(browser, samples_html: Path, repeats: int) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(samples_html.as_uri())
        page.wait_for_function("window.__samplesReady !== undefined")
        out.setdefault("first render", []).append(page.evaluate("window.__samplesReady"))
        steps = {
            "text search": "var e=document.getElementById('f-text'); e.value='grog'; e.dispatchEvent(new Event('input'));",
            "failures only": "var e=document.getElementById('f-failures'); e.checked=true; e.dispatchEvent(new Event('change'));",
            "score range": "var e=document.getElementById('f-min'); e.value='0.2'; e.dispatchEvent(new Event('change'));"
                           "e=document.getElementById('f-max'); e.value='0.8'; e.dispatchEvent(new Event('change'));",
            "class": "var e=document.getElementById('f-class'); e.selectedIndex=1; e.dispatchEvent(new Event('change'));",
            "sort by score": "document.querySelector(\"th[data-col='score']\").click();",
        }
        for name, js in steps.items():
            ms = page.evaluate(f"() => {{ var t0 = performance.now(); {js} "
                               "document.body.offsetHeight; return performance.now() - t0; }")
            out.setdefault(name, []).append(ms)
        page.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    try:
        sites = {}
        for n in (100, args.n):
            rd = synthetic_run(tmp / f"run{n}", n)
            t0 = time.perf_counter()
            build_site([rd], rd / "view", report=False)
            print(f"build_site, {n} samples (no trajectories, no report): {time.perf_counter() - t0:.1f} s; "
                  f"samples.html {(rd / 'view' / 'r0' / 'samples.html').stat().st_size / 1e6:.2f} MB")
            sites[n] = rd / "view" / "r0" / "samples.html"
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            res = {n: measure(b, s, args.repeats) for n, s in sites.items()}
            b.close()
        small, big = res[100], res[args.n]
        print(f"\nheadless Chromium, median of {args.repeats} (ms)")
        print(f"{'step':<16}{'100 samples':>14}{f'{args.n} samples':>16}{'ratio':>8}{'vs 2 s target':>15}")
        for k in big:
            print(f"{k:<16}{small[k]:>14.1f}{big[k]:>16.1f}{big[k] / max(small[k], 1e-3):>8.1f}{big[k] / 2000:>15.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
