"""Where each component's output lives on a decoder layer, read inside an nnsight trace.

nnsight (>= 0.5) runs intervention code on real values, in module execution order, so within a
layer the attention output must be touched before the MLP output, and both before the layer's
output (the residual stream after the layer). `COMPONENT_ORDER` encodes that order.
"""
from __future__ import annotations

from typing import Any

COMPONENT_ORDER = {"attn": 0, "mlp": 1, "resid": 2}


def component_output(layer: Any, component: str):
    """The tensor [batch, seq, d_model] a component writes into the residual stream at this layer.

    Writing into it in place (``t[i, pos] = v``) patches the forward pass.
    """
    if component == "attn":
        out = layer.self_attn.output
    elif component == "mlp":
        out = layer.mlp.output
    elif component == "resid":
        out = layer.output
    else:
        raise ValueError(f"unknown component {component!r}; choose resid, attn or mlp")
    return out[0] if isinstance(out, tuple) else out


def ordered_sites(layers: list[int], components: list[str]) -> list[tuple[int, str]]:
    """(layer, component) pairs in the order the forward pass reaches them."""
    return sorted({(li, c) for li in layers for c in components}, key=lambda lc: (lc[0], COMPONENT_ORDER[lc[1]]))
