"""Is the replay the computation that fed the controller? Teacher-forced, token by token.

A greedy re-generation compared as text (the old check) says nothing about *how close* the replay
is, and one flipped near-tie makes every later token a different computation. Here the recorded
prompt plus the worker's recorded answer ids (schema 2: vLLM's own ids, not a re-tokenization) are run
in one forward, and at every answer position the replay's logprob of the recorded token is compared
with the logprob vLLM recorded for it:

- ``max_abs_dlogprob`` / ``mean_abs_dlogprob``: |replay - recorded| over the answer tokens;
- ``first_argmax_divergence``: the first answer position whose replay argmax is not the recorded
  token (None: the replay's greedy choice is the recorded token everywhere).

Only the n answer-predicting positions go through the unembedding (n x V logits, never T x V).
Runs of schema 1 have no ids: the answer is re-tokenized (``source = "retokenized"``), the logprob
columns are NaN, and the argmax check is against that re-tokenization.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from rlm_rig.interp.model import ReplayModel
from rlm_rig.interp.data.selection import SubCallItem

FAITHFULNESS_FILE = "faithfulness.parquet"


@dataclass
class Faithfulness:
    sample: str
    sub_call: int
    source: str  # "recorded" (vLLM ids + logprobs) | "retokenized" (schema 1: text only)
    n_tokens: int
    prompt_tokens: int  # rendered by interp
    prompt_tokens_recorded: int  # vLLM's count (0: unknown)
    prompt_match: bool | None
    max_abs_dlogprob: float
    mean_abs_dlogprob: float
    first_argmax_divergence: int | None
    faithful: bool
    divergence_margin: float = float("nan")  # at the first divergence: replay's top logprob - recorded token's

    def as_row(self) -> dict:
        return asdict(self)


def answer_ids(model: ReplayModel, item: SubCallItem) -> tuple[list[int], str]:
    """The worker's answer ids: the recorded ones when the run has them, else a re-tokenization."""
    if item.token_ids:
        return list(item.token_ids), "recorded"
    return model.encode_answer(item.response or ""), "retokenized"


@torch.no_grad()
def answer_logits(model: ReplayModel, prompt_ids: list[int], ans_ids: list[int], positions: list[int] | None = None
                  ) -> torch.Tensor:
    """Logits [n, V] at the positions that predict each answer token (or at `positions` of the full
    sequence), from one forward of prompt + answer; the unembedding sees only those rows."""
    seq = list(prompt_ids) + list(ans_ids)
    ids = torch.tensor([seq], dtype=torch.long, device=model.device)
    hidden = model.hidden_states(ids)
    pos = positions if positions is not None else [len(prompt_ids) - 1 + j for j in range(len(ans_ids))]
    return model.unembed()(hidden[0, torch.tensor(pos, device=model.device)]).float()


def check_one(model: ReplayModel, item: SubCallItem, *, max_dlogprob: float, prompt_ids: list[int] | None = None,
              require_argmax: bool = False) -> Faithfulness:
    """Faithful: interp's prompt has vLLM's token count, and every recorded token's replayed logprob is within
    `max_dlogprob` nats of the recorded one (`require_argmax`: also no argmax flip). Schema-1 records (no
    logprobs) are faithful only when the replay's argmax is the re-tokenized answer everywhere."""
    prompt_ids = prompt_ids if prompt_ids is not None else model.render(item.messages).ids
    ans, source = answer_ids(model, item)
    rec_lp = item.token_logprobs if source == "recorded" else None
    n = len(ans)
    first = None
    dmax = dmean = margin = float("nan")
    if n:
        logits = answer_logits(model, prompt_ids, ans)
        lp = torch.log_softmax(logits, -1)
        target = torch.tensor(ans, device=lp.device)
        mine = lp[torch.arange(n, device=lp.device), target]
        wrong = (logits.argmax(-1) != target).nonzero()
        first = int(wrong[0, 0]) if len(wrong) else None
        if first is not None:
            margin = float(lp[first].max() - mine[first])
        if rec_lp is not None and len(rec_lp) == n:
            d = (mine.double().cpu() - torch.tensor(rec_lp, dtype=torch.float64)).abs()
            dmax, dmean = float(d.max()), float(d.mean())
    rec_pt = int(item.prompt_tokens or 0)
    pmatch = None if not rec_pt else rec_pt == len(prompt_ids)
    if dmax == dmax:  # recorded logprobs: closeness of the two distributions decides; an argmax flip is
        # reported (a near-tie: `divergence_margin`) and disqualifies only with `require_argmax`
        faithful = pmatch is not False and dmax <= max_dlogprob and (first is None or not require_argmax)
    else:  # no logprobs (schema 1, or a backend that records ids only): the replay's greedy choice must be
        # the answer everywhere
        faithful = pmatch is not False and first is None
    return Faithfulness(item.sample, item.sub_call, source, n, len(prompt_ids), rec_pt, pmatch, dmax, dmean, first,
                        faithful, margin)


