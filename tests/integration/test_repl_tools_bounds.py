"""The new message kinds (custom tool calls, sub_call requests with a kind and a model) as an owned kernel
can forge them: each is bounded like a sub_call (the cell's nonce, size caps before decoding, the cell's
timeout and parent budgets), and a forged or oversized one costs the kernel its call, never the parent."""
from __future__ import annotations

import json
import textwrap
import time

import pytest

from rlm_rig.controller.tools import ToolRunner
from rlm_rig.records.trajectory import Trajectory
from owned_kernel import OWN_LINK
from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.types import SandboxLimits, SubCallReply

OWN = OWN_LINK + textwrap.dedent(r'''
    def _tool(blob, name='echo', nonce=True):
        head = {'t': 'tool', 'id': 99, 'name': name, 'n_blobs': 1}
        if nonce:
            head['n'] = _link.nonce
        _o.write(_link.fd_out, _frame(head) + _frame(blob, b'B'))
        while True:  # read frames until the reply to id 99
            hdr = _o.read(_link.fd_in, 5)
            kind, n = _s.unpack('>cI', hdr)
            body = b''
            while len(body) < n:
                body += _o.read(_link.fd_in, n - len(body))
            msg = _j.loads(body)
            if msg.get('id') == 99:
                return msg
    ''')


def calls(reqs):
    return [SubCallReply(text=f"{r.kind}:{r.model}") for r in reqs]


def echo(name, args, kwargs):
    return SubCallReply(text=json.dumps({"args": args, "kwargs": kwargs}))


@pytest.fixture(scope="module")
def box():
    lim = SandboxLimits(cell_timeout_s=4, max_tool_chars=10_000, max_parent_cpu_s=5)
    with Sandbox("doc", handler=calls, limits=lim, tools={"echo": "echo(...): returns its arguments"},
                 tool_handler=echo) as sb:
        yield sb


def test_forged_tool_frames_are_refused_without_decoding(box):
    r = box.run_cell(OWN + textwrap.dedent("""
        print(_tool(b'x' * 200_000)['error'][:70])
        print(_tool(b'[' * 9_000)['error'])
        print(_tool(b'{"args": 1, "kwargs": {}}')['error'])
        print(_tool(b'{"args": [], "kwargs": {}}', name='nope')['error'])
        print(_tool(b'{"args": [1], "kwargs": {}}')['result'])
        """))
    assert r.error is None and not r.restarted, r
    lines = r.stdout.splitlines()
    assert lines[0].startswith("echo: malformed call, or arguments over the sandbox cap of 10000")
    assert lines[1] == "echo: the arguments are not valid JSON"  # nested past the parser's depth: refused
    assert lines[2].startswith("echo: malformed call (args must be a list")
    assert lines[3] == "no custom tool named 'nope' in this run"
    assert json.loads(lines[4]) == {"args": [1], "kwargs": {}}
    assert box.run_cell("print(echo(2, k='v'))").stdout == "{'args': [2], 'kwargs': {'k': 'v'}}\n"


def test_a_tool_frame_without_the_cells_nonce_kills_the_kernel(box):
    r = box.run_cell(OWN + "_tool(b'{\"args\": [], \"kwargs\": {}}', nonce=False)")
    assert r.restarted and r.kill_reason == "protocol" and "nonce" in r.error
    assert box.run_cell("print(echo('after'))").stdout == "{'args': ['after'], 'kwargs': {}}\n"


def test_a_flood_of_tool_calls_ends_within_the_cell_timeout(box):
    r = box.run_cell("while True:\n    echo('x' * 5000)")  # a hang is caught by the suite's pytest timeout
    assert r.kill_reason in ("timeout", "budget") and r.restarted, r
    assert box.run_cell("print(echo(1)['args'])").stdout == "[1]\n"


def test_tool_arguments_and_results_are_capped(box):
    r = box.run_cell("try:\n    echo('y' * 20_000)\nexcept Exception as e:\n    print(type(e).__name__, e)")
    assert r.stdout.startswith("ToolError echo: arguments of 20")  # the kernel's early refusal, never sent
    r = box.run_cell(OWN + "_link.max_tool_chars = 10**9\ntry:\n    echo('y' * 20_000)\n"
                     "except Exception as e:\n    print(type(e).__name__, e)")
    assert "exceed the cap of 10000" in r.stdout or "over the sandbox cap" in r.stdout, r  # the parent's own count


