"""How much each sub_call's information moves the final answer: forks of every sub_call of a run.

For each sample and each sub_call K the study forks the run (experiments/runs/fork.py) with reply K
replaced by the gold count, gold + 1, gold - 1 and an empty reply. The per-chunk gold comes from a
JSONL of {sample, sub_call, gold} (``--gold``; by default the run's own ``RunFolder.gold_path``);
where there is none, the recorded reply's integer stands in for it (``base: recorded``).
One row per fork in ``RunFolder.fork_study_path``; per sub_call, the answer flip rate and the mean
score change in ``RunFolder.fork_study_summary_path``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from rlm_rig.experiments.runs.fork import (ControllerMode, Original, default_controller, fork_config, load_original,
                                           open_forker, run_examples)
from rlm_rig.records.fork import ForkRecord
from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.trajectory import read_jsonl

_INT = re.compile(r"-?\d+")


def chunk_gold(path: Path | None) -> dict[tuple[str, int], int]:
    """{(sample, sub_call): gold count} from a JSONL of {sample, sub_call, gold}; {} without a file."""
    if path is None or not Path(path).is_file():
        return {}
    return {(str(r["sample"]), int(r["sub_call"])): int(r["gold"]) for r in read_jsonl(path)}


def variants(gold: int | None, recorded: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(base, [(variant, reply)]): around the gold count, else around the recorded reply's integer."""
    base = "gold"
    if gold is None:
        m = _INT.search(recorded or "")
        gold, base = (int(m.group()) if m else 0), "recorded"
    return base, [(base, str(gold)), (f"{base}+1", str(gold + 1)), (f"{base}-1", str(gold - 1)), ("empty", "")]


def _row(rec: ForkRecord, base: str, variant: str) -> dict[str, Any]:
    return {"sample": rec.sample, "sub_call": rec.at, "variant": variant, "base": base, "reply": rec.reply_fork,
            "reply_original": rec.reply_original, "answer_original": rec.answer_original,
            "answer_fork": rec.answer_fork, "answer_changed": rec.answer_changed, "gold": rec.gold,
            "score_original": rec.score_original, "score_fork": rec.score_fork, "score_change": rec.score_change,
            "worker_calls": rec.worker_calls, "stop_reason": rec.stop_reason, "controller": rec.controller}


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per sample and sub_call: answer flip rate over its forks, and the mean score change."""
    g = rows.groupby(["sample", "sub_call"], sort=True)
    return g.agg(forks=("variant", "size"), flip_rate=("answer_changed", "mean"),
                 score_change=("score_change", "mean")).reset_index()


def _samples(folder: RunFolder, chosen: Sequence[str] | None) -> list[str]:
    ids = [sid for sid, _ in folder.trajectories()]
    return [s for s in ids if not chosen or s in chosen]


def run_study(run: str | Path, *, out: str | Path, controller: ControllerMode | None = None,
              samples: Sequence[str] | None = None, gold: str | Path | None = None, overrides: Sequence[str] = (),
              doc: str | Path | None = None, force: bool = False) -> pd.DataFrame:
    """The Python API of ``rlm-rig fork-study``: every sub_call of every chosen sample, four forks each."""
    folder, dest = RunFolder(run), RunFolder(out)
    ids = _samples(folder, samples)
    examples = run_examples(folder) if doc is None else None  # the dataset read once, not once per sample
    origs = [load_original(run, s, doc=doc, examples=examples) for s in ids]  # bad input fails before any server
    if not origs:
        raise FileNotFoundError(f"{run}: no sample to fork (asked for {list(samples or [])})")
    golds = chunk_gold(Path(gold) if gold else folder.gold_path)
    mode = controller or default_controller(origs[0])
    cfg = fork_config(origs[0], mode, overrides)
    held = dest.claim("fork-study", force=force)
    try:
        with open_forker(origs[0], out, mode, cfg) as forker:
            rows = [r for o in origs for r in _forks(forker, o, golds, dest)]
        table = pd.DataFrame(rows)
        table.to_parquet(dest.fork_study_path, index=False)
        summarize(table).to_parquet(dest.fork_study_summary_path, index=False)
        return table
    finally:
        held.release()


def _forks(forker: Any, orig: Original, golds: dict[tuple[str, int], int], dest: RunFolder) -> list[dict[str, Any]]:
    rows = []
    for k, sub in enumerate(orig.traj.sub_calls):
        base, todo = variants(golds.get((orig.sample, k)), sub.response)
        for variant, reply in todo:
            save = dest.trajectory_path(f"{orig.sample}-fork{k}-{variant}")
            _, rec = forker.fork(orig, k, reply, save_to=save)
            rows.append(_row(rec, base, variant))
    return rows


def format_summary(summary: pd.DataFrame) -> str:
    """One line per sub_call, for the terminal."""
    lines = []
    for r in summary.to_dict("records"):
        change = "n/a" if pd.isna(r["score_change"]) else f"{r['score_change']:+.3f}"
        lines.append(f"{r['sample']} sub_call:{r['sub_call']}: flip rate {r['flip_rate']:.2f} over {r['forks']} "
                     f"forks, score change {change}")
    return "\n".join(lines)


def read_study(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, summary) of a finished study folder."""
    d = RunFolder(out)
    return pd.read_parquet(d.fork_study_path), pd.read_parquet(d.fork_study_summary_path)

