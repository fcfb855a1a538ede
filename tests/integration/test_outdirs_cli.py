"""No rig command deletes or changes a file it did not write: real commands on a real tiny run, every file hashed
before and after. Refusals are one line with exit 2, before any model loads (load_model is made to fail, so a
refusal that came after it would show as that failure instead)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlm_rig.experiments.cli import app
from demo_run import make_demo_run
from tests.unit.test_outdirs import hashes, read_only, write

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder (demo trajectories answered in the tiny worker's message format) and an interp profile."""
    root = tmp_path_factory.mktemp("outdirs")
    run = make_demo_run(root / "runs" / "r1", n_samples=2, chunks_per_sample=2, lines_per_chunk=5)
    (run / "logs").mkdir()
    (run / "logs" / "rig.log").write_text("a log line\n")
    cfg = root / "profile.yaml"
    cfg.write_text("worker:\n  model: tiny\n  dtype: float32\n  server:\n    port: 18398\n"
                   "interp:\n  device: cpu\n  n_pairs: 2\n  components: [resid]\n  layers: [0]\n  n_boot: 100\n"
                   "  capture_positions: [last]\n  max_new_tokens: 4\n  replay: false\n")
    return root, run, cfg


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails loudly: a refusal must come before it."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the output folder was checked")

    import rlm_rig.interp.jobs
    from rlm_rig import interp

    monkeypatch.setattr(interp.jobs, "load_model", refuse)


def refused(args: list[str], *, match: str) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (r.output, r.exception)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and match in r.output.replace("\n", " "), r.output
    return r.output


def ok(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, repr(r.exception))
    return r.output


def test_interp_into_the_run_or_its_ancestor_is_refused_before_the_model(tiny_run, no_model):
    root, run, cfg = tiny_run
    before = hashes(root)
    for cmd in ("capture", "patch", "attribute", "heads", "lens"):
        refused(["interp", cmd, str(run), "--config", str(cfg), "--out", str(run)], match="is the folder this")
        refused(["interp", cmd, str(run), "--config", str(cfg), "--out", str(run.parent)], match="holds the folder")
    refused(["interp", "report", str(run), "--config", str(cfg), "--out", str(run)], match="is the folder this")
    assert hashes(root) == before


def test_capture_then_patch_into_one_folder_keeps_the_capture(tiny_run, tmp_path):
    _, run, cfg = tiny_run
    out = tmp_path / "d"
    ok(["interp", "capture", str(run), "--config", str(cfg), "--out", str(out)])
    cap = hashes(out)
    assert any(k.startswith("acts-") for k in cap) and "index.parquet" in cap
    refused(["interp", "patch", str(run), "--config", str(cfg), "--out", str(out)],
            match="holds the outputs of `rlm-rig interp capture`")
    assert hashes(out) == cap
    # the same command again: refused without --force; with it, only its own files change
    refused(["interp", "capture", str(run), "--config", str(cfg), "--out", str(out)], match="--force")
    ok(["interp", "capture", str(run), "--config", str(cfg), "--out", str(out), "--force"])
    assert json.loads((out / ".rlm-rig-output.json").read_text())["command"] == "interp capture"
    # a file of the user's in it: even --force refuses (a costly job never risks a clash after its work)
    write(out, {"my-notes.md": "kept"})
    before = hashes(out)
    refused(["interp", "capture", str(run), "--config", str(cfg), "--out", str(out), "--force"],
            match="holds my-notes.md")
    assert hashes(out) == before


def test_costly_interp_refuses_a_folder_of_other_files_before_the_model(tiny_run, tmp_path, no_model):
    _, run, cfg = tiny_run
    out = tmp_path / "results"
    write(out, {"paper.tex": "\\section{x}", "index.parquet": "the user's own table"})
    before = hashes(out)
    for cmd in ("capture", "lens"):
        refused(["interp", cmd, str(run), "--config", str(cfg), "--out", str(out)], match="not an output of")
    assert hashes(out) == before


def test_a_link_then_dotdot_and_a_run_subfolder_are_refused_before_the_model(tiny_run, tmp_path, monkeypatch,
                                                                              no_model):
    _, run, cfg = tiny_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "t").symlink_to(run / "trajectories", target_is_directory=True)
    monkeypatch.chdir(elsewhere)
    before = hashes(run)
    refused(["interp", "capture", str(run), "--config", str(cfg), "--out", "t/.."], match="is the folder this")
    refused(["report", str(run), "--out", "t/.."], match="is the folder this")
    refused(["report", str(run), "--out", str(run / "trajectories")], match="lies inside the run folder")
    assert hashes(run) == before


def test_a_file_in_the_way_and_a_read_only_folder(tiny_run, tmp_path, no_model):
    _, run, cfg = tiny_run
    f = tmp_path / "afile"
    f.write_text("x")
    refused(["interp", "heads", str(run), "--config", str(cfg), "--out", str(f)], match="is a file")
    refused(["view", str(run), "--out", str(f)], match="is a file")
    ro = tmp_path / "ro"
    write(ro, {"a.txt": "a"})
    with read_only(ro):
        refused(["interp", "patch", str(run), "--config", str(cfg), "--out", str(ro)], match="cannot write in")
        refused(["report", str(run), "--out", str(ro)], match="cannot write in")
    assert f.read_text() == "x" and (ro / "a.txt").read_text() == "a"


