"""The eval's expected failures end in one line and exit 2, with nothing finished lost.

- a dataset path that does not exist, and rows without the loader's columns: refused before any
  model server starts (the CLI returns in seconds, and no run folder is made);
- a real full disk mid-run (a small tmpfs filled up once two samples are written): the message names
  the disk, the samples kept and the resume command; after space is freed, `--resume` completes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_rig.records.trajectory import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def rig(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_missing_dataset_file_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = rig("eval", "-c", "cpu-tiny", "--dataset", str(tmp_path / "missing.jsonl"), "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "missing.jsonl" in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # rich may fold one long line
    assert not out.exists()  # refused before the rig made anything


def test_rows_without_required_columns_fail_before_any_server(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "How many rolls?", "answer": "3"}) + "\n")
    out = tmp_path / "run"
    r = rig("eval", "-c", "cpu-tiny", "--dataset", str(rows), "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "missing field" in r.stderr and "context_window_text" in r.stderr
    assert not out.exists()  # no server log folder: nothing started


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and this project's machines run as root)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler.bin"
    block = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.vllm
def test_full_disk_mid_eval_names_disk_kept_samples_and_resume(vllm_server: str, small_disk: Path) -> None:
    rd = small_disk / "run"
    cmd = [sys.executable, "-m", "rlm_rig.experiments.cli", "eval", "--config", "cpu-tiny", "--dataset", "oolong-real",
           "--source", "toy", "--limit", "6", "--out", str(rd), "--no-report",
           "--set", f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny", "--set", "eval.max_samples=1"]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and len(read_jsonl(rd / "samples.jsonl")) < 2:
        assert p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(0.1)
    filler = fill(small_disk)
    _, stderr = p.communicate(timeout=600)
    assert p.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    flat = " ".join(stderr.split())
    kept = read_jsonl(rd / "samples.jsonl")
    assert 2 <= len(kept) < 6
    assert f"disk full on {small_disk}" in flat
    assert f"{len(kept)} finished samples are kept" in flat
    assert f"rlm-rig eval --resume {rd}" in flat
    filler.unlink()
    r = rig("eval", "--resume", str(rd), "--no-report")
    assert r.returncode == 0, r.stderr[-2000:]
    after = read_jsonl(rd / "samples.jsonl")
    assert after[: len(kept)] == kept
    assert sorted({row["id"] for row in after}) == sorted(row["id"] for row in after) and len(after) == 6
