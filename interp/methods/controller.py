"""The controller's side: teacher-force its recorded conversation, and ask which cell output its answer reads.

Everything here is a thin specialisation of the worker's machinery (TransformerLens-style: one generic
patcher, task-specific inputs):

- a controller **pair** is an `interp.data.pairs.Pair`: the clean conversation, and the same conversation with
  one number a cell output told the controller edited by +/-1 (a per-chunk sub_call value, ``chunk_value``, or a
  printed total equal to the final answer, ``total``), of equal token length; the answer turn is teacher-forced
  up to the final number, and the metric is logit(final) - logit(final +/- 1), the answer a controller that
  sums what it was told would give. Attribution (`methods.attribution.attribute_pair`), the exact follow-up
  (`exact_sites`, the nnsight path) and their agreement (`compare`) then run unchanged;
- **per cell output**: the token map summed over each cell output's tokens and over each told value's tokens,
  and an exact patch of a whole cell output's residual per layer next to that sum;
- **probes** (`methods.probes.probe_layer`): the residual stream at each told value's token and at the token
  after it, against the value;
- **faithfulness** (`methods.faithfulness.Faithfulness`): every recorded turn teacher-forced; no controller
  backend records logprobs, so a turn is faithful when the prompt has the recorded token count (when one was
  recorded) and the replay's argmax is the recorded reply everywhere, as for schema-1 worker records. A replay
  controller's handwritten text is never the model's greedy choice: its faithfulness says how far from the
  model's own behaviour the teacher-forced text is (``mean_logprob``, ``argmax_agreement``), which bounds what
  the study can claim about the model.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import torch

from rlm_rig.interp._nnsight import nnsight
from rlm_rig.interp.data.controller_turns import ControllerItem, ToldValue
from rlm_rig.interp.data.pairs import Pair, _positions, _targets
from rlm_rig.interp.methods.attribution import AttributionResult
from rlm_rig.interp.methods.faithfulness import Faithfulness, answer_logits
from rlm_rig.interp.model import Prompt, ReplayModel, component_output

CORRUPTIONS = ("chunk_value", "total")


class TokenizerMismatchError(ValueError):
    """The replay model renders the conversation to another token count than the controller recorded."""


def answer_prefix(item: ControllerItem) -> str:
    """The answer turn up to the final number (what is teacher-forced before the metric is read)."""
    ans, fa = item.answer, item.final_answer
    k = ans.rfind(fa)
    num = str(item.final_value)
    if k >= 0 and fa.find(num) >= 0:
        return ans[: k + fa.find(num)]
    return ans[: ans.rfind(num)]


def token_span(prompt: Prompt, message: int, start: int, end: int) -> list[int]:
    base = prompt.content_starts[message]
    return [] if base is None else prompt.token_span(base + start, base + end)


def check_tokenizer(model: ReplayModel, items: list[ControllerItem]) -> None:
    """A model whose tokenizer is not the controller's renders another prompt length than the run recorded: one
    line (exit 2 at the CLI). A replay controller recorded no tokens (its text was written), so any model may
    teacher-force it."""
    for it in items:
        if it.replayed:
            continue
        for t in it.turns:
            if t.prompt_tokens:
                n = len(model.render(it.messages[: t.n_messages]).ids)
                if n != t.prompt_tokens:
                    raise TokenizerMismatchError(
                        f"{model.name}'s tokenizer does not match the run's controller {it.controller!r}: turn "
                        f"{t.index} of {it.sample} recorded {t.prompt_tokens} prompt tokens, {model.name} renders {n}")
                break


def _edit(item: ControllerItem, tv: ToldValue, new: int) -> list[dict[str, str]]:
    msgs = copy.deepcopy(item.messages)
    c = msgs[tv.message]["content"]
    msgs[tv.message]["content"] = c[: tv.start] + str(new) + c[tv.end:]
    return msgs


def _groups(prompt: Prompt, item: ControllerItem) -> dict[str, list[int]]:
    """Token groups of the conversation: each cell output (``cell{i}``), each told value (``value{sub_call}``)
    and the printed totals (``total{i}``)."""
    g: dict[str, list[int]] = {}
    for co in item.cells:
        g[f"cell{co.cell}"] = token_span(prompt, co.message, co.start, co.end)
        for tv in co.values:
            g[f"value{tv.sub_call}"] = token_span(prompt, tv.message, tv.start, tv.end)
        if co.total is not None:
            g[f"total{co.cell}"] = token_span(prompt, co.total.message, co.total.start, co.total.end)
    return g


def _targets_of(item: ControllerItem, kind: str) -> list[tuple[ToldValue, int]]:
    if kind == "chunk_value":
        return [(tv, co.cell) for co in item.cells for tv in co.values]
    if kind == "total":
        return [(co.total, co.cell) for co in item.cells if co.total is not None]
    raise ValueError(f"unknown controller corruption {kind!r}; choose from {list(CORRUPTIONS)}")


def build_pair(model: ReplayModel, item: ControllerItem, tv: ToldValue, cell: int, kind: str,
               clean: Prompt | None = None) -> Pair | None:
    """The pair that edits one told number by +1 (else -1): equal token length and a final token that differs,
    or None."""
    clean = clean or model.render(item.messages)
    prefix = answer_prefix(item)
    groups = _groups(clean, item)
    for delta in (1, -1):
        if tv.value + delta < 0:
            continue
        corrupt = model.render(_edit(item, tv, tv.value + delta))
        if len(corrupt.ids) != len(clean.ids) or corrupt.ids == clean.ids:
            continue
        tg = _targets(model, prefix, str(item.final_value), str(item.final_value + delta))
        if tg is None:
            continue
        forced, ct, xt = tg
        clean_ids, corrupt_ids = list(clean.ids) + forced, list(corrupt.ids) + forced
        pos = _positions(clean_ids, corrupt_ids, groups.get(f"cell{cell}", []), len(clean.ids))
        if not pos:
            continue
        pos.update({k: v for k, v in groups.items() if v})
        name = f"value{tv.sub_call}" if kind == "chunk_value" else f"total{cell}"
        return Pair(pair_id=f"{item.sample}:{name}", run=item.run, sample=item.sample, sub_call=tv.sub_call,
                    corruption=kind, description=f"cell {cell}: {tv.value} -> {tv.value + delta}",
                    clean_ids=clean_ids, corrupt_ids=corrupt_ids, clean_target=str(item.final_value),
                    corrupt_target=str(item.final_value + delta), clean_token=ct, corrupt_token=xt,
                    prompt_len=len(clean.ids), positions=pos, chunk=item.sample, answer_prefix_ids=list(forced))
    return None


def build_pairs(model: ReplayModel, items: list[ControllerItem], *, n_pairs: int, corruptions: list[str],
                seed: int = 0) -> tuple[list[Pair], int]:
    """Up to `n_pairs` pairs spread over the samples: each round gives every sample at most one more pair, its
    kinds alternating (pairs of one conversation are not independent). Returns the pairs and how many edits
    kept no equal token length."""
    import random

    rng = random.Random(seed)
    todo = {}
    for i, it in enumerate(items):  # kinds interleaved, each sample starting at another one
        per = [[(tv, cell, kind) for tv, cell in _targets_of(it, kind)] for kind in corruptions]
        for p in per:
            rng.shuffle(p)
        per = per[i % len(per):] + per[: i % len(per)]
        todo[it.sample] = [c for k in range(max(map(len, per), default=0)) for p in per if k < len(p) for c in [p[k]]]
    rendered: dict[str, Prompt] = {}
    pairs: list[Pair] = []
    failed = 0
    while len(pairs) < n_pairs and any(todo.values()):
        for it in items:
            while todo[it.sample] and len(pairs) < n_pairs:
                tv, cell, kind = todo[it.sample].pop(0)
                p = build_pair(model, it, tv, cell, kind, rendered.setdefault(it.sample, model.render(it.messages)))
                if p is not None:
                    pairs.append(p)
                    break
                failed += 1
    return pairs, failed


def cell_rows(res: AttributionResult) -> list[dict]:
    """Per (component, layer) and token group (each cell output, told value, printed total, and everything else):
    the attribution summed over the group's tokens, its |.| sum and its share of the layer's |attribution|."""
    p = res.pair
    groups = {k: v for k, v in p.positions.items() if k.startswith(("cell", "value", "total")) and v}
    in_cells = sorted({t for k, v in groups.items() if k.startswith("cell") for t in v})
    rows = []
    for c, a in res.attr.items():
        for li in range(a.shape[0]):
            row = a[li].double()
            tot = float(row.abs().sum()) or float("nan")
            rest = [t for t in range(len(row)) if t not in set(in_cells)]
            for name, toks in list(groups.items()) + [("outside_cells", rest)]:
                v = row[toks]
                rows.append(dict(pair=p.pair_id, sample=p.sample, corruption=p.corruption, direction=res.direction,
                                 component=c, layer=li, group=name, kind=name.rstrip("0123456789") or name,
                                 n_tokens=len(toks), attr_sum=float(v.sum()), attr_abs_sum=float(v.abs().sum()),
                                 abs_share=float(v.abs().sum()) / tot, denominator=res.denominator,
                                 edited=bool(set(toks) & set(p.positions.get("edit", [])))))
    return rows


def cell_exact_rows(model: ReplayModel, res: AttributionResult, layers: list[int], *, batch_size: int = 8
                    ) -> list[dict]:
    """Exact patching of each whole cell output's residual stream at `layers` (the nnsight path), beside the
    attribution summed over its tokens: the first-order estimate of that same patch."""
    from rlm_rig.interp.methods.patching import PatchSpec, patch_pair

    from rlm_rig.interp.methods.attribution import first_difference

    p = res.pair
    lo = first_difference(p)
    cells = [k for k in p.positions if k.startswith("cell") and p.positions[k]]
    # a cell output wholly before the edit is the same in both runs: its patch is a no-op, answered 0 unrun
    specs = [PatchSpec("resid", li, k) for li in layers for k in cells if max(p.positions[k]) >= lo]
    got = {(sp.layer, sp.position): r for sp, r in zip(specs, patch_pair(model, p, specs, directions=[res.direction],
                                                                         batch_size=batch_size))}
    rows = []
    for li in layers:
        for k in cells:
            r = got.get((li, k))
            base = (r["logit_diff_corrupt"] if res.direction == "denoise" else r["logit_diff_clean"]) if r else 0.0
            rows.append(dict(pair=p.pair_id, sample=p.sample, direction=res.direction, layer=li, group=k,
                             exact=float(r["logit_diff"]) - float(base) if r else 0.0, computed=r is not None,
                             attr_sum=float(res.attr["resid"][li, p.positions[k]].double().sum())
                             if "resid" in res.attr else float("nan"), denominator=res.denominator))
    return rows


@torch.no_grad()
def told_value_activations(model: ReplayModel, item: ControllerItem, layers: list[int]
                           ) -> tuple[dict[int, torch.Tensor], list[dict]]:
    """The residual stream (decoder layer output) at each told value's last token (``value``) and at the token
    after it (``next``), in one nnsight trace of the conversation: {layer: [rows, d]} and the rows' labels."""
    prompt = model.render(item.messages)
    rows, idx = [], []
    for tv in item.told:
        toks = token_span(prompt, tv.message, tv.start, tv.end)
        if not toks:
            continue
        for pos, t in (("value", toks[-1]), ("next", toks[-1] + 1)):
            if t < len(prompt.ids):
                rows.append(dict(sample=item.sample, sub_call=tv.sub_call, value=tv.value, position=pos, token=t))
                idx.append(t)
    if not idx:
        return {}, []
    env = model.layers_env()
    where = torch.tensor(idx)
    with model.nn.trace(model.batch([prompt.ids]), logits_to_keep=1, use_cache=False):
        saved = nnsight.save([component_output(env[li], "resid")[0, where.to(model.device)].float().cpu()
                              for li in layers])
    return dict(zip(layers, saved)), rows


