"""Issue 23 §2: `interp patch|heads --ray local` send the pairs' sweeps to Ray tasks (real Ray, loopback) and write
the same tables as a single-node run, on the tiny fp32 model and the same pairs."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from rlm_rig.experiments.cli.interp import interp_app
from demo_run import make_demo_run

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("command,table", [("patch", "patching.parquet"), ("heads", "heads.parquet")])
def test_ray_sweep_writes_the_single_node_tables(tmp_path, command, table):
    run = make_demo_run(tmp_path / "run", n_samples=4, chunks_per_sample=3, lines_per_chunk=6)
    cfg = tmp_path / "profile.yaml"
    cfg.write_text("worker:\n  model: tiny\n  dtype: float32\n  server:\n    port: 18398\n"
                   "interp:\n  device: cpu\n  n_pairs: 3\n  components: [resid, attn]\n  n_boot: 100\n")
    r = CliRunner()
    outs = {}
    for tag, more in (("one", []), ("ray", ["--ray", "local"])):
        out = tmp_path / f"{command}-{tag}"
        res = r.invoke(interp_app, [command, str(run), "--config", str(cfg), "--out", str(out), *more])
        assert res.exit_code == 0, res.output + repr(res.exception)
        outs[tag] = out
        assert ("pairs in" in res.output and "task(s) on local" in res.output) == (tag == "ray"), res.output
    one, ray = (pd.read_parquet(outs[t] / table) for t in ("one", "ray"))
    assert one["pair"].nunique() == 3 and len(one) > 0
    pd.testing.assert_frame_equal(one, ray)
    agg = table.replace(".parquet", "_agg.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(outs["one"] / agg), pd.read_parquet(outs["ray"] / agg))
    pairs = [(outs[t] / "pairs.jsonl") for t in ("one", "ray")]
    if pairs[0].exists():
        assert pairs[0].read_text() == pairs[1].read_text()


def test_ray_sweep_bad_address_is_one_line(tmp_path):
    run = make_demo_run(tmp_path / "run", n_samples=2, chunks_per_sample=2, lines_per_chunk=6)
    res = CliRunner().invoke(interp_app, ["patch", str(run), "--ray", "127.0.0.1:1", "--out", str(tmp_path / "o"),
                                          "--config", "cpu-tiny"])
    assert res.exit_code == 2 and "no Ray head answers" in res.output, res.output
