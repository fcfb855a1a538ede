"""`rlm-rig ledger` and `rlm-rig calibrate` outputs, and their sections in `report`: the recursive boundary's
two run-level figures (the loss ledger, experiments/analysis/ledger.py; worker confidence,
experiments/analysis/calibration.py). Written into a folder claimed and staged like every command's output."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from rlm_rig.experiments.analysis import calibration as cal
from rlm_rig.experiments.analysis import ledger as led
from rlm_rig.experiments.analysis.metrics import load_run
from rlm_rig.experiments.analysis.render import fmt, md_table
from rlm_rig.records.outdirs import claim, relocate, staged

LEDGER_FILE = "ledger.parquet"
CALIBRATION_FILE = "calibration.parquet"


def probe_map(capture_dir: Path | None, layer: int | None) -> dict[tuple[str, int], int] | None:
    """Held-out probe predictions per (sample, sub_call) from an interp capture folder, or None without one."""
    if capture_dir is None:
        return None
    if layer is None:
        raise ValueError("--capture needs --probe-layer (pick the layer from `interp probe`'s table)")
    from rlm_rig.interp.methods.probes import heldout_predictions

    df = heldout_predictions(capture_dir, layer=layer)
    return {(str(s), int(i)): int(p) for s, i, p in zip(df["sample"], df["sub_call"], df["probe_pred"])}


def ledger_files(run: Any, out: Path, probe: dict[tuple[str, int], int] | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    table = led.build_ledger(run, probe)
    table.to_parquet(out / LEDGER_FILE, index=False)
    led.by_position(table).to_csv(out / "ledger_by_position.csv")
    plot = led.plot_ledger(table, out / "ledger.png", title=f"Loss ledger: {run.name}")
    return table, {"table": out / LEDGER_FILE, "plot": plot, "totals": led.total_loss(run)}


def ledger_markdown(table: pd.DataFrame, totals: dict[str, float], probe: bool, plot: str = "ledger.png") -> list[str]:
    sums = table.groupby("stage")["loss"].sum().reindex(led.STAGES).fillna(0.0)
    out = ["\n## Loss ledger\n",
           "Each lost piece of gold assigned to one stage (experiments/analysis/ledger.py). "
           + ("" if probe else "No probe results were given, so wrong replies are `read_wrong_no_probe`, "
              "not split into represented-not-said / misread. ")
           + f"Value examples: losses add up to the run's total loss {fmt(totals['value_loss'], '.2f')}; "
           f"count examples: signed contributions add up to {fmt(totals['count_signed_error'], '.0f')} items "
           "(final - gold).\n",
           md_table(["stage", "loss"], [[s, fmt(v, ".2f")] for s, v in sums.items()]),
           f"\n![loss ledger by gold position]({plot})\n"]
    return out


def calibration_files(run: Any, out: Path, threshold: float, bins: int = 10) -> tuple[dict[str, Any], list[str]]:
    decode = cal.worker_decoder(run)
    frame = cal.calibration_frame(run, decode)
    if frame.empty:
        raise ValueError(f"{run.path}: no worker reply has both recorded logprobs and per-chunk gold "
                         "(gold.jsonl or extra.gold_spans): nothing to calibrate")
    value, table = cal.ece(frame["confidence"], frame["correct"], bins)
    conc = cal.concentration(frame, threshold)
    frame.to_parquet(out / CALIBRATION_FILE, index=False)
    table.to_csv(out / "reliability.csv", index=False)
    conc.to_csv(out / "confidence_concentration.csv", index=False)
    plot = cal.reliability_plot(table, out / "reliability.png", title=f"{run.name}", ece_value=value)
    md = ["\n## Worker confidence\n",
          f"{len(frame)} worker replies with per-chunk gold; reply accuracy {frame['correct'].mean():.3f}, "
          f"mean confidence {frame['confidence'].mean():.3f}, **ECE {value:.3f}** ({bins} equal-width bins; "
          "experiments/analysis/calibration.py). Confidence: the probability of each reply's answer tokens"
          + ("" if decode else " (no worker tokenizer found here: whole-reply probability for replies not "
             "recorded with one)") + ".\n",
          md_table(["bin", "replies", "mean confidence", "accuracy"],
                   [[f"{r.lo:.1f}-{r.hi:.1f}", str(r.n), fmt(r.mean_confidence), fmt(r.accuracy)]
                    for r in table.itertuples() if r.n]),
          "\nDo final-answer errors concentrate in examples with a low-confidence chunk?\n",
          md_table(["group", "examples", "final errors", "error rate", "share of errors"],
                   [[r.group, str(r.examples), str(r.final_errors), fmt(r.error_rate), fmt(r.share_of_errors)]
                    for r in conc.itertuples()]),
          "\n![reliability diagram](reliability.png)\n"]
    return {"ece": value, "n": len(frame), "table": out / CALIBRATION_FILE, "plot": plot}, md


def write_ledger(run_dir: Path, out_dir: Path, *, capture: Path | None = None, layer: int | None = None) -> dict[str, Any]:
    """`rlm-rig ledger`: ledger.parquet, ledger_by_position.csv, ledger.png and ledger.md in ``out_dir``."""
    dest = claim(out_dir, "ledger", inputs=[run_dir], replace_own=True)
    run = load_run(run_dir)
    probe = probe_map(capture, layer)
    with staged(dest, "ledger", replace_own=True) as tmp:
        table, res = ledger_files(run, tmp, probe)
        (tmp / "ledger.md").write_text("\n".join(ledger_markdown(table, res["totals"], probe is not None)) + "\n")
        res["markdown"] = tmp / "ledger.md"
    return relocate(res, tmp, dest.path)


def write_calibration(run_dir: Path, out_dir: Path, *, threshold: float = 0.5, bins: int = 10) -> dict[str, Any]:
    """`rlm-rig calibrate`: calibration.parquet, reliability.csv/.png, confidence_concentration.csv, calibration.md."""
    dest = claim(out_dir, "calibrate", inputs=[run_dir], replace_own=True)
    run = load_run(run_dir)
    with staged(dest, "calibrate", replace_own=True) as tmp:
        res, md = calibration_files(run, tmp, threshold, bins)
        (tmp / "calibration.md").write_text("\n".join(md) + "\n")
        res["markdown"] = tmp / "calibration.md"
    return relocate(res, tmp, dest.path)


def tape_markdown(runs: list[Any]) -> list[str]:
    """Who answered each worker call, per run (SubCallRecord.source): the model, a recorded tape (`--tape RUN`),
    or a fork's replaced reply; nested runs counted. Empty when every call went to the model."""
    rows = []
    for run in runs:
        counts = {"model": 0, "tape": 0, "fork": 0}
        for t in run.trajectories.values():
            for sub in (t.walk() if t is not None else ()):
                for s in sub.sub_calls:
                    if s.kind != "tool":
                        counts[s.source] = counts.get(s.source, 0) + 1
        rows.append([run.label, str(counts["model"]), str(counts["tape"]), str(counts["fork"])])
    if all(r[2] == "0" and r[3] == "0" for r in rows):
        return []
    return ["\n## Worker calls by source\n",
            "Replies answered by the worker model, by a recorded tape (`--tape RUN`: identical calls are not paid "
            "for again) or by a fork's replaced reply (`rlm-rig fork`); docs/BOUNDARY.md.\n",
            md_table(["run", "model", "tape", "fork"], rows)]


