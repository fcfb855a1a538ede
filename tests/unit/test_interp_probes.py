"""Probes on synthetic activations (a planted linear signal must be found, its absence must show),
and the controller-aggregation diagnosis over trajectories."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rlm_rig.interp.methods.aggregation import diagnose_aggregation
from demo_run import make_demo_run
from rlm_rig.interp.methods.probes import probe_layer, shuffle_by_group


def _data(signal: float, seed: int = 0, n_chunks: int = 240, rows_per_chunk: int = 2, d: int = 48):
    rng = np.random.default_rng(seed)
    y_chunk = rng.integers(0, 5, size=n_chunks)
    groups = np.repeat(np.arange(n_chunks), rows_per_chunk)
    y = y_chunk[groups]
    dirs = rng.normal(size=(5, d))
    x = rng.normal(size=(len(y), d)) + signal * dirs[y]
    return x, y, groups


def test_probe_finds_a_planted_signal():
    x, y, g = _data(signal=2.0)
    worker = np.where(np.arange(len(y)) % 4 == 0, y + 1, y).astype(float)  # worker wrong on 1/4 of rows
    r = probe_layer(x, y, g, worker, seed=0)
    assert r.probe_acc > 0.9
    assert r.control_acc < 0.45 and r.selectivity > 0.5
    assert 0.6 < r.worker_acc < 0.9
    # represented but not verbalized: probe right where the worker is wrong
    assert r.rnv_given_worker_wrong > 0.85 and r.rnv_rate == pytest.approx(
        r.rnv_given_worker_wrong * (1 - r.worker_acc), abs=1e-9)


def test_probe_reports_no_signal_when_there_is_none():
    x, y, g = _data(signal=0.0)
    r = probe_layer(x, y, g, None, seed=0)
    assert r.probe_acc < 0.4 and abs(r.selectivity) < 0.2
    assert np.isnan(r.worker_acc)


def test_repeated_splits_average_and_tighten_the_null():
    x, y, g = _data(signal=2.0, n_chunks=80)
    many = probe_layer(x, y, g, None, seed=3, n_splits=8)
    assert many.probe_acc > 0.9 and many.selectivity > 0.5 and many.n_test == pytest.approx(0.3 * 160, abs=2)
    x0, y0, g0 = _data(signal=0.0, n_chunks=80)
    sel = [abs(probe_layer(x0, y0, g0, None, seed=s, n_splits=8).selectivity) for s in range(5)]
    sel1 = [abs(probe_layer(x0, y0, g0, None, seed=s).selectivity) for s in range(5)]
    assert max(sel) < 0.15 and np.mean(sel) <= np.mean(sel1) + 1e-9  # averaging shrinks chance gaps
    with pytest.raises(ValueError, match="n_splits"):
        probe_layer(x, y, g, None, n_splits=0)


def test_split_is_by_chunk_and_control_keeps_chunks_consistent():
    x, y, g = _data(signal=1.0, rows_per_chunk=3)
    yc = shuffle_by_group(y, g, np.random.default_rng(0))
    for chunk in np.unique(g)[:20]:
        assert len(set(yc[g == chunk])) == 1
    assert sorted(yc[::3]) == sorted(y[::3])
    with pytest.raises(ValueError, match="at least 4 chunks"):
        probe_layer(x[:6], y[:6], g[:6])


def test_aggregation_diagnosis(tmp_path):
    run = make_demo_run(tmp_path, n_samples=3, chunks_per_sample=3, wrong_every=10**6)  # worker always right
    tdir = run / "trajectories"
    # demo-000: right chain. demo-001: sub_call answers right, final != their sum (controller error).
    # demo-002: one sub_call answer wrong (worker error).
    t1 = json.loads((tdir / "demo-001.json").read_text())
    assert t1["final_answer"] != str(sum(int(s["response"].split()[2]) for s in t1["sub_calls"]))
    t2 = json.loads((tdir / "demo-002.json").read_text())
    n = int(t2["sub_calls"][1]["response"].split()[2])
    t2["sub_calls"][1]["response"] = f"There are {n + 3} rolls."
    (tdir / "demo-002.json").write_text(json.dumps(t2))
    per_sample, per_sub = diagnose_aggregation(run)
    cat = dict(zip(per_sample["sample"], per_sample["category"]))
    assert cat == {"demo-000": "correct_chain", "demo-001": "aggregation_error", "demo-002": "worker_error"}
    assert per_sample.set_index("sample").loc["demo-000", "coverage"] == pytest.approx(1.0, abs=0.01)
    assert not per_sample["chunk_overlap"].any()
    assert per_sub["worker_correct"].sum() == 8
    # a user-given gold mapping overrides the regex proxy
    gold = {(s, i): 0 for s in ("demo-000", "demo-001", "demo-002") for i in range(3)}
    ps2, _ = diagnose_aggregation(run, gold)
    assert (ps2["sum_chunk_gold"] == 0).all()
    assert (ps2["sum_worker_answers"] > 0).all() and set(ps2["category"]) == {"worker_error"}


def test_heldout_predictions_one_per_chunk_from_probes_that_never_saw_it(tmp_path):
    """The loss ledger's per-chunk probe verdicts: a planted signal is decoded held-out; without one it is not."""
    import torch

    from rlm_rig.interp.data.shards import ShardWriter
    from rlm_rig.interp.methods.probes import heldout_predictions

    for signal, floor in ((3.0, 0.9), (0.0, None)):
        x, y, g = _data(signal=signal, n_chunks=60, rows_per_chunk=1)
        cap = tmp_path / f"cap{signal}"
        with ShardWriter(cap, shard_bytes=1 << 20, dtype=torch.float32) as w:
            rows = [dict(run="r", sample=f"s{int(c)}", sub_call=0, gold=int(label), component="resid", layer=3,
                         position="last") for c, label in zip(g, y)]
            w.add("resid.3", torch.tensor(x, dtype=torch.float32), rows)
        out = heldout_predictions(cap, layer=3)
        assert len(out) == 60 and out["sample"].is_unique
        acc = float((out["probe_pred"] == out["gold"]).mean())
        assert acc > floor if floor else acc < 0.5