def test_view_report_export_on_an_ask_folder_and_beside_user_files(tiny_run, tmp_path):
    _, run, _ = tiny_run
    ask = tmp_path / "ask"
    ask.mkdir()
    (ask / "trajectory.json").write_text(next((run / "trajectories").glob("*.json")).read_text())
    out = tmp_path / "site"
    write(out, {"README.md": "mine"})
    before_ask, before_out = hashes(ask), hashes(out)
    ok(["view", str(ask), "--out", str(out)])
    assert (out / "index.html").exists() and list((out / "r0" / "sample").glob("*.html"))
    ok(["view", str(ask), "--out", str(out)])  # a second site replaces the first site's files only
    ok(["report", str(ask), "--out", str(tmp_path / "rep")])
    assert "ask" in (tmp_path / "rep" / "report.md").read_text()
    ok(["export", str(ask), "--out", str(tmp_path / "exp")])
    assert hashes(ask) == before_ask and hashes(out)["README.md"] == before_out["README.md"]
    refused(["view", str(ask), "--out", str(ask)], match="is the folder this")
    refused(["report", str(run), "--out", str(run)], match="is the folder this")
    refused(["export", str(run), "--out", str(out)], match="holds the outputs of `rlm-rig view`")


def test_eval_ask_merge_refuse_other_work_before_any_server(tiny_run, tmp_path):
    root, run, _ = tiny_run
    other = tmp_path / "interp-out"
    write(other, {"x.parquet": "x"})
    (other / ".rlm-rig-output.json").write_text(json.dumps({"version": 1, "command": "interp patch",
                                                           "files": ["x.parquet"]}))
    before = hashes(root)
    refused(["eval", "--dataset", "oolong-real", "--source", "toy", "--limit", "1", "--out", str(other)],
            match="holds the outputs of `rlm-rig interp patch`")
    refused(["eval", "--dataset", "oolong-real", "--source", "toy", "--limit", "1", "--out", str(run)],
            match="already holds samples")
    doc = tmp_path / "doc.txt"
    doc.write_text("hello")
    ask = tmp_path / "ask"
    write(ask, {"trajectory.json": "{}"})
    refused(["ask", "--doc", str(doc), "-q", "q", "--out", str(ask)], match="is a rig run folder")
    refused(["ask", "--doc", str(doc), "-q", "q", "--out", str(other)], match="holds the outputs")
    shard = tmp_path / "shards" / "s0"
    write(shard, {"config.yaml": "name: cpu-tiny\n", "eval.json": json.dumps({"dataset": "oolong-real"}),
                  "samples.jsonl": ""})
    before_shards = hashes(tmp_path / "shards")
    refused(["merge", str(shard), "--out", str(shard)], match="merge into a new folder")
    refused(["merge", str(shard), "--out", str(shard.parent)], match="merge into a new folder")
    refused(["merge", str(shard), "--out", str(other)], match="holds the outputs")
    assert hashes(root) == before and hashes(tmp_path / "shards") == before_shards and hashes(other)["x.parquet"]


def test_models_never_replace_a_cache_folder_they_did_not_build(tmp_path):
    from rlm_rig.worker.tiny import ensure_tiny_model
    from rlm_rig.worker.tiny import TINY_MODEL_DIRNAME

    theirs = tmp_path / TINY_MODEL_DIRNAME.format(seed=0)
    write(theirs, {"config.json": "{}", "weights.bin": "theirs"})
    before = hashes(theirs)
    with pytest.raises(FileExistsError, match="not built by rlm-rig"):
        ensure_tiny_model(tmp_path, seed=0)
    assert hashes(theirs) == before


def test_serve_worker_never_touches_a_runs_logs(tiny_run):
    root, run, _ = tiny_run
    before = hashes(run)
    refused(["serve-worker", "--log-dir", str(run)], match="already holds samples")
    assert hashes(run) == before


def test_a_model_cache_folder_with_a_users_file_is_refused_before_building(tmp_path, monkeypatch):
    import rlm_rig.worker.tiny as tiny

    target = tmp_path / tiny.TINY_MODEL_DIRNAME.format(seed=0)
    write(target, {tiny._MARKER: json.dumps({"recipe_version": -1}), "config.json": "{}", "NOTES.md": "mine"})
    monkeypatch.setattr(tiny, "build_tiny_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    before = hashes(target)
    with pytest.raises(FileExistsError, match="holds NOTES.md"):
        tiny.ensure_tiny_model(tmp_path, seed=0)
    assert hashes(target) == before


def test_the_study_refuses_in_one_line(tiny_run, tmp_path, capsys):
    from rlm_rig.experiments.studies.smollm2_interp import main

    _, run, _ = tiny_run
    before = hashes(run)
    assert main(["--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a rig run folder" in err and hashes(run) == before


def test_a_sweep_into_another_run_is_refused_before_any_server(tiny_run, tmp_path):
    ask = tmp_path / "ask"
    write(ask, {"trajectory.json": "{}"})
    refused(["eval", "--dataset", "oolong-real", "--source", "toy", "--limit", "1", "--sweep", "rlm.max_depth=1,2",
             "--out", str(ask)], match="is a rig run folder")
    assert sorted(p.name for p in ask.iterdir()) == ["trajectory.json"]
