"""Custom tools run in a child process the rig can kill (controller/tools.py): a tool that holds the GIL in C
on hostile arguments is stopped at its timeout while the parent keeps running; a flood past max_calls keeps
one record; a result over the cap never reaches the parent. The tools below are imported by the child through
their refs (`test_tools_runner:name`): the child gets this process's sys.path."""
from __future__ import annotations

import faulthandler
import json
import re
import threading
import time
import tracemalloc

import pytest

from rlm_rig.controller.tools import ToolRunner
from rlm_rig.records.trajectory import Trajectory

TOOLS = {"backtrack": "test_tools_runner:backtrack", "echo": "test_tools_runner:echo",
         "big": "test_tools_runner:big", "die": "test_tools_runner:die"}


def backtrack(n: int) -> bool:
    """A regex tool on a hostile pattern: sre holds the GIL for 2**n steps (n=27: many seconds)."""
    return re.match(r"(a+)+b", "a" * n + "c") is not None


def echo(x):
    return x


def big(n: int) -> str:
    return "x" * n


def die() -> None:
    import os
    os._exit(3)


def runner(**kw) -> ToolRunner:
    opts = {"timeout_s": 1.0, "max_result_chars": 10_000, "max_calls": 50, "depth": 0} | kw
    return ToolRunner(TOOLS, Trajectory(run_id="t", question="q", doc_chars=0, doc_sha256="", config={},
                                        config_hash="", models={}, versions={}, depth=0, started_at=""), **opts)


@pytest.fixture
def watchdog():
    """A frozen parent (the old thread runner) cannot run Python to fail the test: faulthandler's C thread
    dumps the stacks and ends the process instead, far past any sane run of the test."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def test_a_tool_holding_the_gil_is_killed_at_its_timeout_and_the_parent_keeps_ticking(watchdog):
    tr = runner()
    try:
        assert tr("echo", [1], {}).text == "1"  # the child is up: the call below measures the tool alone
        ticks, stop = [], threading.Event()

        def heartbeat() -> None:  # an event count: did the parent run other Python while the tool held its GIL?
            while not stop.is_set():
                ticks.append(1)
                time.sleep(0.01)

        hb = threading.Thread(target=heartbeat, daemon=True)
        hb.start()
        before = len(ticks)
        rep = tr("backtrack", [27], {})
        during = len(ticks) - before
        stop.set()
        hb.join()
        assert rep.error == "backtrack did not return within 1 s (tool timeout)" and rep.text is None
        assert during >= 1, "the parent froze during the call: its other thread never ran"
        assert tr.traj.sub_calls[-1].error_kind == "tool"
        assert tr("echo", [{"after": "kill"}], {}).text == '{"after": "kill"}'  # started again on demand
        assert tr.proc.starts == 2
    finally:
        tr.close()
    assert tr.proc.child is None


def test_a_flood_past_max_calls_keeps_one_record_and_refuses_each_call():
    tr = runner(max_calls=3)
    try:
        replies = [tr("echo", [k], {}) for k in range(2000)]
    finally:
        tr.close()
    assert [r.text for r in replies[:3]] == ["0", "1", "2"]
    assert all(r.error == "tool call limit reached (3 per run)" for r in replies[3:])
    recs = tr.traj.sub_calls
    assert len(recs) == 4, len(recs)  # bounded whatever the kernel sends: max_calls + one refusal
    assert recs[3].error.startswith("tool call limit reached (3 per run); 1997 calls refused in all")
    assert [c.cap for c in tr.traj.caps_hit] == ["tool_calls"]


def test_a_result_over_the_cap_is_refused_without_reaching_the_parent():
    tr = runner(max_result_chars=1000)
    try:
        tracemalloc.start()
        rep = tr("big", [20_000_000], {})
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert rep.error == "tool big returned 20000002 JSON characters, over the cap of 1000"
        assert tr.traj.sub_calls[-1].error_kind == "tool_result"  # the CLI reports it as bad input
        assert peak < 1_000_000, peak  # the 20 MB string was built and refused in the child
        # the parent's own cap: a frame longer than the cap is refused by its length, before it is read
        tr.proc.max_reply_bytes = 100
        rep = tr("big", [500], {})
        assert rep.error == "tool big returned a result over the cap of 1000 JSON characters"
        assert tr("big", [5], {}).text == '"xxxxx"'
    finally:
        tr.close()


def test_a_tool_that_kills_its_process_is_an_error_and_the_next_call_starts_a_new_one():
    tr = runner()
    try:
        rep = tr("die", [], {})
        assert rep.error == "die: the tool process died during the call (exit code 3)"
        assert json.loads(tr("echo", [[1, "é"]], {}).text) == [1, "é"]
    finally:
        tr.close()


PARENT = """
import sys, time
from rlm_rig.controller.tools import ToolRunner
from rlm_rig.records.trajectory import Trajectory
t = Trajectory(run_id="t", question="q", doc_chars=0, doc_sha256="", config={}, config_hash="", models={},
               versions={}, depth=0, started_at="")
tr = ToolRunner({"sleep": "time:sleep", "pid": "os:getpid"}, t, timeout_s=300, max_result_chars=100, max_calls=9,
                depth=0)
print(tr("pid", [], {}).text, flush=True)
tr("sleep", [300], {})
"""


def test_a_parent_killed_mid_call_leaves_no_tool_process_behind(watchdog):
    import os
    import subprocess
    import sys

    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # the child is in time.sleep(300) now
    parent.kill()
    parent.wait()
    for _ in range(900):  # the child notices its parent is gone (about a second); 90 s: a hang guard
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not yet reaped by its new parent
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(child, 9)
    pytest.fail(f"tool process {child} outlived its parent (a hang guard, not a speed check)")


def shout(n: int) -> None:
    raise ValueError("é" * n)


def test_a_long_error_at_a_small_result_cap_is_the_tools_error_not_an_over_cap_result():
    tr = ToolRunner({"shout": "test_tools_runner:shout"},
                    runner().traj, timeout_s=5.0, max_result_chars=10, max_calls=5, depth=0)
    try:
        reply = tr("shout", [5000], {})
        rec = tr.traj.sub_calls[-1]
        assert rec.error_kind == "tool" and reply.error.startswith("shout raised ValueError: éé"), rec.error
        assert len(reply.error) <= 2000
    finally:
        tr.close()
