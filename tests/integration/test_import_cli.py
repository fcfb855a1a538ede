"""`rlm-rig import` from the command line: an exported run imported with gold, then `report`, `view` and `score`
on it; a second import into the same folder and bad gold are one line, exit 2. (No server; here for its time.)"""
from __future__ import annotations

import json

from typer.testing import CliRunner

from rlm_rig.experiments.cli import app
from demo_run import rlm_trajectory


def test_an_exported_run_imports_and_view_report_score_read_it(tmp_path):
    """export (an ask folder) -> import with gold -> report, view and score work on the imported folder."""
    from rlm_rig.experiments.datasets.scoring import score_output
    from rlm_rig.records.runlog import RunFolder

    ask = RunFolder(tmp_path / "ask")
    rlm_trajectory("ask-run", nested=rlm_trajectory("child", depth=1)).save(ask.ask_trajectory_path)
    cli = CliRunner()
    r = cli.invoke(app, ["export", str(ask.path), "--format", "rlm-jsonl", "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    (tmp_path / "gold.jsonl").write_text(json.dumps({"id": "rlm", "gold": "3"}) + "\n")
    run = tmp_path / "run"
    (tmp_path / "doc.txt").write_text("d" * 250)
    r = cli.invoke(app, ["import", str(tmp_path / "exp"), "--out", str(tmp_path / "r0"), "--doc", str(tmp_path / "no.txt")])
    assert r.exit_code == 2 and "--doc" in r.output and not (tmp_path / "r0").exists()
    r = cli.invoke(app, ["import", str(tmp_path / "exp"), "--out", str(run), "--dataset", "oolong-real",
                         "--gold", str(tmp_path / "gold.jsonl"), "-q", "Q?", "--doc", str(tmp_path / "doc.txt")])
    assert r.exit_code == 0, r.output
    (row,) = RunFolder(run).sample_rows()
    assert (row.id, row.answer, row.gold, row.question, row.context_chars) == ("rlm", "3", "3", "Q?", 250)
    assert row.score == score_output("oolong-real", "3", "3").score and row.n_sub_calls == 3
    for args in (["report", str(run), "--out", str(tmp_path / "rep")], ["view", str(run), "--out", str(tmp_path / "site")],
                 ["score", "--dataset", "oolong-real", str(run / "samples.jsonl"), "--out", str(tmp_path / "s.jsonl")]):
        r = cli.invoke(app, args)
        assert r.exit_code == 0, (args[0], r.output)
    assert (tmp_path / "site" / "r0" / "sample" / "rlm.html").exists()
    # a second import into the same folder is refused (one line, exit 2), the first run kept
    r = cli.invoke(app, ["import", str(tmp_path / "exp"), "--out", str(run)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert len(RunFolder(run).sample_rows()) == 1
    # gold without a dataset, or a run the gold file does not name: one line, exit 2
    r = cli.invoke(app, ["import", str(tmp_path / "exp"), "--out", str(tmp_path / "r2"), "--gold", str(tmp_path / "gold.jsonl")])
    assert r.exit_code == 2 and "--gold needs --dataset" in r.output
    (tmp_path / "gold.jsonl").write_text(json.dumps({"id": "other", "gold": "3"}) + "\n")
    r = cli.invoke(app, ["import", str(tmp_path / "exp"), "--out", str(tmp_path / "r2"), "-d", "oolong-real",
                         "--gold", str(tmp_path / "gold.jsonl")])
    assert r.exit_code == 2 and "has no gold for 'rlm'" in r.output and not (tmp_path / "r2").exists()
