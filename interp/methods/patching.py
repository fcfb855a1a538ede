"""Activation patching sweeps through nnsight, several patches per forward.

One forward of the base prompt (corrupt for denoising, clean for noising) is repeated along the
batch dimension; copy i gets patch i (its component, layer and positions overwritten with the
source run's activations). Source activations come from one extra forward of [clean, corrupt],
which also gives the two reference logits.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from rlm_rig.interp._nnsight import nnsight
import torch

from rlm_rig.interp.model import COMPONENT_ORDER, ReplayModel, component_output
from rlm_rig.interp.stats.patch_metrics import patch_metrics
from rlm_rig.interp.data.pairs import Pair, check_equal_length


@dataclass(frozen=True)
class PatchSpec:
    component: str
    layer: int
    position: str  # label of a position group of the pair (see pairs._positions)


def sweep_specs(
    pair: Pair, layers: list[int], components: list[str], resid_positions: list[str], other_positions: list[str]
) -> list[PatchSpec]:
    """The layer x position grid for the residual stream, layer x (few positions) for attn/MLP.
    Position groups that are empty for this pair are left out."""
    specs = []
    for c in components:
        labels = resid_positions if c == "resid" else other_positions
        for li in layers:
            for lab in labels:
                if lab in pair.positions and (pair.positions[lab] or lab == "none"):
                    specs.append(PatchSpec(c, li, lab))
    return specs


@torch.no_grad()
def reference_run(model: ReplayModel, pair: Pair, sites: list[tuple[str, int]], *, offload: bool = False):
    """Forward [clean, corrupt]; return (clean logits, corrupt logits, {site: [2, T, d]}).

    `offload` keeps the source activations in CPU memory (long prompts on a full GPU); patches then
    copy only the positions they need to the device."""
    check_equal_length(pair)  # a shorter one would be right-padded and a padded position read
    inputs = model.batch([pair.clean_ids, pair.corrupt_ids])
    env = model.layers_env()
    ordered = sorted(set(sites), key=lambda s: (s[1], COMPONENT_ORDER[s[0]]))
    # logits_to_keep=1: the LM head runs at the one position read, not at every position ([2, T, V] is
    # ~5 GB at T=8K for a 152K vocabulary)
    with model.nn.trace(inputs, logits_to_keep=1, use_cache=False):
        # copied out as each layer runs, so offloading never holds every layer on the device at once
        saved = nnsight.save([component_output(env[li], c).to("cpu", copy=True) if offload
                              else component_output(env[li], c).clone() for c, li in ordered])
        logits = nnsight.save(model.unembed_env().output[:, -1, :].clone())
    return logits[0], logits[1], dict(zip(ordered, saved))


@torch.no_grad()
def patched_logits(
    model: ReplayModel, base_ids: list[int], specs: list[PatchSpec], source: dict, source_row: int, pair: Pair
) -> torch.Tensor:
    """Last-position logits [len(specs), V] of `base_ids` with each spec patched into its own copy."""
    inputs = model.batch([base_ids] * len(specs))
    env = model.layers_env()
    by_site: dict[tuple[str, int], list[tuple[int, list[int]]]] = defaultdict(list)
    for i, s in enumerate(specs):
        idx = pair.positions[s.position]
        if idx:
            by_site[(s.component, s.layer)].append((i, idx))
    ordered = sorted(by_site, key=lambda s: (s[1], COMPONENT_ORDER[s[0]]))
    with model.nn.trace(inputs, logits_to_keep=1, use_cache=False):  # the LM head at the last position only
        for c, li in ordered:
            h = component_output(env[li], c)
            src = source[(c, li)]
            for i, idx in by_site[(c, li)]:
                t = torch.tensor(idx, device=src.device)
                h[i, t.to(h.device)] = src[source_row, t].to(h.device, h.dtype)
        logits = nnsight.save(model.unembed_env().output[:, -1, :].clone())
    return logits


def patch_pair(
    model: ReplayModel,
    pair: Pair,
    specs: list[PatchSpec],
    *,
    directions: Iterable[str] = ("denoise", "noise"),
    batch_size: int = 8,
    offload_reference: bool = False,
) -> list[dict]:
    """Every spec in every direction for one pair -> long-format rows (one per patch)."""
    check_equal_length(pair)
    if not specs:
        return []
    clean_l, corrupt_l, acts = reference_run(model, pair, [(s.component, s.layer) for s in specs],
                                             offload=offload_reference)
    rows: list[dict] = []
    for direction in directions:
        if direction == "denoise":
            base, src_row = pair.corrupt_ids, 0  # run corrupt, paste clean
        elif direction == "noise":
            base, src_row = pair.clean_ids, 1  # run clean, paste corrupt
        else:
            raise ValueError(f"unknown direction {direction!r}; choose denoise or noise")
        for k in range(0, len(specs), batch_size):
            chunk = specs[k : k + batch_size]
            logits = patched_logits(model, base, chunk, acts, src_row, pair)
            m = patch_metrics(logits, clean_l, corrupt_l, pair.clean_token, pair.corrupt_token)
            for i, s in enumerate(chunk):
                rows.append(
                    dict(
                        pair=pair.pair_id, run=pair.run, sample=pair.sample, sub_call=pair.sub_call,
                        corruption=pair.corruption, description=pair.description, component=s.component,
                        layer=s.layer, position=s.position, n_positions=len(pair.positions[s.position]),
                        direction=direction, seq_len=pair.seq_len, clean_target=pair.clean_target,
                        corrupt_target=pair.corrupt_target, **{name: vals[i] for name, vals in m.items()},
                    )
                )
    return rows