def probe_told_values(model: ReplayModel, items: list[ControllerItem], layers: list[int], *, test_size: float,
                      c: float, seed: int, n_splits: int) -> Any:
    """One linear probe per (layer, position) for the told value, split by sample (the values of one
    conversation share its context) when there are 4 samples or more, else by told value."""
    import numpy as np
    import pandas as pd

    from rlm_rig.interp.methods.probes import probe_layer

    acts: dict[int, list[torch.Tensor]] = {li: [] for li in layers}
    labels: list[dict] = []
    for it in items:
        got, rows = told_value_activations(model, it, layers)
        for li in got:
            acts[li].append(got[li])
        labels += rows
    lab = pd.DataFrame(labels)
    if lab.empty:
        raise ValueError("no told value could be located in the controller's tokens; nothing to probe")
    by_sample = lab["sample"].nunique() >= 4
    groups = (lab["sample"] if by_sample else lab["sample"] + ":" + lab["sub_call"].astype(str)).to_numpy()
    out = []
    for li in layers:
        x = torch.cat(acts[li]).numpy()
        for pos in ("value", "next"):
            m = (lab["position"] == pos).to_numpy()
            if len(np.unique(groups[m])) < 4:
                continue
            r = probe_layer(x[m], lab["value"].to_numpy()[m], groups[m], None, layer=li, test_size=test_size, c=c,
                            seed=seed, n_splits=n_splits)
            out.append(dict(asdict(r), position=pos, split_by="sample" if by_sample else "told_value"))
    return pd.DataFrame(out)


