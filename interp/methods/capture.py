"""Capture worker activations for recorded sub_calls: residual stream (and attention/MLP outputs)
at chosen layers and token positions, streamed to safetensors shards with a Parquet index.

Positions: ``last`` = the last prompt token (where the answer is about to be produced);
``answer`` = the first `max_answer_tokens` tokens of the recorded answer, teacher-forced;
``number`` = the first token of the number the worker answered (what `parse_count` reads).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rlm_rig.interp._nnsight import nnsight
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlm_rig.interp.config import InterpConfig
from rlm_rig.interp.model import ReplayModel, component_output, ordered_sites
from rlm_rig.interp.methods.replay import ReplayResult, agreement_summary, replay_one
from rlm_rig.interp.data.rolls import chunk_gold, first_number_span, parse_count
from rlm_rig.interp.methods.faithfulness import FAITHFULNESS_FILE, Faithfulness, check_one, summary as faith_summary
from rlm_rig.interp.data.selection import NothingToStudyError, SubCallItem
from rlm_rig.interp.data.shards import ShardWriter

REPLAY_FILE = "replay.parquet"


@dataclass
class Prepared:
    item: SubCallItem
    prompt_ids: list[int]
    seq: list[int]
    positions: list[tuple[str, int, int]]  # (label, token index in seq, answer offset or -1)


def attach_gold(item: SubCallItem, gold_map: dict[tuple[str, int], int] | None = None) -> SubCallItem:
    """Fill item.gold: a user-given gold file wins; else the regex proxy over the located chunk."""
    if gold_map and (item.sample, item.sub_call) in gold_map:
        item.gold, item.gold_source = gold_map[(item.sample, item.sub_call)], "gold_file"
    elif item.chunk_text is not None:
        context = "\n".join(m["content"] for m in item.messages if isinstance(m.get("content"), str))
        g = chunk_gold(item.chunk_text, item.instruction, context)
        if g is not None:
            item.gold, item.gold_source = g, "regex_roll_lines"
    return item


def answer_tokens(model: ReplayModel, item: SubCallItem) -> tuple[list[int], str, list[tuple[int, int]]]:
    """(ids, text, char offsets) of the worker's answer: vLLM's recorded ids when the run has them
    (teacher forcing the very tokens that fed the controller), else the response re-tokenized."""
    if item.token_ids:
        ids = list(item.token_ids)
        offsets, prev = [], ""
        for k in range(len(ids)):
            cur = model.tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
            offsets.append((len(prev), len(cur)))
            prev = cur
        return ids, prev, offsets
    enc = model.tokenizer(item.response or "", add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), item.response or "", [tuple(o) for o in enc["offset_mapping"]]


def prepare(model: ReplayModel, item: SubCallItem, cfg: InterpConfig) -> Prepared | None:
    """Token ids and positions to read for one sub_call; None when it is over the length cap."""
    prompt = model.render(item.messages)
    if cfg.max_prompt_tokens is not None and len(prompt.ids) > cfg.max_prompt_tokens:
        return None
    seq = list(prompt.ids)
    positions: list[tuple[str, int, int]] = []
    if "last" in cfg.capture_positions:
        positions.append(("last", len(seq) - 1, -1))
    need_answer = any(p in cfg.capture_positions for p in ("answer", "number"))
    if need_answer and item.response:
        ans_ids, answer_text, offsets = answer_tokens(model, item)
        keep = cfg.max_answer_tokens
        num_tok: int | None = None
        span = first_number_span(answer_text)
        if span is not None and "number" in cfg.capture_positions:
            hits = [i for i, (s, e) in enumerate(offsets) if s < span[1] and e > span[0]]
            num_tok = hits[0] if hits else None
            if num_tok is not None:
                keep = max(keep, num_tok + 1)
        ans_ids = ans_ids[:keep]
        base = len(seq)
        seq += ans_ids
        if "answer" in cfg.capture_positions:
            positions += [("answer", base + j, j) for j in range(min(len(ans_ids), cfg.max_answer_tokens))]
        if num_tok is not None:
            # the activation that *predicts* the number is one position earlier than the number token
            positions.append(("number", base + num_tok - 1, num_tok - 1))
    if not positions:
        return None
    return Prepared(item, list(prompt.ids), seq, positions)


def _batches(prepared: list[Prepared], max_batch: int, max_tokens: int) -> Iterable[list[Prepared]]:
    prepared = sorted(prepared, key=lambda p: len(p.seq))
    cur: list[Prepared] = []
    for p in prepared:
        longest = max([len(p.seq)] + [len(c.seq) for c in cur])
        if cur and (len(cur) + 1 > max_batch or longest * (len(cur) + 1) > max_tokens):
            yield cur
            cur = []
        cur.append(p)
    if cur:
        yield cur


@torch.no_grad()
def capture_batch(
    model: ReplayModel, batch: list[Prepared], layers: list[int], components: list[str]
) -> dict[tuple[str, int], torch.Tensor]:
    """One forward through nnsight; returns {(component, layer): [n_positions_total, d]} in
    batch order (item by item, positions in `Prepared.positions` order)."""
    inputs = model.batch([p.seq for p in batch])
    bi = torch.tensor([i for i, p in enumerate(batch) for _ in p.positions], device=model.device)
    ti = torch.tensor([t for p in batch for (_, t, _) in p.positions], device=model.device)
    sites = ordered_sites(layers, components)
    env = model.layers_env()
    with model.nn.trace(inputs, logits_to_keep=1, use_cache=False):  # logits are not read: skip the LM head at every position
        saved = nnsight.save([component_output(env[li], c)[bi, ti] for li, c in sites])
    return {(c, li): t for (li, c), t in zip(sites, saved)}


@torch.no_grad()
def plain_forward(model: ReplayModel, batch: list[Prepared]) -> None:
    """The same forward without nnsight, the baseline for capture overhead (bench)."""
    model.hf(**model.batch([p.seq for p in batch]), logits_to_keep=1)


def _index_rows(p: Prepared, model: ReplayModel, component: str, layer: int) -> list[dict[str, Any]]:
    it = p.item
    wc = parse_count(it.response)
    rows = []
    for label, t, off in p.positions:
        tid = p.seq[t]
        rows.append(
            dict(
                run=it.run, sample=it.sample, sub_call=it.sub_call, question_type=it.question_type, score=it.score,
                chunk_start=it.chunk_start, chunk_end=it.chunk_end, chunk_chars=it.chunk_chars,
                gold=it.gold, gold_source=it.gold_source, worker_answer=it.response, worker_count=wc,
                worker_correct=None if it.gold is None or wc is None else wc == it.gold,
                component=component, layer=layer, position=label, token_index=t, answer_offset=off,
                token_id=tid, token=model.tokenizer.decode([tid]), seq_len=len(p.seq),
            )
        )
    return rows


@dataclass
class CaptureSummary:
    out_dir: Path
    n_sub_calls: int
    n_skipped: int
    n_rows: int
    shards: list[str]
    replay: dict[str, Any]


# long: the capture loop in one pass per sub_call (render, teacher-forced forward, faithfulness, saved sites), streaming to shards
def run_capture(
    model: ReplayModel,
    items: Iterable[SubCallItem],
    out_dir: str | Path,
    cfg: InterpConfig,
    *,
    gold_map: dict[tuple[str, int], int] | None = None,
    replay: bool | None = None,
    tally: Counter | None = None,
    run_dir: str | Path | None = None,
) -> CaptureSummary:
    """Capture every item, streaming: at most `capture_batch_size` sub_calls are in memory at once
    beyond the current shard buffer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = model.resolve_layers(cfg.layers)
    components = list(dict.fromkeys(cfg.components))
    save_dtype = getattr(torch, cfg.save_dtype)
    do_replay = cfg.replay if replay is None else replay
    replays: list[ReplayResult] = []
    faith: list[Faithfulness] = []
    tally = Counter() if tally is None else tally
    n_done = n_skip = 0
    pending: list[Prepared] = []

    def run_pending(writer: ShardWriter) -> None:
        nonlocal n_done
        for batch in _batches(pending, cfg.capture_batch_size, cfg.max_batch_tokens):
            acts = capture_batch(model, batch, layers, components)
            for (c, li), t in acts.items():
                rows = [r for p in batch for r in _index_rows(p, model, c, li)]
                writer.add(f"{c}.{li}", t, rows)
            if do_replay:
                for p in batch:  # the greedy text check only where no recorded ids allow teacher forcing
                    if p.item.response is not None and not p.item.token_ids:
                        replays.append(
                            replay_one(model, p.item.sample, p.item.sub_call, p.prompt_ids, p.item.response,
                                       cfg.max_new_tokens, truncated=p.item.truncated,
                                       completion_tokens=p.item.completion_tokens or None)
                        )
            n_done += len(batch)
        pending.clear()

    with ShardWriter(out, shard_bytes=int(cfg.shard_mb * 2**20), dtype=save_dtype) as writer:
        for item in items:
            attach_gold(item, gold_map)
            p = prepare(model, item, cfg)
            if p is None:
                n_skip += 1
                tally["too_long"] += 1
                continue
            if item.response is not None:
                f = check_one(model, item, max_dlogprob=cfg.faithful_max_dlogprob, require_argmax=cfg.faithful_require_argmax, prompt_ids=p.prompt_ids)
                faith.append(f)
                if cfg.faithful_only and not f.faithful:
                    n_skip += 1
                    tally["unfaithful"] += 1
                    continue
            pending.append(p)
            if len(pending) >= cfg.capture_batch_size * 4:  # a little look-ahead for length bucketing
                run_pending(writer)
        run_pending(writer)
    if n_done == 0:
        raise NothingToStudyError("sub_calls to capture", run_dir or "the run", tally)
    shards, n_rows = writer.shards, writer.n_rows
    pq.write_table(pa.Table.from_pylist([f.as_row() for f in faith]) if faith else pa.table({}),
                   str(out / FAITHFULNESS_FILE))
    summary = agreement_summary(replays) if do_replay else {}
    if do_replay:
        pq.write_table(pa.Table.from_pylist([r.as_row() for r in replays]) if replays else pa.table({}),
                       str(out / REPLAY_FILE))
    meta = {
        "model": model.name, "dtype": str(model.dtype), "layers": layers, "components": components,
        "positions": cfg.capture_positions, "n_sub_calls": n_done, "n_skipped": n_skip, "n_rows": n_rows,
        "shards": shards, "replay": summary, "faithfulness": faith_summary(faith), "left_out": dict(tally),
    }
    (out / "capture.json").write_text(json.dumps(meta, indent=1))
    return CaptureSummary(out, n_done, n_skip, n_rows, shards, summary)
