"""Evaluations end to end on the bundled OOLONG-real sample with the tiny vLLM worker and a replay controller:
run folder contents, baselines, resume after SIGKILL, shard + merge, report, and `rlm-rig score`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.records.trajectory import read_jsonl
from rlm_rig.experiments.datasets.registry import load_examples
from rlm_rig.records.runlog import EvalSpec
from rlm_rig.experiments.runs.evaluate import merge_runs, resume_eval, run_eval
from rlm_rig.experiments.datasets.scoring import score_output

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


def cfg_for(url: str, *more: str):
    return load_config("cpu-tiny", [f"worker.server.url={url}", "worker.served_name=tiny", *more])


@pytest.fixture(scope="module")
def toy_rows():
    return {ex.id: ex for ex in load_examples("oolong-real", "toy")}


@pytest.fixture(scope="module")
def rlm_run(vllm_server, tmp_path_factory):
    rd = tmp_path_factory.mktemp("eval") / "run"
    res = run_eval(cfg_for(vllm_server), EvalSpec(dataset="oolong-real", source="toy", limit=4), rd, show_progress=False)
    return rd, res


def test_eval_run_folder(rlm_run, toy_rows):
    rd, res = rlm_run
    for name in ("config.yaml", "eval.json", "env.json", "samples.jsonl", "results.json"):
        assert (rd / name).exists(), name
    rows = read_jsonl(rd / "samples.jsonl")
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    for r in rows:
        ex = toy_rows[r["id"]]
        assert r["gold"] == ex.gold and r["question_type"] == "singledoc_rolls" and r["episodes"] == [1]
        assert r["context_chars"] == len(ex.context) and r["context_tokens"] > 0
        assert r["score"] == score_output("oolong-real", r["answer"], ex.gold).score
        assert r["stop_reason"] == "final" and r["n_sub_calls"] >= 2 and r["n_cells"] == 2
        assert r["worker_tokens_in"] > 0 and r["wall_s"] > 0
        traj = json.loads((rd / r["trajectory"]).read_text())
        assert traj["final_answer"] == r["answer"] and len(traj["sub_calls"]) == r["n_sub_calls"]
    results = json.loads((rd / "results.json").read_text())
    assert results["status"] == "complete" and results["n"] == 4
    assert results["mean_score"] == pytest.approx(sum(r["score"] for r in rows) / 4)
    env = json.loads((rd / "env.json").read_text())
    assert "sha" in env["git"] and "torch" in env["versions"] and env["server_flags"]["worker_url"]


def test_report_on_the_run(rlm_run, tmp_path):
    rd, _ = rlm_run
    from rlm_rig.experiments.analysis.report import write_report

    out = write_report([rd], tmp_path / "rep")
    assert (tmp_path / "rep" / "report.md").exists()
    for p in list(out["plots"].values()) + list(out["tables"].values()):
        assert Path(p).exists() and Path(p).stat().st_size > 0
    runs = pd.read_csv(out["tables"]["runs"])
    rows = read_jsonl(rd / "samples.jsonl")
    assert runs["n"].iloc[0] == 4
    assert runs["mean_score"].iloc[0] == pytest.approx(sum(r["score"] for r in rows) / 4)


@pytest.mark.parametrize("method", ["direct", "chunk-aggregate", "bm25-rag", "no-subcall"])
def test_baselines(vllm_server, tmp_path, method):
    rd = tmp_path / method
    replay = REPO / "configs" / "replays" / "chunk-count.yaml"
    res = run_eval(cfg_for(vllm_server), EvalSpec(dataset="oolong-real", source="toy", limit=2, method=method,
                                                  controller_replay=str(replay)), rd, show_progress=False)
    rows = read_jsonl(rd / "samples.jsonl")
    assert res["status"] == "complete" and len(rows) == 2 and all(r["method"] == method for r in rows)
    t = json.loads((rd / rows[0]["trajectory"]).read_text())
    if method == "direct":
        assert rows[0]["n_sub_calls"] == 1 and t["models"]["answerer"] == "worker"
        assert t["caps_hit"] and "truncated by rule 'head'" in t["caps_hit"][0]["detail"]  # 40K chars > 2K tokens
        assert t["sub_calls"][0]["chunk_start"] == 0
    elif method == "chunk-aggregate":
        spans = [(s["chunk_start"], s["chunk_end"]) for s in t["sub_calls"][:-1]]
        assert spans[0][0] == 0 and spans[-1][1] == t["doc_chars"]  # the map covers the whole document
        assert t["sub_calls"][-1]["instruction"] == "(baseline prompt)"  # the reduce
    elif method == "bm25-rag":
        assert any(s["instruction"] == "(retrieved)" for s in t["sub_calls"])
    else:  # no-subcall: the replay's sub_call_batch is refused, recorded as a cell error
        assert rows[0]["n_sub_calls"] == 0 and "sub_call is disabled" in (t["cells"][1]["error"] or "")


def test_resume_after_sigkill(vllm_server, tmp_path):
    rd = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlm_rig.experiments.cli", "eval", "--config", "cpu-tiny", "--dataset", "oolong-real",
           "--source", "toy", "--limit", "8", "--out", str(rd), "--no-report",
           "--set", f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny", "--set", "eval.max_samples=1"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(read_jsonl(rd / "samples.jsonl")) < 2:
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = read_jsonl(rd / "samples.jsonl")
    assert 2 <= len(before) < 8
    assert json.loads((rd / "results.json").read_text())["status"] == "running"  # killed: never marked done
    res = resume_eval(rd, show_progress=False)
    after = read_jsonl(rd / "samples.jsonl")
    ids = [r["id"] for r in after]
    assert len(ids) == 8 and len(set(ids)) == 8, "resume lost or duplicated samples"
    assert after[: len(before)] == before  # finished rows untouched
    assert res["status"] == "complete" and res["n"] == 8


def test_torn_last_line_is_repaired_on_resume(vllm_server, tmp_path):
    rd = tmp_path / "torn"
    run_eval(cfg_for(vllm_server), EvalSpec(dataset="oolong-real", source="toy", limit=1), rd, show_progress=False)
    with open(rd / "samples.jsonl", "a") as f:
        f.write('{"id": "half-writ')
    spec = json.loads((rd / "eval.json").read_text())
    spec["limit"] = 2
    (rd / "eval.json").write_text(json.dumps(spec))
    resume_eval(rd, show_progress=False)
    rows = read_jsonl(rd / "samples.jsonl")
    assert len(rows) == 2 and "half-writ" not in (rd / "samples.jsonl").read_text()


def test_shard_and_merge_equal_unsharded(vllm_server, tmp_path):
    cfg = cfg_for(vllm_server, "eval.max_samples=1")
    full = tmp_path / "full"
    run_eval(cfg, EvalSpec(dataset="oolong-real", source="toy", limit=5), full, show_progress=False)
    shards = []
    for i in range(2):
        rd = tmp_path / f"shard{i}"
        run_eval(cfg, EvalSpec(dataset="oolong-real", source="toy", limit=5, shard=(i, 2)), rd, show_progress=False)
        shards.append(rd)
    n0, n1 = (len(read_jsonl(s / "samples.jsonl")) for s in shards)
    assert (n0, n1) == (3, 2)
    merged = tmp_path / "merged"
    res = merge_runs(shards, merged)
    key = lambda r: (r["id"], r["answer"], r["score"])  # noqa: E731
    assert sorted(map(key, read_jsonl(merged / "samples.jsonl"))) == sorted(map(key, read_jsonl(full / "samples.jsonl")))
    assert res["n"] == 5
    for r in read_jsonl(merged / "samples.jsonl"):
        assert (merged / r["trajectory"]).exists()


def test_score_command(tmp_path):
    src = tmp_path / "outs.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"gold": "12", "output": "so \\boxed{12}"},
        {"gold": "12", "output": "\\boxed{13}"},
        {"gold": "Grog, Pike", "output": "\\boxed{Pike, Vex}"},
    ]) + "\n")
    r = subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", "score", "--dataset", "oolong-real", str(src)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    scored = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [s["score"] for s in scored] == [1.0, 0.75, 0.5]
    assert "mean score: 0.7500" in r.stderr


def test_interp_on_a_real_rig_run(rlm_run):
    """interp capture -> patch -> probe -> report on the trajectories of a real eval (tiny vLLM worker)."""
    from typer.testing import CliRunner

    from rlm_rig.experiments.cli.interp import interp_app

    rd, _ = rlm_run
    r = CliRunner()
    res = r.invoke(interp_app, ["capture", str(rd)])
    assert res.exit_code == 0, res.output
    faith = pd.read_parquet(rd / "interp" / "capture" / "faithfulness.parquet")
    assert len(faith) == sum(r_["n_sub_calls"] for r_ in read_jsonl(rd / "samples.jsonl"))
    # schema 2: the recorded vLLM tokens are teacher-forced (no greedy re-generation); same weights and
    # dtype (float32), so the replay's logprobs match the recorded ones
    assert (faith["source"] == "recorded").all() and faith["faithful"].mean() >= 0.9
    idx = pd.read_parquet(rd / "interp" / "capture" / "index.parquet")
    traj_ids = {p.stem for p in (rd / "trajectories").glob("*.json")}
    assert set(idx["sample"]) <= traj_ids and len(idx) > 0
    res = r.invoke(interp_app, ["patch", str(rd), "--n-pairs", "2"])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(rd / "interp" / "patch" / "patching.parquet")
    assert df["pair"].nunique() == 2 and (rd / "interp" / "patch" / "heatmap_resid_denoise.png").exists()
    res = r.invoke(interp_app, ["probe", str(rd)])
    assert res.exit_code == 0, res.output
    res = r.invoke(interp_app, ["report", str(rd)])
    assert res.exit_code == 0, res.output
    assert any((rd / "interp" / "report").iterdir())


def test_depth_sweep_makes_one_run_per_value_and_a_comparison(vllm_server, tmp_path):
    import yaml

    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "rlm_rig.experiments.cli", "eval", "--config", "cpu-tiny", "--dataset", "oolong-real",
           "--source", "toy", "--limit", "1", "--out", str(out), "--sweep", "rlm.max_depth=1,2",
           "--set", f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for d in (1, 2):
        cfg = yaml.safe_load((out / f"max_depth{d}" / "config.yaml").read_text())
        assert cfg["rlm"]["max_depth"] == d
        assert len(read_jsonl(out / f"max_depth{d}" / "samples.jsonl")) == 1
    t2 = json.loads(next((out / "max_depth2" / "trajectories").glob("*.json")).read_text())
    # the toy replay maps sub_call_batch over chunks: one-shot calls at any depth (recursion is rlm_query's)
    assert t2["sub_calls"] and all(s["nested_trajectory"] is None and s["kind"] == "llm" for s in t2["sub_calls"])
    comparison = pd.read_csv(out / "report" / "comparison.csv")
    assert comparison.shape[1] == 3  # metric + one column per run
