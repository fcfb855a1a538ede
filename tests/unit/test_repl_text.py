"""Model output printed to an operator's terminal shows escape sequences instead of obeying them (issue 20)."""
from __future__ import annotations

from rlm_rig.repl.text import terminal_safe


def test_control_and_escape_sequences_are_shown_not_obeyed():
    raw = "answer\x1b]0;retitled\x07\x1b[2J\rover\u202eflip\x9b\x7f"
    safe = terminal_safe(raw)
    assert safe == "answer\\x1b]0;retitled\\x07\\x1b[2J\\rover\\u202eflip\\x9b\\x7f"
    assert not any(ord(c) < 32 and c not in "\n\t" for c in safe)


def test_plain_text_newlines_tabs_and_unicode_are_kept():
    text = "line 1\n\tline 2: héllo 日本 ✓"
    assert terminal_safe(text) == text
    assert terminal_safe("\ud800") == "\ufffd"  # never fails on a lone surrogate either


def test_remove_tree_removes_a_link_and_never_touches_its_target(tmp_path):
    """Fresh-eyes probe (issue 20, second pass): a kernel swapped its scratch for a link, and the root parent's
    `chmod -R` fallback then changed the mode of the link's target outside the sandbox."""
    import os

    from rlm_rig.repl.scratch import remove_tree

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("x")
    os.chmod(victim, 0o500)
    link = tmp_path / "rlm-repl-1-scratch"
    link.symlink_to(victim, target_is_directory=True)
    assert remove_tree(link)
    assert not os.path.lexists(link) and (victim / "secret").read_text() == "x"
    assert oct(victim.stat().st_mode & 0o777) == oct(0o500)
    os.chmod(victim, 0o700)


def test_the_janitor_leaves_a_live_pids_things_alone(tmp_path):
    """Fresh-eyes probe (issue 20, second pass): a rig that exec'd (same pid, new image) or a new rig on a reused
    pid lost its scratch and kernels to the old rig's janitor, which knew its rig by pid alone."""
    import os
    import subprocess

    from rlm_rig.repl.cleanup import JANITOR

    leases = tmp_path / "leases"
    leases.mkdir()

    def janitor_for(pid: int) -> None:
        subprocess.run(["/bin/sh", "-c", JANITOR, "janitor", str(pid), str(tmp_path), str(leases)],
                       stdin=subprocess.DEVNULL, timeout=60, check=True)

    live = tmp_path / f"rlm-repl-{os.getpid()}-scratch"
    live.mkdir()
    janitor_for(os.getpid())  # this pid is alive: a rig that exec'd, or a new one on a reused pid
    assert live.is_dir()
    child = subprocess.Popen(["true"])
    child.wait()  # exited and reaped: its pid is gone
    dead_pid = child.pid
    gone = tmp_path / f"rlm-repl-{dead_pid}-scratch"
    gone.mkdir()
    janitor_for(dead_pid)
    assert not gone.exists()
