"""The controller's side of information loss: were the sub_call answers right but the total wrong?

Assumptions (the function checks what it can and labels the rest):
1. The question is a count that adds up over chunks, and the relevant sub_calls are the
   controller's own (top-level) sub_calls whose instruction is a roll count; others are ignored.
   A nested-RLM sub_call records no worker messages, so its chunk gold must come from a gold map.
2. Per-chunk gold is known: a mapping (sample, sub_call) -> int, or a function of the sub_call
   (default: the regex proxy `rolls.chunk_gold`).
3. The chunks are disjoint and cover the document; overlap is detected from chunk_start/chunk_end,
   coverage as (sum of chunk lengths) / doc_chars.
Categories, in this order: no_sub_calls, no_gold, worker_error (some sub_call answer != its gold),
aggregation_error (every answer right but final != their sum), coverage_error (final == sum of
answers, but != the sample's gold, e.g. chunks missed text), correct_chain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from rlm_rig.interp.data.rolls import is_roll_count_instruction, parse_count
from rlm_rig.interp.data.selection import SubCallItem, load_samples, load_trajectory, locate_chunk, trajectory_paths
from rlm_rig.interp.methods.capture import attach_gold


# long: per sample, the three verdicts (worker miscount, aggregation, both) computed side by side from the same items
def diagnose_aggregation(
    run_dir: str | Path,
    chunk_gold: dict[tuple[str, int], int] | Callable[[SubCallItem], int | None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (per-sample table, per-sub_call table)."""
    run_dir = Path(run_dir)
    samples = load_samples(run_dir)
    per_sub: list[dict] = []
    by_sample: dict[str, list[SubCallItem]] = {}
    for path in trajectory_paths(run_dir):
        traj = load_trajectory(path)
        for sc in traj.sub_calls:  # the controller's own calls: worker calls or nested RLMs
            if not is_roll_count_instruction(sc.instruction):
                continue
            msgs = sc.messages or []
            it = SubCallItem(run=traj.run_id, sample=path.stem, sub_call=sc.id, messages=msgs,
                             instruction=sc.instruction, response=sc.response, chunk_start=sc.chunk_start,
                             chunk_end=sc.chunk_end, chunk_chars=sc.chunk_chars,
                             chunk_loc=locate_chunk(msgs, sc.instruction, sc.chunk_chars) if msgs else None,
                             depth=sc.depth)
            if callable(chunk_gold):
                it.gold, it.gold_source = chunk_gold(it), "function"
            else:
                attach_gold(it, chunk_gold)
            by_sample.setdefault(it.sample, []).append(it)
            wc = parse_count(it.response)
            per_sub.append(dict(sample=it.sample, sub_call=it.sub_call, nested=sc.nested_trajectory is not None,
                                chunk_start=it.chunk_start, chunk_end=it.chunk_end, gold=it.gold,
                                gold_source=it.gold_source, worker_count=wc,
                                worker_correct=None if it.gold is None else wc == it.gold))
    rows = []
    for path in trajectory_paths(run_dir):
        key = path.stem
        traj = load_trajectory(path)
        items = by_sample.get(key, [])
        row = samples.get(key, {})
        final = parse_count(traj.final_answer)
        sample_gold = parse_count(str(row["gold"])) if row.get("gold") is not None else None
        answers = [parse_count(i.response) for i in items]
        golds = [i.gold for i in items]
        spans = sorted((i.chunk_start, i.chunk_end) for i in items if i.chunk_start is not None and i.chunk_end is not None)
        overlap = any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
        covered = sum(e - s for s, e in spans)
        coverage = covered / traj.doc_chars if traj.doc_chars else float("nan")
        sum_ans = sum(a for a in answers if a is not None) if items else None
        if not items:
            cat = "no_sub_calls"
        elif any(g is None for g in golds):
            cat = "no_gold"
        elif any(a != g for a, g in zip(answers, golds)):
            cat = "worker_error"
        elif final != sum_ans:
            cat = "aggregation_error"
        elif sample_gold is not None and final != sample_gold:
            cat = "coverage_error"
        else:
            cat = "correct_chain"
        rows.append(dict(
            sample=key, question_type=row.get("question_type"), score=row.get("score"), n_sub_calls=len(items),
            n_worker_wrong=sum(1 for a, g in zip(answers, golds) if g is not None and a != g),
            sum_worker_answers=sum_ans, sum_chunk_gold=sum(golds) if golds and None not in golds else None,
            final_answer=final, sample_gold=sample_gold, chunk_overlap=overlap, coverage=coverage, category=cat,
        ))
    return pd.DataFrame(rows), pd.DataFrame(per_sub)
