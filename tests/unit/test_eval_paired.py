"""Issue 12 §3: paired comparisons in `rlm-rig report A B` on constructed runs whose answers are known."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from rlm_rig.records.trajectory import SampleRow, append_jsonl
from rlm_rig.experiments.analysis.paired import mcnemar_exact


def _run(path: Path, method: str, rows: list[tuple[str, str, int, float]]) -> Path:
    """rows: (id, question_type, context_tokens, score)."""
    path.mkdir(parents=True)
    for rid, qt, toks, score in rows:
        append_jsonl(path / "samples.jsonl", SampleRow(
            id=rid, dataset="oolong-real", method=method, question="q", question_type=qt, context_chars=toks * 4,
            context_tokens=toks, gold="1", answer="x", score=score, lenient_score=score).model_dump(mode="json"))
    return path


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 2**7)  # 0.125
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)
    assert mcnemar_exact(5, 5) == 1.0


@pytest.fixture
def two_runs(tmp_path):
    # 10 shared ids; A right on ids 0-3, B on all but 3: A-only {3}, B-only {4..9}
    a_scores = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    b_scores = [1, 1, 1, 0, 1, 1, 1, 1, 1, 1]   # only A: {3}; only B: {4..9} = 6
    qts = ["count"] * 5 + ["list"] * 5
    toks = [3_000] * 5 + [10_000] * 5
    a = _run(tmp_path / "A", "direct", [(f"id{i}", qts[i], toks[i], float(a_scores[i])) for i in range(10)])
    b_rows = [(f"id{i}", qts[i], toks[i], float(b_scores[i])) for i in range(10)]
    b_rows += [("only-b-1", "count", 3_000, 0.0), ("only-b-2", "list", 3_000, 1.0)]  # not shared: ignored
    b = _run(tmp_path / "B", "rlm", b_rows)
    return a, b


def test_paired_report_on_known_runs(two_runs, tmp_path):
    from rlm_rig.experiments.analysis.report import write_report

    a, b = two_runs
    out = write_report([a, b], tmp_path / "rep")
    t = pd.read_csv(out["tables"]["paired"])
    overall = t[t["by"] == "all"].iloc[0]
    assert overall["n_shared"] == 10
    assert overall["diff"] == pytest.approx((9 - 4) / 10)
    assert overall["only_reference_exact"] == 1 and overall["only_run_exact"] == 6
    assert overall["mcnemar_p"] == pytest.approx(0.125)
    assert overall["ci_low"] < overall["diff"] < overall["ci_high"]
    qt = t[t["by"] == "question_type"].set_index("group")
    # count: A = [1,1,1,1,0], B = [1,1,1,0,1] -> diff 0, one discordant each way
    assert qt.loc["count", "diff"] == pytest.approx(0.0) and qt.loc["count", "mcnemar_p"] == pytest.approx(1.0)
    # list: A all 0, B all 1 -> every difference is +1, so the CI is the point
    assert qt.loc["list", "diff"] == pytest.approx(1.0)
    assert qt.loc["list", "ci_low"] == pytest.approx(1.0) and qt.loc["list", "ci_high"] == pytest.approx(1.0)
    assert qt.loc["list", "mcnemar_p"] == pytest.approx(2 / 2**5)
    lb = t[t["by"] == "length_bucket"].set_index("group")
    assert list(lb.index) == ["0-4K", "8K-16K"]  # tokens of the worker's tokenizer, binned
    assert lb.loc["8K-16K", "n_shared"] == 5 and lb.loc["8K-16K", "diff"] == pytest.approx(1.0)
    md = Path(out["report"]).read_text()
    assert "## Paired comparisons" in md and "McNemar exact p" in md and "0.1250" in md
    assert Path(out["plots"]["score_vs_length"]).stat().st_size > 0


def test_one_run_has_nothing_to_pair(two_runs, tmp_path):
    from rlm_rig.experiments.analysis.report import write_report

    out = write_report([two_runs[0]], tmp_path / "rep1")
    assert pd.read_csv(out["tables"]["paired"]).empty
    assert "nothing to pair" in Path(out["report"]).read_text()


def test_worker_invalid_rows_are_not_scored_and_are_redone(tmp_path):
    """A row marked error=worker is out of every score, counted in the worker-failures table, and not
    done for --resume; a later valid row for the same id replaces it."""
    from rlm_rig.experiments.analysis.metrics import summarize_run
    from rlm_rig.experiments.analysis.report import write_report
    from rlm_rig.records.runlog import RunFolder

    rd = _run(tmp_path / "W", "rlm", [("a", "count", 100, 1.0), ("b", "count", 100, 1.0)])
    bad = SampleRow(id="c", dataset="oolong-real", method="rlm", question="q", context_chars=10, gold="1", answer="1",
                    score=1.0, error="worker", n_sub_call_failures=3, sub_call_failures={"worker": 3})
    append_jsonl(rd / "samples.jsonl", bad.model_dump(mode="json"))
    folder = RunFolder(rd)
    assert folder.done_ids() == {"a", "b"}
    s = summarize_run(rd)
    assert s["n"] == 2 and s["n_worker_invalid"] == 1 and s["sub_call_failures"] == {"worker": 3}
    out = write_report([rd], tmp_path / "rep")
    w = pd.read_csv(out["tables"]["worker_failures"]).iloc[0]
    assert w["samples_not_scored_worker"] == 1 and w["failed_sub_calls"] == 3 and w["by_kind"] == "worker: 3"
    redo = bad.model_copy(update={"error": None, "score": 0.0, "sub_call_failures": {}, "n_sub_call_failures": 0})
    append_jsonl(rd / "samples.jsonl", redo.model_dump(mode="json"))
    assert folder.done_ids() == {"a", "b", "c"}
    assert [r["score"] for r in folder.rows() if r["id"] == "c"] == [0.0]
    s = summarize_run(rd)
    assert s["n"] == 3 and s["n_worker_invalid"] == 0 and math.isclose(s["mean_score"], 2 / 3)