def fork_markdown(runs: list[Any]) -> list[str]:
    """The forks among the runs (a `rlm-rig fork` folder): which reply was replaced and what the answer did."""
    from rlm_rig.records.fork import ForkRecord
    from rlm_rig.records.runlog import RunFolder

    rows = []
    for run in runs:
        path = RunFolder(run.path).fork_path
        if path.is_file():
            f = ForkRecord.load(path)
            changed = sum(1 for st in f.steps if st.changed)
            rows.append([run.label, f"{Path(f.original_run).name} / {f.sample}", f"sub_call:{f.at}",
                         repr((f.reply_original or "")[:30]), repr(f.reply_fork[:30]), str(f.answer_original),
                         str(f.answer_fork), fmt(f.score_change, "+.3f") if f.score_change is not None else "-",
                         f"{changed} of {len(f.steps)}", str(f.worker_calls)])
    if not rows:
        return []
    return ["\n## Forks\n", "Closed-loop counterfactual forks (`rlm-rig fork`, docs/BOUNDARY.md): one worker reply "
            "replaced, the controller continues.\n",
            md_table(["run", "original", "at", "reply was", "reply now", "answer was", "answer now", "score change",
                      "later steps changed", "worker calls"], rows)]


def report_sections(runs: list[Any], out_dir: Path, threshold: float = 0.5) -> tuple[list[str], dict[str, Path]]:
    """The report's ledger and confidence sections for every run that has what they need (none otherwise),
    and their plots by name (each run's files in ``boundary-<k>/``)."""
    md: list[str] = tape_markdown(runs) + fork_markdown(runs)
    plots: dict[str, Path] = {}
    for i, run in enumerate(runs):
        sub = out_dir / f"boundary-{i}"
        sub.mkdir(exist_ok=True)
        try:
            table, res = ledger_files(run, sub, None)
            plots[f"ledger-{i}"] = res["plot"]
            md += [s.replace("## Loss ledger", f"## Loss ledger: {run.label}", 1) if s.startswith("\n## ") else s
                   for s in ledger_markdown(table, res["totals"], False, f"{sub.name}/ledger.png")]
        except led.NoGoldPositions:
            pass
        try:
            res, part = calibration_files(run, sub, threshold)
            plots[f"reliability-{i}"] = res["plot"]
            md += [s.replace("## Worker confidence", f"## Worker confidence: {run.label}", 1)
                   .replace("(reliability.png)", f"({sub.name}/reliability.png)") for s in part]
        except ValueError:
            pass
        if not any(sub.iterdir()):
            sub.rmdir()
    return md, plots
