"""write_report / summarize_run on run folders built by hand, checked against numbers worked out by hand."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from rlm_rig.records.trajectory import (
    CapEvent,
    CellRecord,
    ControllerTurn,
    SampleRow,
    SubCallRecord,
    Trajectory,
    append_jsonl,
)
from rlm_rig.experiments.analysis.metrics import load_run, summarize_run
from rlm_rig.experiments.analysis.report import write_report

NOW = datetime.now(timezone.utc).isoformat()


def traj(doc_chars: int, cells: list[tuple[str, str | None]] = (), spans: list[tuple[int, int]] = (),
         turns: int | None = None, **kw: Any) -> Trajectory:
    t = Trajectory(run_id="t", question="q", doc_chars=doc_chars, doc_sha256="0" * 64, config={}, config_hash="h",
                   models={}, versions={}, started_at=NOW, **kw)
    n_turns = len(cells) if turns is None else turns
    t.turns = [ControllerTurn(index=i, messages_in=[], response="") for i in range(n_turns)]
    t.cells = [CellRecord(index=i, turn=i, code=code, error=err) for i, (code, err) in enumerate(cells)]
    t.sub_calls += [SubCallRecord(id=i, cell=0, depth=1, chunk_start=s, chunk_end=e, chunk_chars=e - s,
                                  instruction="i", response="r") for i, (s, e) in enumerate(spans)]
    return t


def make_run(root: Path, name: str, *, method: str, depth: int, status: str,
             samples: list[tuple[dict[str, Any], Trajectory | None]], torn: bool = False) -> Path:
    run = root / name
    (run / "trajectories").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"rlm": {"max_depth": depth}, "eval": {"method": method}}))
    (run / "results.json").write_text(json.dumps({"status": status}))
    (run / "env.json").write_text("{}")
    for fields, t in samples:
        sid = fields["id"]
        rel = fields.pop("trajectory", f"trajectories/{sid}.json")
        if t is not None:
            t.save(run / rel)
        base = dict(dataset="oolong-real", method=method, question="q", context_chars=1000, context_tokens=250,
                    gold="3", answer="\\boxed{3}", trajectory=rel)
        append_jsonl(run / "samples.jsonl", SampleRow(**{**base, **fields}).model_dump(mode="json"))
    if torn:
        with open(run / "samples.jsonl", "a") as f:
            f.write('{"id": "half-writ')
    return run


MAP_REDUCE = [
    ("print(prompt[:200])", None),
    ("chunks = [prompt[i:i+600] for i in range(0, len(prompt), 500)]\n"
     "FINAL(sum(int(sub_call(c, 'count')) for c in chunks))", None),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    rlm = make_run(root, "rlm-d1", method="rlm", depth=1, status="complete", torn=True, samples=[
        (dict(id="a1", question_type="singledoc_rolls", episodes=[1], score=1.0, n_sub_calls=2, wall_s=10,
              controller_tokens_in=100, controller_tokens_out=20, worker_tokens_in=300, worker_tokens_out=10),
         traj(1000, MAP_REDUCE, spans=[(0, 600), (500, 1000)])),
        (dict(id="a2", question_type="singledoc_rolls", episodes=[1, 2], score=0.75, answer="\\boxed{4}", wall_s=20,
              controller_tokens_in=200, controller_tokens_out=40),
         traj(1000, [("print(prompt[:100])", None), ("import re\nn = len(re.findall('roll', prompt))", "NameError: x")])),
        (dict(id="a3", question_type="multidoc_rolls", episodes=[1, 2, 3], score=0.0, answer=None, n_sub_calls=1,
              wall_s=30, context_tokens=5000, controller_tokens_in=300, controller_tokens_out=60,
              worker_tokens_in=150, worker_tokens_out=5),
         traj(1000, [("print(", "SyntaxError: '(' was never closed"), ("a = sub_call(prompt[:500], 'q')", None)],
              spans=[(0, 500)], caps_hit=[CapEvent(cap="max_iterations", turn=2, detail="d")])),
    ])
    direct = make_run(root, "direct", method="direct", depth=1, status="running", samples=[
        (dict(id="b1", question_type="singledoc_rolls", episodes=[1], score=0.0, answer="\\boxed{5}", wall_s=4,
              n_sub_calls=1, worker_tokens_in=900, worker_tokens_out=8),
         traj(1000, turns=0, spans=[(0, 800)])),
        (dict(id="b2", question_type="multidoc_rolls", episodes=[1, 2], score=1.0, wall_s=6, worker_tokens_in=50,
              trajectory="trajectories/gone.json"), None),
    ])
    child = traj(500, [("x = sub_call(prompt[100:300], 'q')", None)], spans=[(100, 300)], depth=1)
    parent = traj(1000, [("r = [sub_call(prompt[i:i+500], 'q') for i in (0, 500)]", None)], spans=[(0, 500), (500, 1000)])
    child.sub_calls[0].prompt_tokens, child.turns[0].prompt_tokens = 40, 7
    parent.sub_calls[0].prompt_tokens = 100
    parent.sub_calls[1].nested_trajectory = child.model_dump(mode="json")
    nested = make_run(root, "rlm-d2", method="rlm", depth=2, status="complete", samples=[
        (dict(id="c1", question_type="singledoc_rolls", episodes=[1], score=1.0, n_sub_calls=2, wall_s=50,
              worker_tokens_in=100), parent),
    ])
    return {"rlm": rlm, "direct": direct, "nested": nested}


@pytest.fixture(scope="module")
def report(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("report")
    return write_report([runs["rlm"], runs["direct"], runs["nested"]], out)


LA, LB, LC = "rlm-d1 (rlm, depth 1)", "direct (direct, depth 1)", "rlm-d2 (rlm, depth 2)"


def csv(report: dict[str, Any], name: str) -> pd.DataFrame:
    return pd.read_csv(report["tables"][name])


def test_files_exist(report: dict[str, Any]) -> None:
    assert report["report"].exists()
    for name in ["runs", "comparison", "by_question_type", "by_episodes", "by_length", "tokens", "strategies",
                 "failures", "samples"]:
        assert report["tables"][name].exists(), name
    for name in ["score_by_run", "score_by_question_type", "score_vs_length", "strategies", "failures"]:
        p = report["plots"][name]
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_run_summary_numbers(report: dict[str, Any]) -> None:
    runs = csv(report, "runs").set_index("run")
    assert list(runs.index) == [LA, LB, LC]
    a = runs.loc[LA]
    assert a["n"] == 3  # the torn last line is dropped
    assert a["mean_score"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert a["ci_low"] <= a["mean_score"] <= a["ci_high"]
    assert a["exact_accuracy"] == pytest.approx(1 / 3)
    assert a["avg_sub_calls"] == pytest.approx(1.0)  # (2 + 0 + 1) / 3
    assert a["code_success_rate"] == pytest.approx(4 / 6)  # 6 cells, 2 with an error
    assert a["mean_wall_s"] == pytest.approx(20.0)
    assert a["controller_tokens_in"] == pytest.approx(200.0)
    assert a["worker_tokens_in"] == pytest.approx(150.0)
    # utilization: [0,600) U [500,1000) = 1.0; none = 0; [0,500) = 0.5 -> mean 0.5
    assert a["mean_utilization"] == pytest.approx(0.5)
    assert a["status"] == "complete" and a["method"] == "rlm" and a["max_depth"] == 1
    b = runs.loc[LB]
    assert b["n"] == 2 and b["mean_score"] == pytest.approx(0.5) and b["status"] == "running"
    assert math.isnan(b["code_success_rate"])  # a baseline runs no code
    assert b["mean_utilization"] == pytest.approx(0.8)  # only b1 has a trajectory
    c = runs.loc[LC]
    # root spans cover everything; the worker read [0,500) and the nested [600,800)
    assert c["mean_utilization"] == pytest.approx(1.0)
    assert c["mean_leaf_utilization"] == pytest.approx(0.7)
    assert c["avg_sub_calls_all_depths"] == pytest.approx(3.0)
    assert c["ci_low"] == c["ci_high"] == 1.0  # n = 1


def test_comparison_is_one_column_per_run(report: dict[str, Any]) -> None:
    comp = csv(report, "comparison").set_index("metric")
    assert list(comp.columns) == [LA, LB, LC]
    assert comp.loc["accuracy (mean official score)", LA] == pytest.approx(0.583333, abs=1e-6)
    assert comp.loc["exact accuracy (score == 1)", LB] == pytest.approx(0.5)


def test_grouped_scores(report: dict[str, Any]) -> None:
    qt = csv(report, "by_question_type")
    a = qt[qt["run"] == LA].set_index("question_type")
    assert a.loc["singledoc_rolls", "n"] == 2
    assert a.loc["singledoc_rolls", "mean_score"] == pytest.approx(0.875)
    assert a.loc["multidoc_rolls", "mean_score"] == 0.0
    assert a.loc["multidoc_rolls", "ci_low"] == a.loc["multidoc_rolls", "ci_high"] == 0.0
    ep = csv(report, "by_episodes")
    a = ep[ep["run"] == LA].set_index("n_episodes")["mean_score"]
    assert a.to_dict() == {1: 1.0, 2: 0.75, 3: 0.0}
    ln = csv(report, "by_length")  # every row has context_tokens -> token buckets
    a = ln[ln["run"] == LA].set_index("length_bucket")
    assert a.loc["0-4K", "n"] == 2 and a.loc["0-4K", "mean_score"] == pytest.approx(0.875)
    assert a.loc["4K-8K", "n"] == 1


def test_tokens_table(report: dict[str, Any]) -> None:
    tok = csv(report, "tokens").set_index("run")
    assert tok.loc[LA, "total_controller_tokens_in"] == 600
    assert tok.loc[LA, "total_controller_tokens_out"] == 120
    assert tok.loc[LB, "mean_worker_tokens_out"] == pytest.approx(4.0)
    # the row counts the root only; the nested run's worker call (40) and controller turn (7) come from the trajectory
    assert tok.loc[LC, "total_worker_tokens_in"] == 100
    assert tok.loc[LC, "total_worker_tokens_in_all_depths"] == 140
    assert tok.loc[LC, "total_controller_tokens_in_all_depths"] == 7
    assert tok.loc[LB, "total_worker_tokens_in"] == 950
    # b1's trajectory records no tokens (0); b2 has no trajectory, so its row (50) stands in
    assert tok.loc[LB, "total_worker_tokens_in_all_depths"] == 50


def test_strategy_and_failure_tables(report: dict[str, Any]) -> None:
    st = csv(report, "strategies")
    got = {(r.run, r.strategy): r.n_primary for r in st.itertuples()}
    assert got[(LA, "map-reduce")] == 1
    assert got[(LA, "grep")] == 1
    assert got[(LA, "single-subcall")] == 1
    assert got[(LB, "no-controller")] == 2
    assert got[(LC, "nested")] == 1
    peek = st[(st["run"] == LA) & (st["strategy"] == "peek")].iloc[0]
    assert peek["n_with_label"] == 2
    fl = csv(report, "failures")
    got = {(r.run, r.failure): (r.n_primary, r.n_with_label) for r in fl.itertuples()}
    assert got[(LA, "cap_hit")] == (1, 1)
    assert got[(LA, "no_final")] == (0, 1)
    assert got[(LA, "wrong_answer")] == (1, 1)
    assert got[(LB, "wrong_answer")] == (1, 1)
    assert not any(run == LC for run, _ in got)
    samples = csv(report, "samples").set_index("id")
    assert samples.loc["a3", "failure_labels"] == "cap_hit;no_final"
    assert samples.loc["a1", "strategy_labels"] == "map-reduce;chunk-map;peek"
    assert len(samples) == 6
    assert set(samples["run"]) == {LA, LB, LC} and set(samples["run_folder"]) == {"rlm-d1", "direct", "rlm-d2"}


def test_markdown(report: dict[str, Any]) -> None:
    md = report["report"].read_text()
    for needle in [LA, LB, LC, "## Comparison", "### Score by question type", "## Tokens", "## Context utilization",
                   "## Strategies", "## Failure modes", "![score by run](score_by_run.png)", "0.583",
                   "trajectory trajectories/gone.json is missing", "status='running'"]:
        assert needle in md, needle
    assert report["warnings"]


def test_report_is_deterministic(runs: dict[str, Path], report: dict[str, Any], tmp_path: Path) -> None:
    again = write_report([runs["rlm"], runs["direct"], runs["nested"]], tmp_path)
    pd.testing.assert_frame_equal(csv(again, "runs"), csv(report, "runs"))


def test_summarize_run(runs: dict[str, Path]) -> None:
    s = summarize_run(runs["rlm"])
    json.dumps(s, allow_nan=False)  # results.json must be strict JSON
    assert s["n"] == 3
    assert s["mean_score"] == pytest.approx(0.583333, abs=1e-6)
    lo, hi = s["ci95"]
    assert lo <= s["mean_score"] <= hi
    assert s["by_question_type"]["singledoc_rolls"]["mean_score"] == pytest.approx(0.875)
    assert s["by_question_type"]["multidoc_rolls"] == {"n": 1, "mean_score": 0.0, "ci95": [0.0, 0.0], "exact_accuracy": 0.0}
    assert s["by_episodes"]["3"]["n"] == 1
    assert s["failures"] == {"cap_hit": 1, "wrong_answer": 1}
    assert summarize_run(runs["direct"])["code_success_rate"] is None


def test_empty_run_and_duplicate_names(tmp_path: Path, runs: dict[str, Path]) -> None:
    empty = make_run(tmp_path / "x", "rlm-d1", method="rlm", depth=1, status="running", samples=[])
    s = summarize_run(empty)
    assert s["n"] == 0 and s["mean_score"] is None and s["ci95"] == [None, None]
    rep = write_report([runs["rlm"], empty], tmp_path / "out")
    labels = list(csv(rep, "runs")["run"])
    assert len(set(labels)) == 2 and labels[1] == "x/rlm-d1 (rlm, depth 1)"
    assert any("no finished samples" in w for w in rep["warnings"])


def test_bad_input_errors(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        load_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "samples.jsonl").write_text('{"id": "x"}\n{"id": "y"}\n')
    with pytest.raises(ValueError, match="row 1 is not a SampleRow"):
        load_run(bad)
    with pytest.raises(ValueError, match="at least one run"):
        write_report([], tmp_path / "o")
