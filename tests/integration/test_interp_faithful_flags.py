"""Every analysis after capture knows which sub_calls were faithful to what vLLM generated: the
probes count (and, with faithful_only, drop) unfaithful ones, the aggregation check flags them.

The capture is real (tiny model, nnsight). The demo run's answers were written by hand, not by the
model, so capture finds them all unfaithful; the table is then set to "all faithful but one", as a
real run with one drifting replay would be, so the test checks the flags' path, not a drift figure."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from rlm_rig.experiments.cli.interp import interp_app
from demo_run import make_demo_run
from rlm_rig.interp.methods.faithfulness import FAITHFULNESS_FILE
from rlm_rig.interp.methods.probes import run_probes


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    run = make_demo_run(root / "run", n_samples=6, chunks_per_sample=3, lines_per_chunk=6)
    cfg = root / "profile.yaml"
    cfg.write_text("worker:\n  model: tiny\n  dtype: float32\n  server:\n    port: 18399\n"
                   "interp:\n  device: cpu\n  components: [resid]\n  capture_positions: [last]\n  max_new_tokens: 8\n")
    r = CliRunner().invoke(interp_app, ["capture", str(run), "--config", str(cfg), "--no-replay"])
    assert r.exit_code == 0, r.output
    cap = run / "interp" / "capture"
    faith = pd.read_parquet(cap / FAITHFULNESS_FILE)
    assert len(faith) == 18 and not faith["faithful"].any()  # hand-written answers: not the model's
    victim = (str(faith.loc[0, "sample"]), int(faith.loc[0, "sub_call"]))
    faith["faithful"] = True
    faith.loc[0, "faithful"] = False
    faith.to_parquet(cap / FAITHFULNESS_FILE, index=False)
    return run, cap, cfg, victim, len(faith)


def test_probes_count_and_can_drop_unfaithful_sub_calls(captured):
    run, cap, _, _, n = captured
    all_rows = run_probes(cap, n_splits=1)
    assert (all_rows["n_unfaithful"] == 1).all() and (all_rows["n_faithful"] == n - 1).all()
    kept = run_probes(cap, n_splits=1, faithful_only=True)
    assert (kept["n_unfaithful"] == 0).all() and (kept["n_faithful"] == n - 1).all()


def test_aggregation_flags_each_sub_call(captured, tmp_path):
    run, cap, cfg, victim, _ = captured
    from rlm_rig.interp.jobs import aggregation_job

    aggregation_job(run, tmp_path / "agg")
    per_sub = pd.read_csv(tmp_path / "agg" / "aggregation_by_sub_call.csv")
    flags = {(str(s), int(c)): f for s, c, f in zip(per_sub["sample"], per_sub["sub_call"], per_sub["faithful"])}
    assert flags[victim] is False or flags[victim] == False  # noqa: E712
    assert sum(1 for v in flags.values() if v == True) == len(flags) - 1  # noqa: E712
    r = CliRunner().invoke(interp_app, ["report", str(run), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    rep = pd.read_csv(run / "interp" / "report" / "aggregation_by_sub_call.csv")
    assert "faithful" in rep.columns and (rep["faithful"] == False).sum() == 1  # noqa: E712
    assert json.loads((run / "interp" / "report" / "report.json").read_text())["sections"]
