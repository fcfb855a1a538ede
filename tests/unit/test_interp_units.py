"""interp pieces that need no model: config, run folders, roll regex and corruptions, stats,
metrics, shards, GPU release."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlm_rig.interp.config import InterpConfigError
from rlm_rig.interp.profile import load_interp_config
from demo_run import make_demo_run, worker_messages
from rlm_rig.interp.gpu import ReleaseError, release_worker_gpu, read_pid_file
from rlm_rig.interp.config import InterpConfig
from rlm_rig.interp.stats.patch_metrics import patch_metrics
from rlm_rig.interp.data.rolls import (
    chunk_gold, corrupt_add, corrupt_alter, corrupt_remove, count_roll_lines, find_mentions, parse_count,
    parse_value_filter,
)
from rlm_rig.interp.data.selection import RunDirError, Selection, SubCallRef, iter_sub_calls, locate_chunk
from rlm_rig.interp.data.shards import ShardWriter, load_rows, read_index
from rlm_rig.interp.stats.means import aggregate
from rlm_rig.records.stats import mean_ci


# -- config ---------------------------------------------------------------------------------------
def test_config_reads_worker_model_and_interp_section(tmp_path):
    """An interp-only profile (worker + interp, as interp's own loader used to read) loads through the one loader."""
    p = tmp_path / "p.yaml"
    p.write_text("worker:\n  model: tiny\n  dtype: float16\ninterp:\n  layers: [0, -1]\n  n_pairs: 3\n")
    cfg, spec, _ = load_interp_config(p)
    assert spec.model == "tiny" and spec.dtype == "float16"
    assert cfg.layers == [0, -1] and cfg.n_pairs == 3
    cfg2, spec2, _ = load_interp_config(p, {"dtype": "float32", "n_pairs": None})
    assert spec2.dtype == "float32" and cfg2.n_pairs == 3  # None overrides are ignored


def test_config_errors_name_the_problem(tmp_path):
    def profile(text):
        p = tmp_path / "q.yaml"
        p.write_text(text)
        return p

    with pytest.raises(InterpConfigError, match="interp.unknown_key: unknown key"):
        load_interp_config(profile("worker: {model: tiny}\ninterp: {unknown_key: 1}\n"))
    with pytest.raises(InterpConfigError, match="no model"):
        load_interp_config(None, {})
    with pytest.raises(InterpConfigError, match="capture position"):
        load_interp_config(profile("worker: {model: x/y}\ninterp: {capture_positions: [middle]}\n"))
    with pytest.raises(InterpConfigError, match="not found"):
        load_interp_config(tmp_path / "nope.yaml")
    with pytest.raises(InterpConfigError, match="interp.model.*does not exist"):
        load_interp_config(None, {"model": str(tmp_path / "no-such-folder")})  # replay checks the model


def test_repo_profiles_parse():
    root = Path(__file__).resolve().parents[2] / "configs"
    for y in sorted(root.glob("*.yaml")):
        cfg, spec, _ = load_interp_config(y)
        assert spec.model


# -- run folders ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return make_demo_run(tmp_path_factory.mktemp("run"), n_samples=4, chunks_per_sample=3)


def test_demo_run_is_a_valid_trajectory():
    Trajectory = pytest.importorskip("rlm_rig.records.trajectory").Trajectory
    d = make_demo_run(Path(__import__("tempfile").mkdtemp()), n_samples=1)
    t = Trajectory.load(next((d / "trajectories").glob("*.json")))
    assert t.sub_calls and t.sub_calls[0].messages[1]["role"] == "user"


def test_selection(demo_run):
    all_items = list(iter_sub_calls(demo_run))
    assert len(all_items) == 12
    single = list(iter_sub_calls(demo_run, Selection(question_types=["singledoc_rolls"])))
    assert {i.question_type for i in single} == {"singledoc_rolls"} and len(single) == 6
    right = list(iter_sub_calls(demo_run, Selection(correct=True)))
    wrong = list(iter_sub_calls(demo_run, Selection(correct=False)))
    assert len(right) + len(wrong) == 12 and all(i.score == 1.0 for i in right) and all(i.score < 1 for i in wrong)
    refs = [SubCallRef.parse("demo-001:2"), SubCallRef.parse("demo-003:0")]
    got = list(iter_sub_calls(demo_run, Selection(refs=refs)))
    assert [(i.sample, i.sub_call) for i in got] == [("demo-001", 2), ("demo-003", 0)]
    assert len(list(iter_sub_calls(demo_run, Selection(limit=5)))) == 5
    with pytest.raises(RunDirError, match="no trajectory"):
        list(iter_sub_calls(demo_run, Selection(refs=[SubCallRef("nope", 1)])))
    with pytest.raises(RunDirError, match="SAMPLE:SUBCALL"):
        SubCallRef.parse("no-colon")
    with pytest.raises(RunDirError, match="does not exist"):
        list(iter_sub_calls(demo_run / "missing"))


def test_selection_by_score_needs_samples(tmp_path):
    run = make_demo_run(tmp_path, n_samples=1)
    (run / "samples.jsonl").unlink()
    assert len(list(iter_sub_calls(run))) == 3
    with pytest.raises(RunDirError, match="samples.jsonl"):
        list(iter_sub_calls(run, Selection(correct=True)))


def test_locate_chunk_rig_template_and_fallback():
    chunk = "Matt: Roll for initiative.\nLaura: I rolled a 15."
    loc = locate_chunk(worker_messages(chunk, "Count rolls."), "Count rolls.", len(chunk))
    assert loc.exact and worker_messages(chunk, "Count rolls.")[loc.message]["content"][loc.start:loc.end] == chunk
    msgs = [{"role": "user", "content": f"Count rolls.\n---\n{chunk}\n"}]
    loc2 = locate_chunk(msgs, "Count rolls.", len(chunk))
    assert not loc2.exact and chunk in msgs[0]["content"][loc2.start:loc2.end]


# -- rolls ----------------------------------------------------------------------------------------------
def test_roll_mentions_and_counts():
    text = ("Laura: I rolled a 15.\nTravis: Natural 20!\nSam: we go to the inn.\nMatt: Roll a d20 for me.\n"
            "Liam: nat 1, ugh.")
    kinds = [m.kind for m in find_mentions(text)]
    assert kinds.count("verb") == 2 and kinds.count("nat") == 2 and kinds.count("die") == 1
    assert count_roll_lines(text) == 4
    assert count_roll_lines(text, 20) == 1 and count_roll_lines(text, 15) == 1
    assert parse_value_filter("How many natural 20s?") == 20 and parse_value_filter("Count the rolls") is None
    assert chunk_gold(text, "Count the dice rolls.") == 4
    assert chunk_gold(text, "Who speaks first?") is None
    assert parse_count("There are 7 rolls") == 7 and parse_count("so \\boxed{12}.") == 12 and parse_count("none") is None


@pytest.mark.parametrize("fn,deltas,value", [(corrupt_remove, {-1}, None), (corrupt_add, {1}, None),
                                              (corrupt_alter, {-1, 1}, 20), (corrupt_remove, {-1}, 20)])
def test_corruptions_move_the_count_by_one(fn, deltas, value):
    text = "Laura: I rolled a 15.\nTravis: Natural 20!\nSam: He said we go to the inn.\nMatt: ok."
    edits = list(fn(text, random.Random(0), value))
    assert edits
    for e in edits:
        assert count_roll_lines(e.text, value) - count_roll_lines(text, value) in deltas
        assert e.text != text and len(e.text.splitlines()) == len(text.splitlines())
    assert list(corrupt_alter(text, random.Random(0), None)) == []  # no value filter: count cannot change


# -- statistics and metrics ------------------------------------------------------------------------
def test_ci_bootstrap_and_t():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.0, size=400)
    m, lo, hi = mean_ci(x, method="bootstrap", n_boot=1000)
    mt, lot, hit = mean_ci(x, method="t")
    assert lo < m < hi and lot < mt < hit and abs((hi - lo) - (hit - lot)) < 0.05
    assert lo < 0.3 < hi
    assert np.isnan(mean_ci([np.nan])[0])
    import pandas as pd

    df = pd.DataFrame({"component": "resid", "layer": [0, 0, 1, 1], "position": "last", "direction": "denoise",
                       "normalized": [0.0, 1.0, 0.5, np.nan]})
    agg = aggregate(df, n_boot=200)
    assert agg.loc[agg.layer == 0, "mean"].item() == 0.5 and agg.loc[agg.layer == 1, "n"].item() == 1


