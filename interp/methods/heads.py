"""Per-head activation patching: each attention head's output (its slice of o_proj's input), layer x head.

A head's contribution to the residual stream is o_proj applied to its `head_dim` slice of the
concatenated head outputs, so patching that slice at chosen positions patches exactly that head.
Copies of the base prompt are batched, copy i patching (layer, head)_i; logits are computed only at
the answer position (the unembedding never sees the other T-1 rows).
"""
from __future__ import annotations

from collections import defaultdict

import torch

from rlm_rig.interp.stats.patch_metrics import patch_metrics
from rlm_rig.interp.model import ReplayModel
from rlm_rig.interp.data.pairs import Pair, check_equal_length


@torch.no_grad()
def _last_logits(model: ReplayModel, seqs: list[list[int]]) -> torch.Tensor:
    """[B, V] logits at the last position of equal-length sequences, unembedding only that row."""
    ids = torch.tensor(seqs, dtype=torch.long, device=model.device)
    return model.unembed()(model.hidden_states(ids)[:, -1, :]).float()


@torch.no_grad()
def head_sources(model: ReplayModel, pair: Pair, layers: list[int], positions: list[int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Forward [clean, corrupt]: (clean logits, corrupt logits at the last position, {layer: [2, P, H*hd]}
    o_proj inputs at `positions` (all T when None); only the rows a patch reads are kept)."""
    check_equal_length(pair)
    saved: dict[int, torch.Tensor] = {}
    hooks = []
    all_layers = model.layers()
    for li in layers:
        def pre(_m, args, li=li):
            x = args[0].detach()
            saved[li] = (x if positions is None else x[:, torch.tensor(positions, device=x.device)]).clone()
        hooks.append(model.o_proj(all_layers[li]).register_forward_pre_hook(pre))
    try:
        logits = _last_logits(model, [pair.clean_ids, pair.corrupt_ids])
    finally:
        for h in hooks:
            h.remove()
    return logits[0], logits[1], saved


@torch.no_grad()
def patch_heads(model: ReplayModel, pair: Pair, layers: list[int], positions: list[str], *,
                directions: list[str] = ("denoise",), batch_size: int = 16, min_denominator: float = 0.0) -> list[dict]:
    """Rows (layer, head, position group, direction) with the patch metrics of `patching`."""
    n_heads, hd = model.head_geometry()
    sites = [(li, h, lab) for lab in positions if pair.positions.get(lab) for li in layers for h in range(n_heads)]
    needed = sorted({t for lab in positions for t in pair.positions.get(lab, [])})
    row_of = {t: i for i, t in enumerate(needed)}
    clean_l, corrupt_l, src = head_sources(model, pair, layers, needed)
    all_layers = model.layers()
    rows = []
    for direction in directions:
        if direction not in ("denoise", "noise"):
            raise ValueError(f"unknown direction {direction!r}; choose denoise or noise")
        base, row = (pair.corrupt_ids, 0) if direction == "denoise" else (pair.clean_ids, 1)
        for k in range(0, len(sites), batch_size):
            chunk = sites[k:k + batch_size]
            by_layer: dict[int, list[tuple[int, int, list[int]]]] = defaultdict(list)
            for i, (li, h, lab) in enumerate(chunk):
                by_layer[li].append((i, h, pair.positions[lab]))
            hooks = []
            for li, todo in by_layer.items():
                def pre(_m, args, li=li, todo=todo):
                    x = args[0].clone()
                    for i, h, pos in todo:
                        t = torch.tensor(pos, device=x.device)
                        r = torch.tensor([row_of[p] for p in pos], device=x.device)
                        x[i, t, h * hd:(h + 1) * hd] = src[li][row, r, h * hd:(h + 1) * hd].to(x.dtype)
                    return (x, *args[1:])
                hooks.append(model.o_proj(all_layers[li]).register_forward_pre_hook(pre))
            try:
                logits = _last_logits(model, [base] * len(chunk))
            finally:
                for hk in hooks:
                    hk.remove()
            m = patch_metrics(logits, clean_l, corrupt_l, pair.clean_token, pair.corrupt_token)
            for i, (li, h, lab) in enumerate(chunk):
                den = m["logit_diff_clean"][i] - m["logit_diff_corrupt"][i]
                rows.append(dict(pair=pair.pair_id, chunk=pair.chunk, sample=pair.sample, sub_call=pair.sub_call,
                                 component="head", layer=li, head=h, position=lab, direction=direction,
                                 n_positions=len(pair.positions[lab]), denominator=den,
                                 **{name: vals[i] for name, vals in m.items()}))
                if abs(den) < min_denominator:
                    rows[-1]["normalized"] = float("nan")
    return rows
