"""interp computes logits only where it reads them, and its numbers are those of a full forward.

WHY: ``lm_head.output[:, -1, :]`` after a full forward runs the LM head at every position: for
Qwen2.5-7B (vocabulary 152,064) a [2, 8K] fp16 logits tensor is ~5 GB on a 20 GB card. The LM head
must see one position per row; the results must not move.
"""
from __future__ import annotations

import pytest
import torch

from rlm_rig.interp.methods.capture import attach_gold, capture_batch, prepare
from rlm_rig.interp.config import InterpConfig
from demo_run import make_demo_run
from rlm_rig.interp.model import ReplayModel
from rlm_rig.interp.data.pairs import build_counting_pairs
from rlm_rig.interp.methods.patching import PatchSpec, patched_logits, reference_run
from rlm_rig.interp.data.selection import iter_sub_calls


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ReplayModel("tiny", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    run = make_demo_run(tmp_path_factory.mktemp("run"), n_samples=2, chunks_per_sample=2, lines_per_chunk=6)
    return [attach_gold(i) for i in iter_sub_calls(run)]


@pytest.fixture(scope="module")
def pair(model, items):
    ps, _ = build_counting_pairs(model, items, n_pairs=1, corruptions=["remove"], seed=0)
    return ps[0]


class HeadShapes:
    """Records the [batch, positions, vocab] shape of every LM head output."""

    def __init__(self, model: ReplayModel):
        self.shapes: list[tuple[int, ...]] = []
        self._h = model.hf.lm_head.register_forward_hook(lambda _m, _i, out: self.shapes.append(tuple(out.shape)))

    def __enter__(self) -> "HeadShapes":
        return self

    def __exit__(self, *exc) -> None:
        self._h.remove()


def test_reference_and_patched_logits_run_the_head_at_one_position(model, pair):
    L = model.n_layers
    with HeadShapes(model) as heads:
        clean_l, corrupt_l, acts = reference_run(model, pair, [("resid", 0), ("resid", L - 1)])
        specs = [PatchSpec("resid", 0, "edit"), PatchSpec("resid", L - 1, "last"), PatchSpec("resid", 0, "none")]
        got = patched_logits(model, pair.corrupt_ids, specs, acts, 0, pair)
    assert heads.shapes and all(s[1] == 1 for s in heads.shapes), heads.shapes
    # unchanged: the same numbers as a plain full forward, read at the last position
    with torch.no_grad():
        full = model.hf(**model.batch([pair.clean_ids, pair.corrupt_ids])).logits[:, -1]
    assert torch.allclose(clean_l, full[0], atol=1e-5) and torch.allclose(corrupt_l, full[1], atol=1e-5)
    assert got.shape == (3, model.hf.config.vocab_size)
    assert torch.allclose(got[2], full[1], atol=1e-5)  # nothing patched -> corrupt logits


def test_capture_runs_no_head_over_the_prompt_and_keeps_its_values(model, items):
    cfg = InterpConfig(capture_positions=["last", "answer"], max_answer_tokens=4)
    batch = [p for p in (prepare(model, it, cfg) for it in items[:3]) if p is not None]
    layers = [0, model.n_layers - 1]
    with HeadShapes(model) as heads:
        acts = capture_batch(model, batch, layers, ["resid"])
    assert all(s[1] == 1 for s in heads.shapes), heads.shapes
    with torch.no_grad():
        hs = model.hf(**model.batch([p.seq for p in batch]), output_hidden_states=True).hidden_states
    bi = [i for i, p in enumerate(batch) for _ in p.positions]
    ti = [t for p in batch for (_, t, _) in p.positions]
    for li in layers:
        want = hs[li + 1][bi, ti]
        # the last layer's hidden_states entry is after the final norm in HF; compare layer outputs only
        if li == model.n_layers - 1:
            continue
        assert torch.allclose(acts[("resid", li)], want, atol=1e-5)


def test_interp_traces_keep_no_kv_cache(model, pair, items):
    """A trace that fills transformers' KV cache holds 2 x layers x T x kv_dim per row for nothing (interp never
    decodes after it): ~3 GiB per copy of a 16K conversation on the 14B. Every trace's output has no cache."""
    caches: list[object] = []
    h = model.hf.register_forward_hook(lambda _m, _i, out: caches.append(getattr(out, "past_key_values", None)))
    try:
        _, _, acts = reference_run(model, pair, [("resid", 0)])
        patched_logits(model, pair.corrupt_ids, [PatchSpec("resid", 0, "edit")], acts, 0, pair)
        cfg = InterpConfig(capture_positions=["last"], max_answer_tokens=4)
        capture_batch(model, [p for p in (prepare(model, it, cfg) for it in items[:2]) if p is not None], [0], ["resid"])
    finally:
        h.remove()
    assert len(caches) >= 3 and all(c is None for c in caches), [type(c).__name__ for c in caches]