def turn_faithfulness(model: ReplayModel, item: ControllerItem, *, max_dlogprob: float) -> list[dict]:
    """Every recorded turn teacher-forced (see the module docstring): Faithfulness rows plus the mean
    teacher-forced logprob of the reply and the share of its tokens that are the replay's argmax."""
    out = []
    for t in item.turns:
        prompt_ids = model.render(item.messages[: t.n_messages]).ids if t.n_messages <= len(item.messages) else []
        if not prompt_ids:
            continue
        ans = model.encode_answer(t.response)
        if not ans:
            continue
        logits = answer_logits(model, prompt_ids, ans)
        lp = torch.log_softmax(logits, -1)
        target = torch.tensor(ans, device=lp.device)
        mine = lp[torch.arange(len(ans), device=lp.device), target]
        agree = logits.argmax(-1) == target
        wrong = (~agree).nonzero()
        first = int(wrong[0, 0]) if len(wrong) else None
        rec = 0 if item.replayed else t.prompt_tokens
        pmatch = None if not rec else rec == len(prompt_ids)
        f = Faithfulness(item.sample, t.index, "retokenized", len(ans), len(prompt_ids), rec, pmatch, float("nan"),
                         float("nan"), first, pmatch is not False and first is None,
                         float(lp[first].max() - mine[first]) if first is not None else float("nan"))
        row = f.as_row()
        row.pop("sub_call")  # a turn, not a sub_call (tables keyed by sub_call must not pick it up)
        out.append(dict(row, turn=t.index, controller=item.controller, replayed=item.replayed,
                        mean_logprob=float(mine.mean()), argmax_agreement=float(agree.float().mean()),
                        max_dlogprob_bound=max_dlogprob))
    return out
