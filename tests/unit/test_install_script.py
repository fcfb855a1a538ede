"""scripts/install.sh against what a user's `.venv` may really be, run for real against a temporary VENV=.

RLM_RIG_INSTALL_STEP=prepare stops the script right after it has decided what to do with the folder
(and created the bare venv), so each case costs a second instead of a full install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install.sh"


def run_install(venv: Path, flavour: str = "cpu") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VENV": str(venv), "RLM_RIG_INSTALL_STEP": "prepare", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), flavour], env=env, capture_output=True, text=True, timeout=120)


def current_key() -> str:
    data = (ROOT / "pyproject.toml").read_bytes() + SCRIPT.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def test_fresh_path_is_prepared(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    r = run_install(venv)
    assert r.returncode == 0, r.stderr
    assert (venv / "bin" / "python").exists() and (venv / ".rlm-rig-venv").exists()


def test_dangling_link_gets_one_clear_line(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    gone = tmp_path / "another-machine" / "venv0"  # a link made elsewhere: its target is not here
    venv.symlink_to(gone)
    r = run_install(venv)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(gone) in lines[0] and "does not exist" in lines[0]
    assert f"rm {venv}" in lines[0]
    assert venv.is_symlink()  # never deleted behind the user's back


def test_link_to_a_real_folder_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    venv = tmp_path / ".venv"
    venv.symlink_to(target)
    r = run_install(venv)
    assert r.returncode == 2 and "symbolic link" in r.stderr
    assert (target / "keep.txt").exists()


def test_broken_venv_of_ours_is_rebuilt(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / ".rlm-rig-cpu-0123456789abcdef").touch()
    (venv / "lib").mkdir()  # a half-deleted venv: no bin/python
    r = run_install(venv)
    assert r.returncode == 0, r.stderr
    assert "broken" in r.stdout
    assert (venv / "bin" / "python").exists()
    assert not (venv / ".rlm-rig-cpu-0123456789abcdef").exists()


def test_stale_stamp_is_rebuilt_clean(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    assert run_install(venv).returncode == 0
    (venv / ".rlm-rig-cpu-0000000000000000").touch()
    (venv / "leftover-from-old-install").write_text("cuda torch, say")
    r = run_install(venv)
    assert r.returncode == 0, r.stderr
    assert "older install" in r.stdout
    assert not (venv / "leftover-from-old-install").exists()
    assert (venv / "bin" / "python").exists()


def test_other_flavour_is_rebuilt(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    assert run_install(venv).returncode == 0
    (venv / f".rlm-rig-gpu-{current_key()}").touch()
    r = run_install(venv, "cpu")
    assert r.returncode == 0 and "rebuilding it clean" in r.stdout


def test_up_to_date_is_left_alone(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    assert run_install(venv).returncode == 0
    (venv / f".rlm-rig-cpu-{current_key()}").touch()
    (venv / "sentinel").touch()
    r = run_install(venv)
    assert r.returncode == 0 and "up to date" in r.stdout
    assert (venv / "sentinel").exists()


def test_foreign_folder_is_never_deleted(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / "my-notes.txt").write_text("not a venv")
    r = run_install(venv)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and f"rm -rf {venv}" in r.stderr
    assert (venv / "my-notes.txt").exists()


def test_file_in_the_way(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    venv.write_text("")
    r = run_install(venv)
    assert r.returncode == 2 and "not a folder" in r.stderr


def test_unknown_flavour(tmp_path: Path) -> None:
    r = run_install(tmp_path / ".venv", "tpu")
    assert r.returncode == 2 and "usage" in r.stderr
