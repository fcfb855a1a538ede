"""The information-loss ledger: where, between the document and the score, each lost piece of gold went.

For every example whose sample row records where its gold sits (``extra.gold_spans``: the generated
edge-case sets and the counting set write it), each lost piece gets exactly one stage, in this order:

- ``never_sent``: its span lies in no chunk the program sent (``chunk_start``/``chunk_end``, the
  utilization spans);
- ``represented_not_said``: a chunk holding it was read, the reply was wrong, and a held-out probe on
  the worker's activations decodes the right value (``interp.methods.probes.heldout_predictions``);
- ``misread``: the same, but the probe does not decode it;
- ``read_wrong_no_probe``: the same, with no probe result for that chunk: the ledger does not guess
  between the two stages above (probes exist for counts only, so a needle sweep always lands here);
- ``mis_aggregated``: the replies had it, but the controller's final answer lost it (the aggregation
  check of experiments/analysis/failures.py, per piece);
- ``format``: the final answer's text had it, but the scorer read something else.

Two kinds of examples:

- **value** (a needle, a JSON field, a multi-hop value): one piece. A failed example contributes one row
  with ``loss = 1 - score``, so the ledger's losses add up to the run's total loss exactly.
- **count** (the counting set, ``extra.k``): every gold span is one item. Signed contributions, in items:
  ``never_sent`` = -(items in no chunk), each read chunk = reply - its gold, ``mis_aggregated`` = final as
  written - sum of replies, ``format`` = final as scored - final as written. They add up to
  (final as scored) - gold exactly when chunks do not overlap (``overlap`` marks the rows where they do);
  ``loss`` is each contribution's size. An unparsed reply or final counts as 0, as the scorer does.

The program's view of a reply is `failures.program_reply` (the resplit policy's combined halves).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rlm_rig.experiments.analysis.failures import model_sub_calls, program_reply
from rlm_rig.records.answers import as_int, find_int

STAGES = ("never_sent", "represented_not_said", "misread", "read_wrong_no_probe", "mis_aggregated", "format")
COLUMNS = ["run", "sample", "dataset", "kind", "piece", "position", "stage", "loss", "delta", "sub_call", "overlap"]
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
ProbeMap = dict[tuple[str, int], int]


class NoGoldPositions(ValueError):
    """The run's sample rows record no gold positions: no ledger can be built from it."""


@dataclass(frozen=True)
class Chunk:
    id: int
    start: int
    end: int
    reply: str | None


def gold_spans(row: Any) -> list[tuple[int, int]] | None:
    """The row's gold spans; None when it records none, [] for a count example with nothing to count."""
    spans = (row.extra or {}).get("gold_spans")
    return None if spans is None else [(int(s), int(e)) for s, e in spans]


def has_gold(row: Any) -> bool:
    """A count example may have no gold item (k = 0); a value example needs the span of its value."""
    spans = gold_spans(row)
    return spans is not None and (bool(spans) or "k" in (row.extra or {}))


def chunks(traj: Any) -> list[Chunk]:
    """The chunks the controller's program sent (root level, the resplit halves folded in), in document order."""
    out = [Chunk(sc.id, sc.chunk_start, sc.chunk_end, program_reply(sc)) for sc in model_sub_calls(traj)
           if sc.chunk_start is not None and sc.chunk_end is not None and sc.error is None]
    return sorted(out, key=lambda c: (c.start, c.id))


def says(text: str | None, gold: str) -> bool:
    """Does ``text`` state the number ``gold`` (as the generated sets' scorer compares numbers)?"""
    def same(a: str) -> bool:
        try:
            return float(a) == float(gold)
        except ValueError:
            return a == gold
    return bool(text) and any(same(n) for n in _NUM.findall(str(text).replace(",", "")))


def _read_stage(sample: str, chunk_ids: list[int], gold: Any, probe: ProbeMap | None) -> str:
    """represented_not_said / misread when a probe result exists for one of the chunks, else read_wrong_no_probe."""
    preds = [probe[(sample, i)] for i in chunk_ids if probe and (sample, i) in probe]
    if not preds:
        return "read_wrong_no_probe"
    return "represented_not_said" if any(str(p) == str(gold).strip() for p in preds) else "misread"


def value_rows(row: Any, traj: Any, sample: str, probe: ProbeMap | None) -> list[dict[str, Any]]:
    """One row for a failed value example (none for a solved one)."""
    loss = 1.0 - float(row.score)
    if loss <= 0:
        return []
    (s, e), gold = gold_spans(row)[0], str(row.gold).strip()  # type: ignore[index]
    holding = [c for c in chunks(traj) if c.start <= s and e <= c.end]
    if not holding:
        stage = "never_sent"
    elif not any(says(c.reply, gold) for c in holding):
        stage = _read_stage(sample, [c.id for c in holding], gold, probe)
    else:
        stage = "format" if says(row.answer, gold) else "mis_aggregated"
    said = [c.id for c in holding if says(c.reply, gold)] or [c.id for c in holding]
    return [dict(kind="value", piece=0, position=s / max(1, traj.doc_chars), stage=stage, loss=loss,
                 delta=math.nan, sub_call=said[0] if said else None, overlap=False)]


