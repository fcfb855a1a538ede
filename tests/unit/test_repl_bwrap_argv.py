"""bubblewrap applies its mount operations in order: a tmpfs on /tmp mounted after the read-only
binds hides every bind under /tmp, so a checkout (and its venv) in /tmp/... could not start a
kernel. CI clones into another folder, which may well be under /tmp."""
from __future__ import annotations

from pathlib import Path

from rlm_rig.repl.launch import Plan, bwrap_prefix


def test_tmp_is_mounted_before_the_interpreter_binds(tmp_path: Path) -> None:
    plan = Plan(launcher="bwrap", drop_uid=True, scratch_tmpfs=True, seccomp=False)
    argv = bwrap_prefix(tmp_path / "scratch", network=False, plan=plan, seccomp_fd=None)
    tmpfs = argv.index("--tmpfs")
    assert argv[tmpfs + 1] == "/tmp"
    binds = [i for i, a in enumerate(argv) if a == "--ro-bind"]
    assert binds and tmpfs < min(binds)