def check_many(model: ReplayModel, items: Iterable[SubCallItem], *, max_dlogprob: float,
               require_argmax: bool = False) -> list[Faithfulness]:
    return [check_one(model, it, max_dlogprob=max_dlogprob, require_argmax=require_argmax)
            for it in items if it.response is not None]


def summary(rows: list[Faithfulness] | list[dict]) -> dict:
    """n, faithful share, how many had recorded ids, and the spread of the per-sub_call |Δlogprob|."""
    rs = [r if isinstance(r, dict) else r.as_row() for r in rows]
    n = len(rs)
    if not n:
        return {"n": 0}
    mx = sorted(r["max_abs_dlogprob"] for r in rs if r["max_abs_dlogprob"] == r["max_abs_dlogprob"])
    mean = [r["mean_abs_dlogprob"] for r in rs if r["mean_abs_dlogprob"] == r["mean_abs_dlogprob"]]
    divs = [r["first_argmax_divergence"] for r in rs if r["first_argmax_divergence"] is not None
            and r["first_argmax_divergence"] == r["first_argmax_divergence"]]
    return {
        "n": n,
        "recorded": sum(r["source"] == "recorded" for r in rs),
        "faithful": sum(bool(r["faithful"]) for r in rs),
        "faithful_rate": sum(bool(r["faithful"]) for r in rs) / n,
        "argmax_agrees_everywhere": n - len(divs),
        "median_max_abs_dlogprob": mx[len(mx) // 2] if mx else None,
        "worst_max_abs_dlogprob": mx[-1] if mx else None,
        "mean_mean_abs_dlogprob": sum(mean) / len(mean) if mean else None,
        "median_first_argmax_divergence": sorted(divs)[len(divs) // 2] if divs else None,
        "worst_divergence_margin": max((r["divergence_margin"] for r in rs if r.get("divergence_margin") is not None
                                        and r["divergence_margin"] == r["divergence_margin"]), default=None),
    }


def faithfulness_flags(capture_dir: str | Path | None) -> dict[tuple[str, int], bool]:
    """(sample, sub_call) -> faithful, from a capture's faithfulness table; empty when there is none.
    WHY: every analysis downstream of capture (probes, the aggregation check, reports) can then
    flag or drop the sub_calls whose replay is not the computation vLLM ran."""
    if capture_dir is None or not (Path(capture_dir) / FAITHFULNESS_FILE).is_file():
        return {}
    import pandas as pd

    df = pd.read_parquet(Path(capture_dir) / FAITHFULNESS_FILE)
    if df.empty or "faithful" not in df.columns:
        return {}
    return {(str(s), int(c)): bool(f) for s, c, f in zip(df["sample"], df["sub_call"], df["faithful"])}


def flag_faithful(df: Any, flags: dict[tuple[str, int], bool]) -> Any:
    """`df` (with sample and sub_call columns) plus a `faithful` column: True/False, None where unknown."""
    df = df.copy()
    if "sample" not in df.columns or "sub_call" not in df.columns or df.empty:
        df["faithful"] = None
        return df
    df["faithful"] = [flags.get((str(s), int(c))) for s, c in zip(df["sample"], df["sub_call"])]
    return df
