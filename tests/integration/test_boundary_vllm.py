"""The recursive boundary on the real tiny vLLM-CPU worker with a replay controller: a loss ledger over a
generated needle sweep whose stages add up to the run's total loss, calibration from the recorded logprobs,
the ledger's refusal of a run without gold positions, and the rlm.low_confidence policies (tell, resplit)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from rlm_rig.configs.load import load_config
from rlm_rig.experiments.analysis.boundary import write_calibration, write_ledger
from rlm_rig.experiments.cli import app
from rlm_rig.experiments.runs.evaluate import run_eval
from rlm_rig.records.runlog import EvalSpec
from rlm_rig.records.trajectory import Trajectory, read_jsonl

pytestmark = pytest.mark.vllm
REPLAY = Path(__file__).resolve().parents[2] / "configs" / "replays" / "chunk-find.yaml"


def _eval(url: str, out: Path, positions, *sets: str, replay: Path = REPLAY) -> list[dict]:
    cfg = load_config("cpu-tiny", [f"worker.server.url={url}", "worker.served_name=tiny",
                                   f"controller.replay_file={replay}", *sets])
    spec = EvalSpec(dataset="needle-sweep", loader_options={"lengths": [1500], "positions": list(positions)})
    res = run_eval(cfg, spec, out, show_progress=False)
    assert res["status"] == "complete"
    return read_jsonl(out / "samples.jsonl")


@pytest.fixture(scope="module")
def half_reader_run(vllm_server, tmp_path_factory):
    """A controller that reads only the first half of each document: needles late in it are never sent."""
    tmp = tmp_path_factory.mktemp("ledger")
    replay = tmp / "half.yaml"
    replay.write_text(REPLAY.read_text().replace("READ_FRACTION = 1.0", "READ_FRACTION = 0.5"))
    rows = _eval(vllm_server, tmp / "run", (0.1, 0.3, 0.7, 0.9), replay=replay)
    return tmp / "run", rows


def test_ledger_stages_add_up_to_the_total_loss(half_reader_run, tmp_path):
    run, rows = half_reader_run
    res = write_ledger(run, tmp_path / "ledger")
    ledger = pd.read_parquet(res["table"])
    assert ledger["loss"].sum() == pytest.approx(sum(1 - r["score"] for r in rows))
    assert len(ledger) == sum(r["score"] < 1 for r in rows)  # one stage per lost needle
    by_pos = {round(p, 1): s for p, s in zip(ledger["position"], ledger["stage"])}
    assert by_pos[0.7] == by_pos[0.9] == "never_sent"  # the half reader never sent them
    assert all(by_pos[p] != "never_sent" for p in by_pos if p < 0.5)  # sent: lost later, if at all
    assert "read_wrong_no_probe" in set(ledger["stage"]) or all(r["score"] == 1 for r in rows if r["id"].count("p0.1"))
    assert Path(res["plot"]).stat().st_size > 0 and "## Loss ledger" in Path(res["markdown"]).read_text()


def test_calibration_from_recorded_logprobs(half_reader_run, tmp_path):
    run, _ = half_reader_run
    trajs = [Trajectory.load(p) for p in (run / "trajectories").glob("*.json")]
    confs = [sc.confidence for t in trajs for sc in t.sub_calls]
    assert confs and all(c is not None and 0 <= c <= 1 for c in confs)  # recorded live from vLLM's logprobs
    res = write_calibration(run, tmp_path / "cal")
    frame = pd.read_parquet(res["table"])
    assert 0 <= res["ece"] <= 1 and len(frame) == res["n"] > 0


def test_ledger_without_gold_positions_is_one_line_exit_2(half_reader_run, tmp_path):
    run, _ = half_reader_run
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "eval.json"):
        if (run / name).exists():
            (bare / name).write_text((run / name).read_text())
    rows = [{**r, "extra": {k: v for k, v in r["extra"].items() if k != "gold_spans"}} for r in read_jsonl(run / "samples.jsonl")]
    (bare / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (bare / "trajectories").mkdir()
    for p in (run / "trajectories").glob("*.json"):
        (bare / "trajectories" / p.name).write_text(p.read_text())
    out = CliRunner().invoke(app, ["ledger", str(bare), "--out", str(tmp_path / "l")])
    assert out.exit_code == 2 and "no sample records gold positions" in out.output
    assert len([ln for ln in out.output.splitlines() if ln.strip()]) <= 2  # one line (rich may wrap it)


def test_resplit_reasks_low_confidence_chunks_in_halves(vllm_server, tmp_path):
    rows = _eval(vllm_server, tmp_path / "run", (0.5,), "rlm.low_confidence=resplit", "rlm.low_confidence_threshold=1.0")
    t = Trajectory.load(tmp_path / "run" / rows[0]["trajectory"])
    firsts = [sc for sc in t.sub_calls if sc.resplit_of is None]
    halves = [sc for sc in t.sub_calls if sc.resplit_of is not None]
    assert firsts and len(halves) == 2 * len(firsts)  # threshold 1.0: every reply is low
    for sc in firsts:
        mine = sorted((h for h in halves if h.resplit_of == sc.id), key=lambda h: h.chunk_start)
        assert mine[0].chunk_start == sc.chunk_start and mine[0].chunk_end == mine[1].chunk_start
        assert mine[1].chunk_end == sc.chunk_end and all(h.confidence is not None for h in mine)
        assert sc.replaced_by == "\n".join(h.response.strip() for h in mine)  # a needle question: both replies
    assert "[rig] worker confidence" not in json.dumps([turn.messages_in for turn in t.turns])


def test_tell_shows_the_controller_each_replys_confidence(vllm_server, tmp_path):
    rows = _eval(vllm_server, tmp_path / "run", (0.5,), "rlm.low_confidence=tell")
    t = Trajectory.load(tmp_path / "run" / rows[0]["trajectory"])
    told = [m["content"] for turn in t.turns for m in turn.messages_in if "[rig] worker confidence" in m["content"]]
    assert len(told) == 1 and all(f"#{sc.id} " in told[0] for sc in t.sub_calls)
    assert not any(sc.resplit_of is not None or sc.replaced_by for sc in t.sub_calls)


def test_report_and_viewer_show_the_ledger_and_the_calibration(half_reader_run, tmp_path):
    from rlm_rig.experiments.analysis.report import write_report
    from rlm_rig.experiments.view.site import build_site

    run, _ = half_reader_run
    rep = write_report([run], tmp_path / "report")
    md = Path(rep["report"]).read_text()
    assert "## Loss ledger: " in md and "## Worker confidence: " in md and "(boundary-0/ledger.png)" in md
    site = build_site([run], tmp_path / "site")
    index = site.index.read_text()
    assert "report/boundary-0/ledger.png" in index and "report/boundary-0/reliability.png" in index
    assert (tmp_path / "site" / "report" / "boundary-0" / "ledger.png").stat().st_size > 0
    assert "ledger by position" in index  # the ledger's table, beside the paired tables
