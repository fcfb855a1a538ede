"""Exact single-site patching that computes the shared prefix once (its KV cache), for long conversations.

WHY: a controller pair edits one number near the end of a ~1.5K-token (CPU) to 16K-token (GPU) conversation.
Every token before the edit is the same in the clean run, the corrupt run and every patched copy, so the
nnsight path (`attribution.exact_sites`), which runs each copy over the whole sequence, spends >90 % of its
work recomputing that prefix. Here the prefix runs once with `use_cache`, and each batch of patched copies
runs only the suffix on top of its keys and values (expanded along the batch, never copied). Sites before the
first difference are answered 0 (a causal model computes them identically in both runs), as `exact_sites`
does. Same inputs and outputs as `exact_sites`: {(component, layer, token): change of the logit difference}.

Plain forward hooks on the model's own modules (`ReplayModel.layers/attn/mlp`): an independent implementation
from both the attribution's layer-by-layer recompute and the nnsight patcher; the tests check it against the
nnsight path site by site.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from rlm_rig.interp.data.pairs import Pair, check_equal_length
from rlm_rig.interp.methods.attribution import first_difference
from rlm_rig.interp.model import ReplayModel


def _module(model: ReplayModel, component: str, layer: int):
    lay = model.layers()[layer]
    return {"resid": lay, "attn": ReplayModel.attn(lay), "mlp": ReplayModel.mlp(lay)}[component]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


class _Prefix:
    """The prefix's keys and values per layer, handed to each suffix forward as a fresh cache of batch B."""

    def __init__(self, model: ReplayModel, ids: list[int]):
        from transformers import DynamicCache

        self.model, self.n = model, len(ids)
        t = torch.tensor([ids], dtype=torch.long, device=model.device)
        cache = model.hf(input_ids=t, attention_mask=torch.ones_like(t), use_cache=True, logits_to_keep=1).past_key_values
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        self._cls = DynamicCache

    def cache(self, batch: int):
        return self._cls(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.kv],
                         config=self.model.hf.config)

    def forward(self, suffix: list[int], batch: int) -> torch.Tensor:
        """Last-position logits [batch, V] of prefix + suffix, each copy running the suffix."""
        t = torch.tensor([suffix] * batch, dtype=torch.long, device=self.model.device)
        mask = torch.ones((batch, self.n + len(suffix)), dtype=torch.long, device=self.model.device)
        out = self.model.hf(input_ids=t, attention_mask=mask, past_key_values=self.cache(batch), use_cache=True,
                            logits_to_keep=1)
        return out.logits[:, -1, :].float()


def _source_acts(pre: _Prefix, model: ReplayModel, src_suffix: list[int], sites: set[tuple[str, int]]
                 ) -> dict[tuple[str, int], torch.Tensor]:
    got: dict[tuple[str, int], torch.Tensor] = {}

    def keep(key):
        return lambda _m, _a, out: got.__setitem__(key, _first(out)[0].detach().clone())

    hs = [_module(model, c, li).register_forward_hook(keep((c, li))) for c, li in sites]
    try:
        pre.forward(src_suffix, 1)
    finally:
        for h in hs:
            h.remove()
    return got


def _patched(pre: _Prefix, model: ReplayModel, base_suffix: list[int], chunk: list[tuple[str, int, int]], lo: int,
             src: dict) -> torch.Tensor:
    """Logits [len(chunk), V]: copy i with site i (token index into the whole sequence) set to the source's."""
    by: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for i, (c, li, t) in enumerate(chunk):
        by[(c, li)].append((i, t - lo))

    def patch(key):
        def hook(_m, _a, out):
            h = _first(out)
            for i, j in by[key]:
                h[i, j] = src[key][j].to(h.dtype)
            return out
        return hook

    hs = [_module(model, c, li).register_forward_hook(patch((c, li))) for c, li in by]
    try:
        return pre.forward(base_suffix, len(chunk))
    finally:
        for h in hs:
            h.remove()


@torch.no_grad()
def exact_sites_prefix(model: ReplayModel, pair: Pair, sites: list[tuple[str, int, int]], *,
                       direction: str = "denoise", batch_size: int = 16) -> dict[tuple[str, int, int], float]:
    """As `attribution.exact_sites` (skip_shared_prefix=True), with the shared prefix computed once."""
    check_equal_length(pair)
    if direction not in ("denoise", "noise"):
        raise ValueError(f"unknown direction {direction!r}; choose denoise or noise")
    lo = min(first_difference(pair), pair.seq_len - 1)
    out = {s: 0.0 for s in sites if s[2] < lo}
    todo = [s for s in sites if s[2] >= lo]
    if not todo:
        return out
    base, src_ids = (pair.corrupt_ids, pair.clean_ids) if direction == "denoise" else (pair.clean_ids, pair.corrupt_ids)
    pre = _Prefix(model, pair.clean_ids[:lo])
    src = _source_acts(pre, model, src_ids[lo:], {(c, li) for c, li, _ in todo})
    ref = pre.forward(base[lo:], 1)[0]
    m0 = float(ref[pair.clean_token] - ref[pair.corrupt_token])
    for k in range(0, len(todo), batch_size):
        chunk = todo[k: k + batch_size]
        lg = _patched(pre, model, base[lo:], chunk, lo, src)
        for s, row in zip(chunk, lg):
            out[s] = float(row[pair.clean_token] - row[pair.corrupt_token]) - m0
    return out
