"""The document map: where each sub_call's chunk lies in ``prompt``, what was never read.

Spans come from ``SubCallRecord.chunk_start/chunk_end`` (offsets in the items' texts joined in order for a
list/dict context, whose item and in-item offset the label names; a chunk not found verbatim in the
document has no span and is listed apart). Overlapping spans go into separate lanes so every
span stays clickable. Gaps are the complement of the union of spans (metrics.covered_chars).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rlm_rig.experiments.analysis.metrics import covered_chars

CELL_COLOURS = ["#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
VERDICT_COLOURS = {"right": "#2e9d4f", "wrong": "#d62728"}
MIN_WIDTH_PCT = 0.25  # a tiny chunk still gets a visible, clickable mark


@dataclass
class Span:
    sub_call: int
    anchor: str
    start: int
    end: int
    lane: int
    left_pct: float
    width_pct: float
    colour: str
    verdict: str | None
    label: str


@dataclass
class DocMap:
    doc_chars: int
    spans: list[Span]
    lanes: int
    gaps: list[tuple[int, int, float, float]]  # start, end, left %, width %
    covered: int
    unplaced: list[int]  # sub_calls without a span

    @property
    def coverage(self) -> float:
        return self.covered / self.doc_chars if self.doc_chars else 0.0


def build_docmap(traj: dict[str, Any], anchor: Callable[[int], str],
                 verdict: Callable[[int], str | None] = lambda _i: None) -> DocMap:
    n = int(traj.get("doc_chars") or 0)
    placed, unplaced = [], []
    for sc in traj.get("sub_calls") or []:
        s, e = sc.get("chunk_start"), sc.get("chunk_end")
        if s is None or e is None or n <= 0:
            unplaced.append(sc["id"])
        else:
            placed.append((int(s), int(e), sc))
    placed.sort(key=lambda t: (t[0], t[1]))
    lane_end: list[int] = []
    spans = []
    for s, e, sc in placed:
        lane = next((i for i, end in enumerate(lane_end) if end <= s), len(lane_end))
        if lane == len(lane_end):
            lane_end.append(e)
        else:
            lane_end[lane] = e
        v = verdict(sc["id"])
        colour = VERDICT_COLOURS[v] if v else CELL_COLOURS[int(sc.get("cell") or 0) % len(CELL_COLOURS)]
        left = 100.0 * s / n
        width = max(MIN_WIDTH_PCT, 100.0 * (e - s) / n)
        label = f"sub_call {sc['id']} (cell {sc.get('cell')}): chars {s:,}-{e:,}"
        if sc.get("chunk_item") is not None:  # a list/dict context: the item and the offset inside it
            label += f", item {sc['chunk_item']!r} at {int(sc.get('chunk_item_offset') or 0):,}"
        if v:
            label += f", worker {v}"
        spans.append(Span(sc["id"], anchor(sc["id"]), s, e, lane, left, min(width, 100.0 - left), colour, v, label))
    gaps = []
    pos = 0
    for s, e, _ in placed:
        if s > pos:
            gaps.append((pos, s))
        pos = max(pos, e)
    if n and pos < n:
        gaps.append((pos, n))
    gap_rows = [(s, e, 100.0 * s / n, 100.0 * (e - s) / n) for s, e in gaps] if n else []
    covered = covered_chars([(s, e) for s, e, _ in placed], n) if n else 0
    return DocMap(n, spans, max(1, len(lane_end)), gap_rows, covered, unplaced)
