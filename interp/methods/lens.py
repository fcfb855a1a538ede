"""Logit lens at the answer position: from which layer on does the worker "say" the gold count?

For each sub_call whose answer has a number, the recorded prompt plus the recorded answer up to that
number is run once; the residual stream after every layer, at the position that predicts the
number's first token, goes through the final norm and the unembedding (one row per layer, never
T x V). Per layer: rank (0 = top) and probability of the worker's own token (what it wrote) and of
the gold count's token in the same context.
"""
from __future__ import annotations

import torch

from rlm_rig.interp.methods.capture import answer_tokens
from rlm_rig.interp.model import ReplayModel
from rlm_rig.interp.data.rolls import first_number_span
from rlm_rig.interp.data.selection import SubCallItem


def number_position(model: ReplayModel, item: SubCallItem) -> tuple[list[int], list[int], int] | None:
    """(prompt ids, answer ids, k): answer token k is the first token of the worker's number."""
    if not item.response:
        return None
    ans, text, offsets = answer_tokens(model, item)
    span = first_number_span(text)
    if span is None:
        return None
    hits = [i for i, (s, e) in enumerate(offsets) if s < span[1] and e > span[0]]
    if not hits:
        return None
    return model.render(item.messages).ids, ans, hits[0]


def gold_token(model: ReplayModel, ans: list[int], k: int, gold: int | None) -> int | None:
    """The token the worker would have written at k to start the gold count, in the same context."""
    if gold is None:
        return None
    prefix = model.tokenizer.decode(ans[:k], skip_special_tokens=True)
    cand = model.encode_answer(prefix + str(gold))
    if cand[:k] != ans[:k] or len(cand) <= k:
        return None
    return cand[k]


@torch.no_grad()
def lens_one(model: ReplayModel, item: SubCallItem, *, faithful: bool | None = None) -> list[dict]:
    found = number_position(model, item)
    if found is None:
        return []
    prompt, ans, k = found
    seq = prompt + ans[:k + 1]
    pos = len(prompt) + k - 1
    layers = model.layers()
    got: list[torch.Tensor] = []

    def keep(_m, _a, out):
        got.append((out[0] if isinstance(out, (tuple, list)) else out)[0, pos].detach())

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    try:
        ids = torch.tensor([seq], dtype=torch.long, device=model.device)
        model.hidden_states(ids)
    finally:
        for h in hooks:
            h.remove()
    logits = model.unembed()(model.final_norm()(torch.stack(got)[:, None, :]))[:, 0].float()  # [L, V]
    probs = torch.softmax(logits, -1)
    wtok = ans[k]
    gtok = gold_token(model, ans, k, item.gold)
    rows = []
    for li in range(len(layers)):
        def rank(t: int) -> int:
            return int((logits[li] > logits[li, t]).sum())
        rows.append(dict(sample=item.sample, sub_call=item.sub_call, layer=li, position=pos, gold=item.gold,
                         worker_token=wtok, worker_token_str=model.tokenizer.decode([wtok]),
                         worker_rank=rank(wtok), worker_prob=float(probs[li, wtok]),
                         gold_token=gtok, gold_rank=None if gtok is None else rank(gtok),
                         gold_prob=None if gtok is None else float(probs[li, gtok]),
                         worker_correct=None if gtok is None else gtok == wtok, faithful=faithful))
    return rows