def count_rows(row: Any, traj: Any, sample: str, probe: ProbeMap | None) -> list[dict[str, Any]]:
    """Signed contributions of a count example (module doc); rows with a zero contribution are left out."""
    spans, cs, n = gold_spans(row) or [], chunks(traj), max(1, traj.doc_chars)
    overlap = any(b.start < a.end for a, b in zip(cs, cs[1:]))
    out: list[dict[str, Any]] = []
    for piece, (s, e) in enumerate(spans):
        if not any(c.start <= s and e <= c.end for c in cs):
            out.append(dict(stage="never_sent", piece=piece, position=s / n, delta=-1.0, sub_call=None))
    replies = []
    for c in cs:
        inside = [s for s, e in spans if c.start <= s and e <= c.end]
        r = find_int(c.reply, words=True) or 0
        replies.append(r)
        if r != len(inside):
            pos = float(np.mean(inside)) / n if inside else (c.start + c.end) / 2 / n
            out.append(dict(stage=_read_stage(sample, [c.id], len(inside), probe), piece=None, position=pos,
                            delta=float(r - len(inside)), sub_call=c.id))
    scored = as_int(row.parsed)
    scored = 0 if scored is None else scored
    written = find_int(row.answer, words=True)  # read as the replies are
    written = scored if written is None else written
    for stage, d in (("mis_aggregated", written - sum(replies)), ("format", scored - written)):
        if d:
            out.append(dict(stage=stage, piece=None, position=math.nan, delta=float(d), sub_call=None))
    return [dict(kind="count", loss=abs(r["delta"]), overlap=overlap, **r) for r in out]


def build_ledger(run: Any, probe: ProbeMap | None = None) -> pd.DataFrame:
    """The ledger of one loaded run (`metrics.load_run`); NoGoldPositions when no row records gold positions."""
    rows: list[dict[str, Any]] = []
    with_gold = 0
    for row in run.rows:
        traj = run.trajectories.get(row.id)
        if not has_gold(row) or traj is None:
            continue
        with_gold += 1
        sample = Path(row.trajectory).stem if row.trajectory else row.id
        make = count_rows if "k" in (row.extra or {}) else value_rows
        for r in make(row, traj, sample, probe):
            rows.append(dict(run=run.name, sample=row.id, dataset=row.dataset, **r))
    if not with_gold:
        raise NoGoldPositions(f"{run.path}: no sample records gold positions (extra.gold_spans); the ledger needs "
                              "a generated set (needle-sweep, json-haystack, multi-needle, decoys, multi-hop) or the "
                              "counting set, run by this version of the rig")
    return pd.DataFrame(rows, columns=COLUMNS)


def total_loss(run: Any) -> dict[str, float]:
    """What the ledger must add up to, from the sample rows alone: value examples' sum of (1 - score) and
    count examples' sum of (final as scored - gold)."""
    value = count = 0.0
    for row in run.rows:
        if not has_gold(row) or run.trajectories.get(row.id) is None:
            continue
        if "k" in (row.extra or {}):
            count += (as_int(row.parsed) or 0) - int(row.gold)
        else:
            value += 1.0 - float(row.score)
    return {"value_loss": value, "count_signed_error": count}


def by_position(ledger: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Loss per stage per position bin (rows without a position, e.g. a count's aggregation, in bin 'none')."""
    df = ledger.copy()
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.floor(df["position"].fillna(-1).to_numpy() * bins).astype(int), -1, bins - 1)  # 0.6 -> 0.6-0.7
    df["bin"] = [("none" if math.isnan(p) else f"{edges[i]:.1f}-{edges[i + 1]:.1f}") for p, i in zip(df["position"], idx)]
    table = df.pivot_table(index="bin", columns="stage", values="loss", aggfunc="sum", fill_value=0.0)
    labels = [f"{edges[i]:.1f}-{edges[i + 1]:.1f}" for i in range(bins)] + (["none"] if "none" in table.index else [])
    return table.reindex(index=labels, columns=[s for s in STAGES if s in table.columns], fill_value=0.0)


def plot_ledger(ledger: pd.DataFrame, path: Path, *, title: str = "Loss ledger", bins: int = 10) -> Path:
    """Stacked bars: loss per stage against the gold's position in the document."""
    from rlm_rig.experiments.analysis.render import figure, save

    table = by_position(ledger, bins)
    fig = figure(8.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    bottom = np.zeros(len(table))
    for stage in table.columns:
        ax.bar(table.index, table[stage].to_numpy(), bottom=bottom, label=stage, color=f"C{STAGES.index(stage)}")
        bottom += table[stage].to_numpy()
    ax.set_xlabel("gold position in the document (fraction of its characters)")
    ax.set_ylabel("lost gold (examples or items)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=45)
    if len(table.columns):
        ax.legend(fontsize=8)
    return save(fig, path)
