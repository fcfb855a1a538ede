"""records.outdirs: a command writes only its own files; every conflict is refused, never resolved by deletion.

One test per case the rule names: the run folder itself, an ancestor of it, a sibling command's folder, a folder
with user files, a file in the way, a read-only folder; plus the same command's earlier outputs (--force), a rig
folder from before manifests, a failed job, and a folder that changed while the job ran. Each checks that every
file already there is byte for byte the same afterwards (hashes)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlm_rig.records.outdirs import MANIFEST, OutDirError, claim, claim_file, record, relocate, staged


def hashes(root: Path) -> dict[str, str]:
    """Every file under root (hidden ones too) and its sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def a_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "r1"
    (run / "trajectories").mkdir(parents=True)
    (run / "trajectories" / "s0.json").write_text('{"x": 1}')
    (run / "samples.jsonl").write_text('{"id": "s0"}\n')
    (run / "logs").mkdir()
    (run / "logs" / "rig.log").write_text("started\n")
    return run


def write(d: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)


@contextmanager
def read_only(folder: Path):
    """A folder nobody can write, root included (permission bits do not stop root; the immutable flag does)."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("as root, a read-only folder needs chattr +i, which this filesystem refuses")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)])
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def test_the_run_folder_itself_is_refused(tmp_path):
    run = a_run(tmp_path)
    before = hashes(tmp_path)
    with pytest.raises(OutDirError, match="is the folder this command reads"):
        with staged(run, "interp patch", inputs=[run]) as d:
            (d / "patching.parquet").write_text("x")
    assert hashes(tmp_path) == before


def test_an_ancestor_of_the_run_is_refused(tmp_path):
    run = a_run(tmp_path)
    before = hashes(tmp_path)
    for anc in (run.parent, tmp_path):
        with pytest.raises(OutDirError, match="holds the folder this command reads"):
            claim(anc, "interp capture", inputs=[run])
    assert hashes(tmp_path) == before


def test_a_sibling_commands_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    with staged(out, "interp capture") as d:
        write(d, {"acts-0.safetensors": "tensor bytes", "index.parquet": "index"})
    before = hashes(out)
    with pytest.raises(OutDirError, match="holds the outputs of `rlm-rig interp capture`"):
        with staged(out, "interp patch") as d:
            (d / "patching.parquet").write_text("p")
    assert hashes(out) == before and set(before) == {"acts-0.safetensors", "index.parquet", MANIFEST}


def test_user_files_stay_and_outputs_land_beside(tmp_path):
    out = tmp_path / "results"
    write(out, {"notes.md": "my notes", "sub/keep.txt": "keep"})
    before = hashes(out)
    with staged(out, "interp lens") as d:
        write(d, {"lens.parquet": "L", "plots/a.png": "A"})
    after = hashes(out)
    assert {k: after[k] for k in before} == before
    assert (out / "lens.parquet").read_text() == "L" and (out / "plots" / "a.png").read_text() == "A"
    assert json.loads((out / MANIFEST).read_text())["files"] == ["lens.parquet", "plots/a.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["results"], "the staging folder was left behind"


def test_a_user_file_with_an_output_name_is_never_overwritten(tmp_path):
    out = tmp_path / "results"
    write(out, {"lens.parquet": "the user's own file"})
    before = hashes(out)
    with pytest.raises(OutDirError, match="already holds lens.parquet") as e:
        with staged(out, "interp lens") as d:
            write(d, {"lens.parquet": "new"})
    assert hashes(out) == before
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".results.partial")]
    assert len(kept) == 1 and str(kept[0]) in str(e.value), "the computed outputs must be kept and named"


def test_a_file_in_the_way_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("a file")
    for command in ("interp patch", "view", "eval"):
        with pytest.raises(OutDirError, match="is a file"):
            claim(f, command)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutDirError, match="broken link"):
        claim(tmp_path / "dangling", "interp capture")
    with pytest.raises(OutDirError, match="is a file, not a folder"):
        claim(f / "sub", "report")  # a parent that is a file
    assert f.read_text() == "a file"


def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    write(ro, {"x.txt": "x"})
    with read_only(ro):
        with pytest.raises(OutDirError, match="cannot write in"):
            claim(ro, "interp capture")
        with pytest.raises(OutDirError, match="cannot write in"):
            claim(ro / "new-sub", "report")
    assert hashes(ro) == {"x.txt": hashlib.sha256(b"x").hexdigest()}


def test_same_command_needs_force_and_force_replaces_only_its_own(tmp_path):
    out = tmp_path / "cap"
    with staged(out, "interp capture") as d:
        write(d, {"acts-0.safetensors": "old0", "acts-1.safetensors": "old1"})
    write(out, {"notes.txt": "mine"})
    before = hashes(out)
    with pytest.raises(OutDirError, match="--force"):
        claim(out, "interp capture")
    assert hashes(out) == before
    with staged(claim(out, "interp capture", force=True), "interp capture") as d:
        write(d, {"acts-0.safetensors": "new0"})
    assert (out / "acts-0.safetensors").read_text() == "new0"
    assert not (out / "acts-1.safetensors").exists(), "an own earlier file the new run did not write is stale"
    assert (out / "notes.txt").read_text() == "mine"


def test_cheap_commands_replace_their_own_without_force(tmp_path):
    out = tmp_path / "rep"
    for text in ("one", "two"):
        with staged(out, "report", replace_own=True) as d:
            write(d, {"report.md": text})
    assert (out / "report.md").read_text() == "two"


def test_a_rig_run_from_before_manifests_is_refused(tmp_path):
    run = a_run(tmp_path)
    before = hashes(run)
    for command in ("interp patch", "view", "eval", "ask"):
        with pytest.raises(OutDirError, match="is a rig run folder"):
            claim(run, command)
    assert hashes(run) == before


def test_a_failed_job_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "o"
    with staged(out, "interp capture") as d:
        write(d, {"a.txt": "first"})
    before = hashes(out)
    with pytest.raises(RuntimeError):
        with staged(claim(out, "interp capture", force=True), "interp capture") as d:
            write(d, {"a.txt": "half"})
            raise RuntimeError("killed")
    assert hashes(out) == before and [p.name for p in tmp_path.iterdir()] == ["o"]


def test_a_folder_in_use_is_refused_and_one_taken_meanwhile_keeps_both(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(OutDirError, match="in use by another rig command"):
        with staged(out, "interp heads") as d:
            write(d, {"heads.parquet": "H"})
            with staged(out, "view", replace_own=True) as v:  # a second command while the first works: refused
                write(v, {"index.html": "site"})
    with pytest.raises(OutDirError, match="now holds the outputs of `rlm-rig view`") as e:
        with staged(out, "interp heads") as d:
            write(d, {"heads.parquet": "H"})
            write(out, {"index.html": "site"})  # a writer that ignored the lock lands first
            (out / MANIFEST).write_text(json.dumps({"version": 1, "command": "view", "files": ["index.html"]}))
    assert (out / "index.html").read_text() == "site" and not (out / "heads.parquet").exists()
    assert "kept in" in str(e.value)


def test_two_runs_of_one_costly_command_never_replace_each_other_unasked(tmp_path):
    out = tmp_path / "shared"
    first = claim(out, "interp capture")  # both claims see an empty folder
    second = claim(out, "interp capture")
    with staged(first, "interp capture") as d:
        write(d, {"acts-0.safetensors": "run A"})
    with pytest.raises(OutDirError, match="got outputs of another"):
        with staged(second, "interp capture") as d:
            write(d, {"acts-0.safetensors": "run B"})
    assert (out / "acts-0.safetensors").read_text() == "run A"


def test_costly_commands_refuse_a_folder_with_other_files_up_front(tmp_path):
    out = tmp_path / "mine"
    write(out, {"index.parquet": "the user's"})
    with pytest.raises(OutDirError, match="holds index.parquet, which is not an output"):
        claim(out, "interp capture", empty_or_own=True)


def test_out_inside_another_commands_outputs_is_refused(tmp_path):
    site = tmp_path / "site"
    with staged(site, "view", replace_own=True) as d:
        write(d, {"index.html": "i", "report/report.md": "r"})
    with pytest.raises(OutDirError, match="lies inside the outputs of `rlm-rig view`"):
        claim(site / "report", "report", replace_own=True)
    run = a_run(tmp_path)
    with pytest.raises(OutDirError, match="lies inside the run folder"):
        claim(run / "trajectories", "report", replace_own=True)
    claim(run / "report", "report", replace_own=True)  # a run's default output places stay allowed


def test_link_then_dotdot_is_checked_where_the_kernel_lands(tmp_path, monkeypatch):
    run = a_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "t").symlink_to(run / "trajectories", target_is_directory=True)
    monkeypatch.chdir(elsewhere)
    with pytest.raises(OutDirError, match="is the folder this command reads"):
        claim(Path("t/.."), "report", inputs=[run], replace_own=True)


def test_direct_writers_refuse_names_they_did_not_write(tmp_path):
    out = tmp_path / "run"
    write(out, {"results.json": "the user's"})
    with pytest.raises(OutDirError, match="already holds results.json"):
        claim(out, "eval", writes=["samples.jsonl", "results.json"], replace_own=True)
    c = claim(tmp_path / "fresh", "eval", writes=["samples.jsonl"], replace_own=True)
    record(c, ["samples.jsonl"])
    assert claim(tmp_path / "fresh", "eval", writes=["samples.jsonl"], replace_own=True).own == {"samples.jsonl"}


def test_claim_file_never_overwrites_unasked(tmp_path):
    f = tmp_path / "scored.jsonl"
    f.write_text("keep")
    with pytest.raises(OutDirError, match="exists"):
        claim_file(f)
    assert claim_file(f, force=True) == f and f.read_text() == "keep"
    with pytest.raises(OutDirError, match="is a folder"):
        claim_file(tmp_path)


def test_relocate_maps_staged_paths_to_the_destination(tmp_path):
    s, d = tmp_path / ".x.partial", tmp_path / "x"
    got = relocate({"a": s / "f.png", "b": [s / "g" / "h.csv", tmp_path / "other"]}, s, d)
    assert got == {"a": d / "f.png", "b": [d / "g" / "h.csv", tmp_path / "other"]}


def test_a_manifest_cannot_reach_outside_its_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    for bad in ("../victim.txt", str(victim), ".rlm-rig-output.json"):
        (out / MANIFEST).write_text(json.dumps({"version": 1, "command": "interp capture", "files": [bad]}))
        with pytest.raises(OutDirError, match="not a file inside the folder"):
            with staged(out, "interp capture", force=True) as d:
                write(d, {"a.txt": "a"})
    assert victim.read_text() == "precious"


def test_a_linked_subfolder_cannot_carry_writes_outside(tmp_path):
    outside = tmp_path / "elsewhere"
    write(outside, {"a.png": "user's png"})
    out = tmp_path / "out"
    with staged(out, "report", replace_own=True) as d:
        write(d, {"plots/a.png": "ours"})
    shutil.rmtree(out / "plots")
    (out / "plots").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutDirError, match="a file or a link"):
        with staged(out, "report", replace_own=True) as d:
            write(d, {"plots/a.png": "new"})
    assert (outside / "a.png").read_text() == "user's png"


def test_a_folder_made_for_another_command_is_its_own(tmp_path):
    sweep = tmp_path / "sweep"
    record(claim(sweep, "eval sweep", replace_own=True, writes=["a/", "report/"]), ["a/", "report/"])
    claim(sweep / "a", "eval", replace_own=True)  # the sweep's run folder: the eval owns it
    claim(sweep / "report", "report", replace_own=True)
    with pytest.raises(OutDirError, match="holds the outputs of `rlm-rig eval sweep`"):
        claim(sweep, "eval")


def test_a_second_eval_into_a_running_evals_folder_is_refused(tmp_path):
    """Fresh-eyes probe: a second `eval --out D` while the first is on its first example (no samples line yet)
    passed the claim. The running eval holds the folder's lock for its whole run."""
    from rlm_rig.records.runlog import RunFolder

    held = RunFolder(tmp_path / "D").claim("eval")
    with pytest.raises(OutDirError, match="in use by another rig command"):
        RunFolder(tmp_path / "D").claim("eval")
    held.release()
    RunFolder(tmp_path / "D").claim("eval").release()  # once the first run ended, the folder is free again
