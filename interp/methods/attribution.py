"""Attribution patching: a per-token x per-layer map of a pair at the cost of ~2 forwards + 1 backward.

Exact activation patching of every (token, layer) site of an 8K-token chunk over 28 layers is ~229K
forwards. Attribution patching replaces each patch by its first-order estimate (Nanda, "Attribution
Patching", 2023):

    effect(site) ~= (a_source[site] - a_base[site]) . dM/da[site]   evaluated on the base run,

with M = logit(clean token) - logit(corrupt token) at the answer position. Denoising: base = corrupt,
source = clean. Noising: base = clean, source = corrupt. Reported divided by the pair's denominator
(LD_clean - LD_corrupt), i.e. in the units of the exact `normalized` effect's change.

Memory (why a layer-by-layer backward): a plain `backward()` over a 7B model at 8K tokens keeps every
layer's autograd graph (~1.7 GB each, ~50 GB). Here the two no-grad forwards keep only each layer's
input ([T, d] per layer and run, optionally in CPU memory), and the backward walks the layers from the
top, recomputing ONE layer with grad at a time (gradient checkpointing by hand) and re-running the
same layer on the source input to get the source activations. Peak on the device: weights + one
layer's graph + the stored inputs (2 x L x T x d, or none with `offload=True`) + one row of logits.
Plain PyTorch hooks are used (not nnsight) because the backward needs autograd on recomputed layers;
the exact patching it is validated against is the independent nnsight path (`patching.patched_logits`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlm_rig.interp.model import ReplayModel
from rlm_rig.interp.data.pairs import Pair, check_equal_length

COMPONENTS = ("resid", "attn", "mlp")


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _parts(model: ReplayModel):
    return model.decoder(), model.layers(), model.final_norm(), model.unembed()


@torch.no_grad()
def _layer_inputs(model: ReplayModel, ids: list[int], *, offload: bool
                  ) -> tuple[list[torch.Tensor], list[dict], torch.Tensor]:
    """One forward: each decoder layer's input hidden state [1, T, d], each layer call's keyword
    arguments (rotary embeddings, mask; per layer, since sliding-window layers get their own mask) and
    the last layer's output."""
    dec, layers, _, _ = _parts(model)
    inputs: list[torch.Tensor] = []
    kws: list[dict] = []
    last: list[torch.Tensor] = []

    def pre(_mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        inputs.append(h.detach().to("cpu", copy=True) if offload else h.detach().clone())
        kw = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values", "past_key_value")}
        kw["use_cache"] = False
        kws.append(kw)

    def post(_mod, _args, out):
        last.append(_first(out).detach().clone())

    hs = [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in layers]
    hs.append(layers[-1].register_forward_hook(post))
    try:
        t = torch.tensor([ids], dtype=torch.long, device=model.device)
        dec(input_ids=t, attention_mask=torch.ones_like(t), use_cache=False)
    finally:
        for h in hs:
            h.remove()
    return inputs, kws, last[0]


def _run_layer(layer, h: torch.Tensor, kw: dict) -> dict[str, torch.Tensor]:
    """Run one decoder layer; return its attention, MLP and residual outputs (in the graph if h has grad)."""
    got: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_m, _a, out):
            t = _first(out)
            if t.requires_grad:
                t.retain_grad()
            got[name] = t
        return hook

    hs = [ReplayModel.attn(layer).register_forward_hook(keep("attn")),
          ReplayModel.mlp(layer).register_forward_hook(keep("mlp"))]
    try:
        out = _first(layer(h, **kw))
    finally:
        for x in hs:
            x.remove()
    if out.requires_grad:
        out.retain_grad()
    got["resid"] = out
    return got


def _metric(model: ReplayModel, last_hidden: torch.Tensor, pair: Pair) -> torch.Tensor:
    """M = logit(clean) - logit(corrupt) at the last position, from the last layer's output at that row only."""
    _, _, norm, head = _parts(model)
    logits = head(norm(last_hidden[:, -1:, :]))[0, -1].float()
    return logits[pair.clean_token] - logits[pair.corrupt_token]


