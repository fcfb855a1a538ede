"""Patching metrics, read at the answer position.

``normalized`` = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt), with LD the logit of the
clean answer token minus that of the corrupt one: 0 = behaves like the corrupt run, 1 = like the
clean run, in both directions (denoising starts near 0, noising near 1). Undefined (NaN) when
clean and corrupt logit differences coincide.
"""
from __future__ import annotations

import torch

NORMALIZE_EPS = 1e-6


def logit_diff(logits: torch.Tensor, clean_tok: int, corrupt_tok: int) -> torch.Tensor:
    return logits[..., clean_tok] - logits[..., corrupt_tok]


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the vocabulary (last dim), in nats."""
    lp = torch.log_softmax(p_logits.float(), -1)
    lq = torch.log_softmax(q_logits.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def patch_metrics(
    patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor, clean_tok: int, corrupt_tok: int
) -> dict[str, list[float]]:
    """`patched` [B, V], `clean`/`corrupt` [V] -> one value per row for each metric."""
    patched = patched.float()
    clean = clean.float()
    corrupt = corrupt.float()
    ld = logit_diff(patched, clean_tok, corrupt_tok)
    ld_c = float(logit_diff(clean, clean_tok, corrupt_tok))
    ld_x = float(logit_diff(corrupt, clean_tok, corrupt_tok))
    den = ld_c - ld_x
    norm = (ld - ld_x) / den if abs(den) > NORMALIZE_EPS else torch.full_like(ld, float("nan"))
    lp = torch.log_softmax(patched, -1)
    b = patched.shape[0]
    return {
        "logit_diff": ld.tolist(),
        "logit_diff_clean": [ld_c] * b,
        "logit_diff_corrupt": [ld_x] * b,
        "normalized": norm.tolist(),
        "logprob_clean_token": lp[:, clean_tok].tolist(),
        "logprob_corrupt_token": lp[:, corrupt_tok].tolist(),
        "kl_from_clean": kl(clean.expand_as(patched), patched).tolist(),
        "kl_from_corrupt": kl(corrupt.expand_as(patched), patched).tolist(),
    }
