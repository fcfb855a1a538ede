"""interp on the real tiny Qwen2 through real nnsight: capture, replay agreement, patching laws."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rlm_rig.interp.methods.capture import attach_gold, prepare, run_capture
from rlm_rig.interp.config import InterpConfig
from demo_run import make_demo_run
from rlm_rig.interp.model import ReplayModel
from rlm_rig.interp.data.pairs import build_counting_pairs, build_token_pair
from rlm_rig.interp.methods.patching import PatchSpec, patch_pair, patched_logits, reference_run, sweep_specs
from rlm_rig.interp.methods.replay import first_divergence, replay_one
from rlm_rig.interp.data.rolls import count_roll_lines
from rlm_rig.interp.data.selection import iter_sub_calls
from rlm_rig.interp.data.shards import read_index


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ReplayModel("tiny", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_demo_run(tmp_path_factory.mktemp("run"), n_samples=3, chunks_per_sample=3, lines_per_chunk=6)


@pytest.fixture(scope="module")
def pairs(model, run):
    items = [attach_gold(i) for i in iter_sub_calls(run)]
    ps, _ = build_counting_pairs(model, items, n_pairs=3, corruptions=["remove", "add"], seed=0)
    assert len(ps) == 3
    return ps


# -- capture -------------------------------------------------------------------------------------------
def test_capture_shapes_index_and_values(model, run, tmp_path):
    cfg = InterpConfig(components=["resid", "attn", "mlp"], capture_positions=["last", "answer", "number"],
                       max_answer_tokens=3, save_dtype="float32", shard_mb=0.02, capture_batch_size=2, replay=False)
    items = list(iter_sub_calls(run))
    s = run_capture(model, items, tmp_path, cfg)
    assert s.n_sub_calls == 9 and s.n_skipped == 0
    assert len(s.shards) > 1  # streamed in several shards
    idx = read_index(tmp_path)
    L, d = model.n_layers, model.d_model
    # per sub_call: 1 last + 3 answer + 1 number positions, for every layer and component
    assert len(idx) == 9 * 5 * L * 3 == s.n_rows
    assert set(idx["component"]) == {"resid", "attn", "mlp"} and set(idx["layer"]) == set(range(L))
    assert (idx.groupby(["sample", "sub_call", "component", "layer"]).size() == 5).all()
    for shard in idx["shard"].unique():
        with safe_open(str(tmp_path / shard), framework="pt") as f:
            for key in f.keys():
                n = len(idx[(idx["shard"] == shard) & (idx["key"] == key)])
                assert tuple(f.get_tensor(key).shape) == (n, d)
    # index rows carry the chunk's gold, the worker answer and the chunk span
    for it in items:
        rows = idx[(idx["sample"] == it.sample) & (idx["sub_call"] == it.sub_call)]
        assert (rows["gold"] == count_roll_lines(it.chunk_text)).all()
        assert (rows["worker_answer"] == it.response).all()
        assert (rows["chunk_start"] == it.chunk_start).all() and (rows["chunk_end"] == it.chunk_end).all()
    # captured residual == transformers' own hidden state at that layer and position
    it = items[0]
    p = prepare(model, it, cfg)
    with torch.no_grad():
        hs = model.hf(**model.batch([p.seq]), output_hidden_states=True).hidden_states
    from rlm_rig.interp.data.shards import load_rows

    for layer in range(L - 1):  # HF's last hidden state has the final norm applied: compare the others
        r = idx[(idx["sample"] == it.sample) & (idx["sub_call"] == it.sub_call) & (idx["component"] == "resid")
                & (idx["layer"] == layer)]
        want = torch.stack([hs[layer + 1][0, t] for t in r["token_index"]]).numpy()
        assert np.allclose(load_rows(tmp_path, r), want, atol=1e-5)
    # "number" reads the position that predicts the number token
    num = idx[(idx["position"] == "number") & (idx["sample"] == it.sample) & (idx["sub_call"] == it.sub_call)].iloc[0]
    assert model.tokenizer.decode([p.seq[num["token_index"] + 1]]).strip() == str(it.response.split()[2])


# -- replay agreement -----------------------------------------------------------------------------------
def test_replay_agreement_first_divergence(model, run):
    it = next(iter(iter_sub_calls(run)))
    ids = model.render(it.messages).ids
    gen = model.greedy(ids, 6)
    text = model.tokenizer.decode(gen, skip_special_tokens=True)
    assert model.encode_answer(text) == gen, "precondition: the greedy answer round-trips through the tokenizer"
    same = replay_one(model, it.sample, it.sub_call, ids, text, max_new_tokens=6)
    assert same.exact_match and same.first_divergence is None
    # a recorded answer that agrees for 2 tokens, then differs
    alt = next(t for t in range(100, len(model.tokenizer)) if t != gen[2] and model.encode_answer(
        model.tokenizer.decode(gen[:2] + [t])) == gen[:2] + [t])
    other = model.tokenizer.decode(gen[:2] + [alt])
    diff = replay_one(model, it.sample, it.sub_call, ids, other, max_new_tokens=6)
    assert not diff.exact_match and diff.first_divergence == 2
    assert first_divergence([1, 2], [1, 2, 3]) == 2 and first_divergence([5], [5]) is None


# -- patching laws ---------------------------------------------------------------------------------------
def test_sanity_laws(model, pairs):
    pair = pairs[0]
    L = model.n_layers
    sites = [("resid", li) for li in range(L)]
    clean_l, corrupt_l, acts = reference_run(model, pair, sites)
    assert not torch.allclose(clean_l, corrupt_l)
    specs = [PatchSpec("resid", L - 1, "all"), PatchSpec("resid", 0, "all"), PatchSpec("resid", L - 1, "none")]
    den = patched_logits(model, pair.corrupt_ids, specs, acts, 0, pair)
    assert torch.allclose(den[0], clean_l, atol=1e-4)  # every position of the final residual -> clean logits
    assert torch.allclose(den[1], clean_l, atol=1e-4)  # ... of any layer's residual, too
    assert torch.allclose(den[2], corrupt_l, atol=1e-4)  # nothing patched -> corrupt logits
    noi = patched_logits(model, pair.clean_ids, specs, acts, 1, pair)
    assert torch.allclose(noi[0], corrupt_l, atol=1e-4) and torch.allclose(noi[2], clean_l, atol=1e-4)
    rows = patch_pair(model, pair, specs, directions=["denoise", "noise"], batch_size=3)
    norm = {(r["direction"], r["layer"], r["position"]): r["normalized"] for r in rows}
    assert norm[("denoise", L - 1, "all")] == pytest.approx(1.0, abs=1e-3)
    assert norm[("denoise", L - 1, "none")] == pytest.approx(0.0, abs=1e-3)
    assert norm[("noise", L - 1, "all")] == pytest.approx(0.0, abs=1e-3)
    assert norm[("noise", L - 1, "none")] == pytest.approx(1.0, abs=1e-3)


def test_causality_and_batching(model, pairs):
    """Positions before the edit are identical in both runs, so patching them changes nothing; and
    several patches in one forward give the same numbers as one patch per forward."""
    pair = pairs[1]
    layers = list(range(model.n_layers))
    specs = sweep_specs(pair, layers, ["resid", "attn", "mlp"], ["chunk_before", "edit", "last"], ["all"])
    batched = patch_pair(model, pair, specs, directions=["denoise"], batch_size=16)
    single = patch_pair(model, pair, specs, directions=["denoise"], batch_size=1, offload_reference=True)
    assert len(batched) == len(specs)
    for a, b in zip(batched, single):
        assert (a["component"], a["layer"], a["position"]) == (b["component"], b["layer"], b["position"])
        assert a["logit_diff"] == pytest.approx(b["logit_diff"], abs=1e-4)
    for r in batched:
        if r["position"] == "chunk_before":
            assert r["normalized"] == pytest.approx(0.0, abs=1e-4)
    last = [r for r in batched if r["position"] == "last" and r["component"] == "resid" and r["layer"] == layers[-1]]
    assert last[0]["normalized"] == pytest.approx(1.0, abs=1e-3)  # final layer: only the last position matters


def test_pairs_are_equal_length_single_edits(model, pairs):
    for p in pairs:
        assert len(p.clean_ids) == len(p.corrupt_ids)
        assert p.positions["edit"] and int(p.clean_target) - int(p.corrupt_target) in (1, -1)
        assert p.clean_token != p.corrupt_token
        assert all(i < min(p.positions["edit"]) for i in p.positions["chunk_before"])


def test_token_level_corruption_api(model, run):
    it = next(iter(iter_sub_calls(run)))
    n = len(model.render(it.messages).ids)
    k = n // 2

    def swap(ids):
        ids = list(ids)
        ids[k] = ids[k] + 1
        return ids

    pair = build_token_pair(model, it, swap, clean_target="3", corrupt_target="4")
    assert pair is not None and pair.positions["edit"] == [k]
    with pytest.raises(ValueError, match="length"):
        build_token_pair(model, it, lambda ids: ids[:-1], clean_target="3", corrupt_target="4")
    rows = patch_pair(model, pair, [PatchSpec("resid", 0, "edit")], directions=["denoise"])
    assert len(rows) == 1 and np.isfinite(rows[0]["logit_diff"])


@pytest.mark.parametrize("component", ["attn", "mlp"])
def test_attn_mlp_patches_match_plain_torch_hooks(model, pairs, component):
    """nnsight patching of a sub-module output equals the same edit done with plain torch hooks."""
    pair = pairs[0]
    layer = 0
    _, _, acts = reference_run(model, pair, [(component, layer)])
    spec = PatchSpec(component, layer, "edit")
    got = patched_logits(model, pair.corrupt_ids, [spec], acts, 0, pair)[0]
    idx = torch.tensor(pair.positions["edit"])
    clean_src = acts[(component, layer)][0]
    mod = model.hf.model.layers[layer].self_attn if component == "attn" else model.hf.model.layers[layer].mlp

    def hook(_m, _inp, out):
        t = out[0] if isinstance(out, tuple) else out
        t = t.clone()
        t[0, idx] = clean_src[idx]
        return (t, *out[1:]) if isinstance(out, tuple) else t

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            want = model.hf(**model.batch([pair.corrupt_ids])).logits[0, -1]
    finally:
        h.remove()
    assert torch.allclose(got, want, atol=1e-4)
    _, corrupt_l, _ = reference_run(model, pair, [(component, layer)])
    assert not torch.allclose(got, corrupt_l, atol=1e-6)  # the patch did something
