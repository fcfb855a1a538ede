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
    from experiments.counting import make_counting_set
    from experiments.counting_run import answer_items, write_counting_run
    from worker import SyncWorker, TransformersWorker, ensure_smollm2

    items = make_counting_set(seed=0, ks=[2, 3, 4, 5], lengths=(10,), per_cell=2)
    with SyncWorker(TransformersWorker(ensure_smollm2(), dtype="bfloat16", max_tokens=16)) as sync:
        answers = answer_items(sync, items, max_tokens=16)
    assert all(a.error is None and a.text for a in answers)
    return write_counting_run(tmp_path_factory.mktemp("run"), items, answers, worker_model="smollm2",
                              worker_config={"model": "smollm2", "dtype": "bfloat16", "max_tokens": 16})


@pytest.fixture(scope="module")
def model():
    from interp.model import ReplayModel

    return ReplayModel("smollm2", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def pairs(model, run):
    from interp.capture import attach_gold
    from interp.pairs import build_counting_pairs
    from interp.runs import iter_sub_calls

    items = [attach_gold(i) for i in iter_sub_calls(run)]
    ps, skipped = build_counting_pairs(model, items, n_pairs=4, corruptions=["line_remove", "line_add"], seed=0)
    assert len(ps) == 4, skipped
    return ps


@pytest.fixture(scope="module")
def rows(model, pairs):
    from interp.patching import patch_pair, sweep_specs

    out = []
    for p in pairs:
        out += patch_pair(model, p, sweep_specs(p, LAYERS, ["resid"], POSITIONS, []), directions=["denoise"])
    return pd.DataFrame(out)


def test_run_folder_has_exact_gold_and_rig_messages(run):
    from interp.runs import iter_sub_calls, load_gold_file

    gold = load_gold_file(run / "gold.jsonl")
    items = list(iter_sub_calls(run))
    assert len(items) == len(gold) == 8
    for it in items:
        k = gold[(it.sample, it.sub_call)]
        assert f"-k{k}-" in it.sample and it.chunk_loc is not None and it.chunk_loc.exact
        assert it.messages[0]["content"].startswith("You are a careful reader.")
        assert it.chunk_text.count(" rolled a") == k
    assert json.loads((run / "trajectories" / f"{items[0].sample}.json").read_text())["schema_version"] == 1


def test_pairs_are_exact_k_plus_minus_one_with_equal_length(pairs, run):
    from interp.runs import load_gold_file

    gold = load_gold_file(run / "gold.jsonl")
    for p in pairs:
        k = gold[(p.sample, p.sub_call)]
        assert len(p.clean_ids) == len(p.corrupt_ids)
        assert int(p.clean_target) == k
        assert int(p.corrupt_target) == k + (1 if p.corruption == "line_add" else -1)
        assert p.positions["edit"] and p.positions["last"] == [p.seq_len - 1]


def test_sanity_laws_on_smollm2(rows):
    at = rows.set_index(["pair", "layer", "position"])["normalized"]
    for pair in rows["pair"].unique():
        assert at[(pair, 29, "all")] == pytest.approx(1.0, abs=1e-3)  # all positions, last layer: clean
        for li in LAYERS:
            assert at[(pair, li, "chunk_before")] == pytest.approx(0.0, abs=1e-3)  # identical tokens: no effect


def test_effect_concentrates_on_edit_and_last(rows):
    from interp.structure import focus_shares, heatmap_from_rows

    hm = heatmap_from_rows(rows, positions=POSITIONS[:-1])
    overall = focus_shares(hm, ("edit", "last"))[-1]
    assert overall.share > overall.uniform_tokens  # far above an even spread over tokens
    assert overall.share > overall.uniform_groups  # and above an even spread over the groups
    # early layers read the edited tokens, the last layer reads only the last position
    assert abs(hm.cell(0, "edit")) > abs(hm.cell(0, "last"))
    assert hm.cell(29, "last") == pytest.approx(1.0, abs=1e-3)
    assert np.isfinite(hm.values).all()