def test_patch_metrics_extremes():
    clean = torch.tensor([2.0, 0.0, 1.0])
    corrupt = torch.tensor([0.0, 2.0, 1.0])
    m = patch_metrics(torch.stack([clean, corrupt, (clean + corrupt) / 2]), clean, corrupt, 0, 1)
    assert m["normalized"] == pytest.approx([1.0, 0.0, 0.5])
    assert m["kl_from_clean"][0] == pytest.approx(0.0, abs=1e-6) and m["kl_from_corrupt"][1] == pytest.approx(0.0, abs=1e-6)
    same = patch_metrics(clean[None], clean, clean, 0, 1)
    assert np.isnan(same["normalized"][0])


# -- shards -------------------------------------------------------------------------------------------
def test_shards_stream_and_roundtrip(tmp_path):
    w = ShardWriter(tmp_path, shard_bytes=3000, dtype=torch.float32)
    acts_all = []
    for i in range(10):
        a = torch.randn(3, 64)
        rows = [dict(run="r", sample=f"s{i}", sub_call=j, component="resid", layer=1, position="last") for j in range(3)]
        w.add("resid.1", a, rows)
        acts_all.append(a)
    w.close()
    assert len(w.shards) >= 3  # flushed while streaming, not all at the end
    idx = read_index(tmp_path)
    assert len(idx) == 30 and idx["shard"].nunique() == len(w.shards)
    back = load_rows(tmp_path, idx)
    assert np.allclose(back, torch.cat(acts_all).numpy())
    sub = idx.sample(frac=1.0, random_state=0)
    assert np.allclose(load_rows(tmp_path, sub), torch.cat(acts_all).numpy()[sub.index.to_numpy()])


