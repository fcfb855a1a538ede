"""interp on the real SmolLM2-135M-Instruct (`-m smollm`): a counting run folder with exact gold,
line-swap k±1 pairs of equal token length, the patching sanity laws, and structure above uniform.

Lean on purpose (CPU CI): 8 ten-line passages answered by SmolLM2 itself (transformers greedy, the
rig's in-process worker), 4 pairs, 4 layers, denoising only.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.smollm, pytest.mark.slow]

LAYERS = [0, 9, 18, 29]
POSITIONS = ["chunk_before", "edit", "edit_next", "chunk_after", "post_chunk", "last", "all"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from rlm_rig.experiments.studies.counting import make_counting_set
    from rlm_rig.experiments.studies.counting_run import answer_items, write_counting_run
    from rlm_rig.worker.sync import SyncWorker
    from rlm_rig.worker.hf import TransformersWorker
    from rlm_rig.worker.smollm2 import ensure_smollm2

    items = make_counting_set(seed=0, ks=[2, 3, 4, 5], lengths=(10,), per_cell=2)
    with SyncWorker(TransformersWorker(ensure_smollm2(), dtype="bfloat16", max_tokens=16)) as sync:
        answers = answer_items(sync, items, max_tokens=16)
    assert all(a.error is None and a.text for a in answers)
    return write_counting_run(tmp_path_factory.mktemp("run"), items, answers, worker_model="smollm2",
                              worker_config={"model": "smollm2", "dtype": "bfloat16", "max_tokens": 16})


@pytest.fixture(scope="module")
def model():
    from rlm_rig.interp.model import ReplayModel

    return ReplayModel("smollm2", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def pairs(model, run):
    from rlm_rig.interp.methods.capture import attach_gold
    from rlm_rig.interp.data.pairs import build_counting_pairs
    from rlm_rig.interp.data.selection import iter_sub_calls

    items = [attach_gold(i) for i in iter_sub_calls(run)]
    ps, skipped = build_counting_pairs(model, items, n_pairs=4, corruptions=["line_remove", "line_add"], seed=0)
    assert len(ps) == 4, skipped
    return ps


@pytest.fixture(scope="module")
def rows(model, pairs):
    from rlm_rig.interp.methods.patching import patch_pair, sweep_specs

    out = []
    for p in pairs:
        out += patch_pair(model, p, sweep_specs(p, LAYERS, ["resid"], POSITIONS, []), directions=["denoise"])
    return pd.DataFrame(out)


def test_run_folder_has_exact_gold_and_rig_messages(run):
    from rlm_rig.interp.data.selection import iter_sub_calls, load_gold_file

    gold = load_gold_file(run / "gold.jsonl")
    items = list(iter_sub_calls(run))
    assert len(items) == len(gold) == 8
    for it in items:
        k = gold[(it.sample, it.sub_call)]
        assert f"-k{k}-" in it.sample and it.chunk_loc is not None and it.chunk_loc.exact
        assert it.messages[0]["content"].startswith("You are a careful reader.")
        assert it.chunk_text.count(" rolled a") == k
    from rlm_rig.records.trajectory import SCHEMA_VERSION

    assert json.loads((run / "trajectories" / f"{items[0].sample}.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_pairs_are_exact_k_plus_minus_one_with_equal_length(pairs, run):
    from rlm_rig.interp.data.selection import load_gold_file

    gold = load_gold_file(run / "gold.jsonl")
    for p in pairs:
        k = gold[(p.sample, p.sub_call)]
        assert len(p.clean_ids) == len(p.corrupt_ids)
        assert int(p.clean_target) == k
        assert int(p.corrupt_target) == k + (1 if p.corruption == "line_add" else -1)
        assert p.positions["edit"] and p.positions["last"] == [p.seq_len - 1]


def test_sanity_laws_on_smollm2(rows):
    r = rows.set_index(["pair", "layer", "position"])
    checked = 0
    for pair in rows["pair"].unique():
        full = r.loc[(pair, 29, "all")]  # every position of the last layer: the clean run
        assert full["logit_diff"] == pytest.approx(full["logit_diff_clean"], abs=1e-3)
        assert full["kl_from_clean"] == pytest.approx(0.0, abs=1e-4)
        gap = full["logit_diff_clean"] - full["logit_diff_corrupt"]
        if abs(gap) > 0.02:  # below that, float noise of the batched forward is magnified by 1/gap
            assert full["normalized"] == pytest.approx(1.0, abs=1e-2)
            checked += 1
        for li in LAYERS:  # identical tokens before the edit: patching them changes nothing
            before = r.loc[(pair, li, "chunk_before")]
            assert before["logit_diff"] == pytest.approx(before["logit_diff_corrupt"], abs=1e-3)
    assert checked >= 2  # SmolLM2's gaps are small (0.01-0.1 logits) but not all below the cut


@pytest.mark.parametrize("metric,agg", [("kl_recovery", "mean"), ("normalized", "median")])
def test_effect_concentrates_on_edit_and_last(rows, metric, agg):
    from rlm_rig.interp.stats.heatmap_structure import focus_shares, heatmap_from_rows

    hm = heatmap_from_rows(rows, positions=POSITIONS[:-1], metric=metric, agg=agg)
    overall = focus_shares(hm, ("edit", "last"))[-1]
    assert overall.share > overall.uniform_tokens  # far above an even spread over tokens
    assert overall.share > overall.uniform_groups  # and above an even spread over the groups
    # the first layer reads the edited tokens, the last layer only the last position
    assert hm.cell(0, "edit") > 0.5 > abs(hm.cell(0, "last"))
    assert hm.cell(29, "last") == pytest.approx(1.0, abs=1e-3)
    assert np.isfinite(hm.values).all()


# Floor for attribution vs exact patching on SmolLM2, float32, layer 15, Spearman over tokens after the edit.
# The study (docs/INTERP_SMOLLM2.md) measured 0.73-0.98 per pair at this layer; an indexing, direction or sign
# error gives ~0 or less, and a bf16 replay (logits in 0.125 steps) gave ~0.1. Every 2nd token keeps it ~2 min.
SMOLLM2_SPEARMAN_FLOOR = 0.5


def test_attribution_matches_exact_patching_on_smollm2(model, pairs):
    from rlm_rig.interp.methods.attribution import attribute_pair, compare, exact_sites, first_difference

    pair = min(pairs, key=lambda p: p.seq_len)
    res = attribute_pair(model, pair, direction="denoise")
    lo = first_difference(pair)
    sites = [(c, 15, t) for c in ("resid", "attn", "mlp") for t in range(lo, pair.seq_len, 2)]
    exact = exact_sites(model, pair, sites, batch_size=16)
    rows = pd.DataFrame(compare(res, exact, k=5))
    print(rows.to_string())
    assert (rows["spearman_after_edit"] >= SMOLLM2_SPEARMAN_FLOOR).all(), rows
    assert rows["n_sites"].min() >= 20