@dataclass
class AttributionResult:
    """attr[component]: [n_layers, T] estimated change of the logit difference (not yet normalized)."""

    pair: Pair
    direction: str
    attr: dict[str, torch.Tensor]
    ld_clean: float
    ld_corrupt: float

    @property
    def denominator(self) -> float:
        return self.ld_clean - self.ld_corrupt

    def frame(self):
        """Long format as a DataFrame, one row per (component, layer, token), built column-wise (an 8K-token
        pair over 28 layers and 3 components is ~690K rows)."""
        import numpy as np
        import pandas as pd

        den = self.denominator
        p = self.pair
        edit = p.positions.get("edit", [])
        lo = min(edit) if edit else 0
        parts = []
        for comp, a in self.attr.items():
            a = a.double().cpu().numpy()
            n_l, n_t = a.shape
            layer, token = np.repeat(np.arange(n_l), n_t), np.tile(np.arange(n_t), n_l)
            v = a.reshape(-1)
            parts.append(pd.DataFrame(dict(component=comp, layer=layer, token=token, after_edit=token >= lo, attr=v,
                                           attr_normalized=v / den if den else np.nan)))
        df = pd.concat(parts, ignore_index=True)
        for k, val in (("pair", p.pair_id), ("chunk", p.chunk), ("sample", p.sample), ("sub_call", p.sub_call),
                       ("direction", self.direction), ("denominator", den)):
            df[k] = val
        return df


def attribute_pair(model: ReplayModel, pair: Pair, *, components: tuple[str, ...] | list[str] = COMPONENTS,
                   direction: str = "denoise", offload: bool = False) -> AttributionResult:
    """Gradient x difference at every token, layer and component, for one pair."""
    check_equal_length(pair)
    if direction not in ("denoise", "noise"):
        raise ValueError(f"unknown direction {direction!r}; choose denoise or noise")
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        raise ValueError(f"unknown component(s) {bad}; choose from {list(COMPONENTS)}")
    base_ids, src_ids = (pair.corrupt_ids, pair.clean_ids) if direction == "denoise" else (pair.clean_ids, pair.corrupt_ids)
    base_in, kw, base_last = _layer_inputs(model, base_ids, offload=offload)
    src_in, _, src_last = _layer_inputs(model, src_ids, offload=offload)
    with torch.no_grad():
        m_base = float(_metric(model, base_last, pair))
        m_src = float(_metric(model, src_last, pair))
    ld_clean, ld_corrupt = (m_src, m_base) if direction == "denoise" else (m_base, m_src)
    _, layers, _, _ = _parts(model)
    n, t = len(layers), len(base_ids)
    attr = {c: torch.zeros(n, t, dtype=torch.float32) for c in components}
    params = [p for p in model.hf.parameters() if p.requires_grad]
    for p in params:  # no weight gradients: only activations need them (halves the backward's memory)
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            top = base_last.detach().clone().requires_grad_(True)
            m = _metric(model, top, pair)
            (g_out,) = torch.autograd.grad(m, top)
            for li in range(n - 1, -1, -1):
                h = base_in[li].to(model.device).requires_grad_(True)
                acts = _run_layer(layers[li], h, kw[li])
                acts["resid"].backward(g_out)
                with torch.no_grad():
                    src = _run_layer(layers[li], src_in[li].to(model.device), kw[li])
                    for c in components:
                        grad = g_out if c == "resid" else acts[c].grad
                        if grad is None:
                            continue
                        diff = (src[c] - acts[c].detach()).float()
                        attr[c][li] = (diff * grad.float())[0].sum(-1).cpu()
                g_out = h.grad.detach()
                del acts, src, h
    finally:
        for p in params:
            p.requires_grad_(True)
    return AttributionResult(pair, direction, attr, ld_clean, ld_corrupt)


# -- exact patching of single-token sites (validation and the top-k follow-up) -------------------------

def first_difference(pair: Pair) -> int:
    """Index of the first token where clean and corrupt differ (equal lengths are guaranteed by Pair)."""
    return next((i for i, (a, b) in enumerate(zip(pair.clean_ids, pair.corrupt_ids)) if a != b), pair.seq_len)