# -- GPU release ------------------------------------------------------------------------------------------
def _spawn(marker: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])


def test_release_stops_only_a_vllm_process(tmp_path):
    good = _spawn("vllm.entrypoints.openai.api_server")
    bad = _spawn("something-else")
    try:
        pf = tmp_path / "worker-server.pid"
        pf.write_text(json.dumps({"pid": good.pid, "url": "http://127.0.0.1:18301/v1"}))
        assert read_pid_file(pf) == good.pid
        assert release_worker_gpu(InterpConfig(stop_server=False)) == []  # not asked: nothing stops
        stopped = release_worker_gpu(InterpConfig(stop_server=True), run_dir=tmp_path)
        assert good.pid in stopped
        assert good.wait(timeout=10) is not None
        with pytest.raises(ReleaseError, match="refusing"):
            release_worker_gpu(InterpConfig(), target=str(bad.pid))
        assert bad.poll() is None
    finally:
        for p in (good, bad):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_roll_query_filters():
    from rlm_rig.interp.data.rolls import RollQuery, parse_roll_query

    ctx = "Laura plays the character Vex'ahlia.\nTravis plays the character Grog.\n"
    text = "Laura: I rolled a 15.\nTravis: I rolled a 3.\nLaura: natural 20!\nLaura: we went on.\nTravis: he said no."
    q = parse_roll_query("Total number of rolls by the player Laura in this episode? Count only this excerpt.")
    assert q == RollQuery(None, "Laura") and count_roll_lines(text, q) == 2
    q = parse_roll_query("Total number of rolls by the character Grog in this episode?", ctx)
    assert q == RollQuery(None, "Travis") and count_roll_lines(text, q) == 1
    assert parse_roll_query("Total number of rolls by the character Grog in this episode?", "") is None
    assert parse_roll_query("Total number of rolls of type Intelligence in this episode?") is None
    assert parse_roll_query("How many natural 20s did Laura get? Count the rolls.").value == 20
    assert chunk_gold(text, "Total number of rolls by the player Laura in this episode?") == 2
    assert chunk_gold(text, "Total number of rolls of type Stealth in this episode?") is None
    # corruptions respect the speaker filter
    q = RollQuery(None, "Laura")
    removed = list(corrupt_remove(text, random.Random(0), q))
    added = list(corrupt_add(text, random.Random(0), q))
    assert removed and added
    for e in removed:
        assert count_roll_lines(e.text, q) == 1 and count_roll_lines(e.text, RollQuery(None, "Travis")) == 1
    for e in added:
        assert count_roll_lines(e.text, q) == 3 and count_roll_lines(e.text, RollQuery(None, "Travis")) == 1


def test_nested_rlm_worker_calls_are_walked(tmp_path):
    run = make_demo_run(tmp_path, n_samples=1, chunks_per_sample=3)
    path = run / "trajectories" / "demo-000.json"
    t = json.loads(path.read_text())
    inner = [dict(s, depth=2) for s in t["sub_calls"][:2]]
    parent = dict(t["sub_calls"][2], id=7, messages=None, response="5",
                  nested_trajectory=dict(t, run_id="nested", question="q", sub_calls=inner))  # a whole Trajectory
    t["sub_calls"] = [parent]
    path.write_text(json.dumps(t))
    items = list(iter_sub_calls(run))
    assert [(i.sample, i.sub_call, i.depth) for i in items] == [("demo-000/7", 0, 2), ("demo-000/7", 1, 2)]
    got = list(iter_sub_calls(run, Selection(refs=[SubCallRef.parse("demo-000/7:1")])))
    assert [(i.sample, i.sub_call) for i in got] == [("demo-000/7", 1)]
    assert list(iter_sub_calls(run, Selection(depth=1))) == []


def test_denominator_warnings_name_the_floor_and_the_16bit_rounding():
    from rlm_rig.interp.stats.means import denominator_warnings

    # SmolLM2 in bfloat16: 5 of 6 denominators exactly 0 (measured, docs/INTERP_SMOLLM2.md)
    w = denominator_warnings([0.0, 0.0, 0.0, 0.125, 0.0, 0.0], "bfloat16", 0.1)
    assert len(w) == 2 and "5 of 6" in w[0] and "min_denominator=0.1" in w[0]
    assert "exactly 0 in bfloat16" in w[1] and "0.125-0.25" in w[1] and "float32" in w[1]
    # the same numbers in float32: under the floor, but not a rounding artefact
    assert len(denominator_warnings([0.0, 0.003, 0.014, 0.2], "float32", 0.1)) == 1
    # a model that reacts: nothing to say
    assert denominator_warnings([1.2, -0.8, 0.4], "bfloat16", 0.1) == []
    assert denominator_warnings([], "float16", 0.1) == []
    assert "0.015625-0.03125" in denominator_warnings([0.0, 0.0], "float16", 0.1)[1]