def test_forged_kind_or_model_in_a_sub_call_request_is_refused(box):
    r = box.run_cell(OWN + textwrap.dedent("""
        _o.write(_link.fd_out, _frame({'t': 'sub', 'id': 7, 'n': _link.nonce, 'kind': 'tool', 'n_blobs': 2,
                                       'reqs': [{'index': None}]}) + _frame(b'c', b'B') + _frame(b'i', b'B'))
        hdr = _o.read(_link.fd_in, 5); n = _s.unpack('>cI', hdr)[1]
        print(_j.loads(_o.read(_link.fd_in, n))['refused'])
        _link.request([{'chunk': 'a', 'instruction': 'b', 'index': None}], kind='llm', model='m' * 500)
        """))
    assert r.stdout.startswith("malformed sub_call request (kind or model)"), r
    assert "malformed sub_call request (kind or model)" in (r.error or ""), r
    assert box.run_cell("print(sub_call('a', 'b'))").stdout == "llm:None\n"


def test_a_tool_call_from_a_thread_that_outlived_its_cell_gets_a_clear_error(box):
    box.run_cell("import threading, time\nseen = []\n"
                 "def late():\n    time.sleep(0.5)\n    try:\n        seen.append(echo(1))\n"
                 "    except Exception as e:\n        seen.append(str(e))\n"
                 "th = threading.Thread(target=late); th.start()")
    time.sleep(1.0)
    r = box.run_cell("th.join(); print(seen)")
    assert "called outside a running cell" in r.stdout and not r.restarted, r


def test_a_forged_done_with_a_huge_dropped_count_is_not_a_parent_fault():
    """A 4,300-digit `dropped` once raised in the parent's own str() (Python's int digit limit): the cell came
    back as an internal sandbox error labelled a kernel crash. The parent clamps what the kernel claims."""
    forge = OWN + textwrap.dedent("""
        import sys as _sy
        _f = _sy._getframe()
        while _f is not None and not (isinstance(_f.f_locals.get('msg'), dict) and _f.f_locals['msg'].get('t') == 'run'):
            _f = _f.f_back
        _link.finish_cell({'t': 'done', 'cell': _f.f_locals['msg']['cell'], 'dropped': int('9' * 4300),
                           'truncated': True, 'notices': [], 'sub_calls': 0, 'blob_keys': ['stdout']}, ['x' * 100])
        """)
    with Sandbox("doc", handler=calls, limits=SandboxLimits(cell_timeout_s=4, max_output_chars=10)) as sb:
        r = sb.run_cell(forge)
        assert r.kill_reason is None and "internal sandbox error" not in (r.error or ""), r
        assert r.output_truncated


def test_a_tool_holding_the_gil_past_its_timeout_ends_the_call_not_the_cell():
    """A trusted tool on hostile arguments (a regex that backtracks 2**27 steps inside sre, the GIL held):
    its child is killed at the tool's timeout and the cell goes on, well before the cell's own timeout;
    in a thread the whole parent froze until the regex ended, the cell's watchdog with it."""
    traj = Trajectory(run_id="t", question="q", doc_chars=0, doc_sha256="", config={}, config_hash="", models={},
                      versions={}, depth=0, started_at="")
    runner = ToolRunner({"resub": "re:sub"}, traj, timeout_s=1.0, max_result_chars=10_000, max_calls=10, depth=0)
    lim = SandboxLimits(cell_timeout_s=8, max_tool_chars=10_000, max_parent_cpu_s=5)
    try:
        with Sandbox("doc", handler=calls, limits=lim, tools={"resub": "resub(pattern, repl, string)"},
                     tool_handler=runner) as sb:
            r = sb.run_cell("try:\n    resub(r'(a+)+b', '', 'a' * 27 + 'c')\nexcept Exception as e:\n"
                            "    print(type(e).__name__, e)\nprint(resub('a', 'b', 'aa'))")
    finally:
        runner.close()
    assert not r.timed_out and r.kill_reason is None and r.error is None, r
    assert r.stdout == "ToolError resub did not return within 1 s (tool timeout)\nbb\n", r
    assert [s.error_kind for s in traj.sub_calls] == ["tool", None] and runner.proc.child is None