def exact_sites(model: ReplayModel, pair: Pair, sites: list[tuple[str, int, int]], *, direction: str = "denoise",
                batch_size: int = 16, skip_shared_prefix: bool = True) -> dict[tuple[str, int, int], float]:
    """Exact patch of each (component, layer, token) site alone, through the nnsight patching path.
    Returns the change of the logit difference vs the base run (same units as `attr`).

    WHY `skip_shared_prefix`: in a causal model every activation at a position before the first token where
    clean and corrupt differ is the same in both runs, so patching it is a no-op and its effect is exactly 0.
    Those sites are answered 0.0 without a forward pass; for an edit in the middle of a chunk that halves
    the cost of an every-token validation (tested against the computed values)."""
    from dataclasses import replace

    from rlm_rig.interp.methods.patching import PatchSpec, patch_pair

    out: dict[tuple[str, int, int], float] = {}
    if skip_shared_prefix:
        lo = first_difference(pair)
        out.update({s: 0.0 for s in sites if s[2] < lo})
        sites = [s for s in sites if s[2] >= lo]
    positions = dict(pair.positions)
    for _, _, tok in sites:
        positions[f"tok{tok}"] = [tok]
    p2 = replace(pair, positions=positions)
    # one layer at a time: the reference run then holds the source activations of one layer's components
    # only (3 x [2, T, d]), not of every layer the sites touch
    for layer in sorted({li for _, li, _ in sites}):
        specs = [PatchSpec(c, li, f"tok{tok}") for c, li, tok in sites if li == layer]
        rows = patch_pair(model, p2, specs, directions=[direction], batch_size=batch_size)
        for sp, r in zip(specs, rows):
            base = r["logit_diff_corrupt"] if direction == "denoise" else r["logit_diff_clean"]
            out[(sp.component, sp.layer, int(sp.position[3:]))] = float(r["logit_diff"]) - float(base)
    return out


def top_k_sites(res: AttributionResult, k: int) -> list[tuple[str, int, int]]:
    """The k sites of largest |attribution| per (component, layer)."""
    sites = []
    for c, a in res.attr.items():
        for li in range(a.shape[0]):
            idx = torch.argsort(a[li].abs(), descending=True)[:k]
            sites += [(c, li, int(t)) for t in idx if float(a[li, t]) != 0.0]
    return sites


def compare(res: AttributionResult, exact: dict[tuple[str, int, int], float], *, k: int) -> list[dict]:
    """Per (component, layer): Spearman rank correlation of attribution vs exact over the sites given
    (and over the sites at or after the edit: before it both are exactly 0), and the sign agreement on
    the top-k sites by |exact|."""
    from scipy.stats import spearmanr

    edit = res.pair.positions.get("edit", [])
    lo = min(edit) if edit else 0
    out = []
    by: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
    for (c, li, t), e in exact.items():
        by.setdefault((c, li), []).append((t, float(res.attr[c][li, t]), e))
    for (c, li), vals in sorted(by.items()):
        a = [v[1] for v in vals]
        e = [v[2] for v in vals]
        after = [(v[1], v[2]) for v in vals if v[0] >= lo]
        top = sorted(vals, key=lambda v: -abs(v[2]))[:k]
        top = [v for v in top if v[2] != 0.0]
        rho = spearmanr(a, e).statistic if len(set(e)) > 1 and len(set(a)) > 1 else float("nan")
        rho_after = (spearmanr(*zip(*after)).statistic
                     if len(after) > 2 and len({x[0] for x in after}) > 1 and len({x[1] for x in after}) > 1
                     else float("nan"))
        out.append(dict(pair=res.pair.pair_id, direction=res.direction, component=c, layer=li, n_sites=len(vals),
                        spearman=float(rho), spearman_after_edit=float(rho_after), top_k=len(top),
                        sign_agreement_top_k=(sum((v[1] > 0) == (v[2] > 0) for v in top) / len(top)) if top
                        else float("nan")))
    return out
