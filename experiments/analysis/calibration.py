"""Worker confidence across the boundary: is the worker's reply probability calibrated against per-chunk
gold, and do final-answer errors sit in examples with a low-confidence chunk?

Confidence is `controller.confidence.answer_confidence`: the probability of the reply's answer tokens (recorded
live as ``SubCallRecord.confidence``; recomputed from ``token_ids``/``token_logprobs`` with the worker's tokenizer
for records written without it, e.g. the counting set's run). Per-chunk gold comes from, in order:

1. the run's ``gold.jsonl`` (the counting set: ``{sample, sub_call, gold}``, exact counts);
2. the sample rows' ``extra.gold_spans``: a count example's chunk gold is the number of gold spans inside it;
   a value example's chunk is scored only when it holds the gold span (its gold is the value); chunks
   without it have no single right reply and are left out.

A reply is right when its first integer equals a count gold, or it states the value gold.
ECE uses equal-width bins on [0, 1]: sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from rlm_rig.controller.confidence import answer_confidence
from rlm_rig.experiments.analysis.ledger import gold_spans, says
from rlm_rig.records.answers import find_int
from rlm_rig.records.runlog import RunFolder

FRAME_COLUMNS = ["sample", "sub_call", "gold", "reply", "confidence", "correct", "final_correct"]


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and the reliability table (bin edges, n, mean confidence, accuracy)."""
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=float)
    if conf.size == 0:
        raise ValueError("no scored replies with a confidence: nothing to calibrate")
    if np.any((conf < 0) | (conf > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    rows, total = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        mc, acc = (float(conf[m].mean()), float(ok[m].mean())) if n else (float("nan"), float("nan"))
        if n:
            total += n / conf.size * abs(acc - mc)
        rows.append(dict(lo=b / bins, hi=(b + 1) / bins, n=n, mean_confidence=mc, accuracy=acc))
    return total, pd.DataFrame(rows)


def _gold_file(run: Any) -> dict[tuple[str, int], int]:
    path = RunFolder(run.path).gold_path
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(str(r["sample"]), int(r["sub_call"]))] = int(r["gold"])
    return out


def _chunk_gold(row: Any, sc: Any, exact: dict[tuple[str, int], int], sample: str) -> Any:
    """The right reply for one sub_call's chunk, or None where there is no single one (module doc)."""
    if (sample, sc.id) in exact:
        return exact[(sample, sc.id)]
    spans = gold_spans(row)
    if spans is None or sc.chunk_start is None or sc.chunk_end is None:
        return None
    inside = [s for s, e in spans if sc.chunk_start <= s and e <= sc.chunk_end]
    if "k" in (row.extra or {}):
        return len(inside)
    return str(row.gold).strip() if inside else None


def _right(reply: str | None, gold: Any) -> bool:
    return find_int(reply, words=True) == gold if isinstance(gold, int) else says(reply, str(gold))


def calibration_frame(run: Any, decode: Callable[[int], str] | None = None) -> pd.DataFrame:
    """One row per worker reply with per-chunk gold and a confidence, over every sample of a loaded run.
    The confidence recorded live is used; a record without one gets it from its logprobs, with ``decode``
    (the worker's tokenizer) to find the answer tokens (`controller.confidence.answer_confidence`)."""
    exact = _gold_file(run)
    rows = []
    for row in run.rows:
        traj = run.trajectories.get(row.id)
        if traj is None:
            continue
        sample = Path(row.trajectory).stem if row.trajectory else row.id
        for sc in traj.leaf_sub_calls():
            conf = sc.confidence if sc.confidence is not None else answer_confidence(sc.token_ids, sc.token_logprobs, decode)
            gold = _chunk_gold(row, sc, exact, sample) if sc.error is None else None
            if conf is None or gold is None:
                continue
            rows.append(dict(sample=row.id, sub_call=sc.id, gold=gold, reply=sc.response, confidence=conf,
                             correct=_right(sc.response, gold), final_correct=float(row.score) >= 1.0))
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def worker_decoder(run: Any) -> Callable[[int], str] | None:
    """The run's worker tokenizer as one id -> text (None when its model cannot be found here: the calibration
    then falls back to whole-reply probabilities, and says so)."""
    ref = (run.config.get("worker") or {}).get("model")
    if not ref:
        return None
    try:
        from rlm_rig.worker.models import resolve_model
        from rlm_rig.worker.tokens import load_fast_tokenizer

        tok = load_fast_tokenizer(resolve_model(str(ref)))
    except Exception:  # noqa: BLE001 - no tokenizer is a documented fallback, not a failure
        return None
    return lambda i: tok.decode([i])


def concentration(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Final-answer error rate of examples whose least confident chunk is under ``threshold`` vs the rest,
    with each group's share of all final errors: do errors concentrate where the worker was unsure?"""
    per = frame.groupby("sample").agg(min_conf=("confidence", "min"), final_correct=("final_correct", "first"))
    per["group"] = np.where(per["min_conf"] < threshold, f"some chunk < {threshold:g}", f"all chunks >= {threshold:g}")
    errors = int((~per["final_correct"]).sum())
    out = []
    for g, grp in per.groupby("group"):
        wrong = int((~grp["final_correct"]).sum())
        out.append(dict(group=g, examples=len(grp), final_errors=wrong, error_rate=wrong / len(grp),
                        share_of_examples=len(grp) / len(per), share_of_errors=wrong / errors if errors else float("nan")))
    return pd.DataFrame(out)


def reliability_plot(table: pd.DataFrame, path: Path, *, title: str, ece_value: float) -> Path:
    """The reliability diagram: accuracy per confidence bin against the diagonal, bin sizes beneath."""
    from rlm_rig.experiments.analysis.render import figure, save

    fig = figure(5.5, 5.5)
    ax = fig.add_subplot(2, 1, 1)
    mids = (table["lo"] + table["hi"]) / 2
    width = float(table["hi"].iloc[0] - table["lo"].iloc[0])
    ax.bar(mids, table["accuracy"].fillna(0), width=width * 0.9, edgecolor="k", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.scatter(table["mean_confidence"], table["accuracy"], color="C3", zorder=3, s=12, label="bin: (mean confidence, accuracy)")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy of replies", title=f"{title}  (ECE {ece_value:.3f})")
    ax.legend(fontsize=7, loc="upper left")
    ax2 = fig.add_subplot(2, 1, 2)
    ax2.bar(mids, table["n"], width=width * 0.9, color="C7")
    ax2.set(xlim=(0, 1), xlabel="worker confidence (probability of its reply)", ylabel="replies")
    return save(fig, path)
