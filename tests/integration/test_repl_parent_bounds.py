"""The parent as a hardened server: whatever an owned kernel writes on its pipes, the parent stays
within a stated memory bound, ends every cell (most attacks never stop on their own: a parent that missed its
deadline would hang here until the hang guard), says which bound ended it, and never takes a frame of one cell (or
of no cell) as another cell's result (issue 20). How long each cell took is printed, never asserted: lateness is a
benchmark's matter, not a test's.

The attack code below gets the kernel's own pipe end from `sub_call`'s closure, as model code that
owns the kernel can, and writes raw frames: floods, forgeries and amplification requests. The
bounds are correctness bounds with generous grace, not speed targets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from owned_kernel import OWN_LINK
from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.types import SandboxLimits, SubCallReply
from rlm_rig.repl.launch import plan_for

PROJECT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 3.0
RSS_BOUND_MIB = 96  # parent peak RSS growth over the whole attack run (5M-character document)

LAUNCHERS = [pytest.param(n, marks=pytest.mark.skipif(plan_for(n, network=False) is None,
                                                       reason=f"launcher {n!r} does not work here"))
             for n in ("bwrap", "unshare", "none")]

# Model code that owns the kernel: the pipe fds, a raw frame writer, a reader that drains replies.
OWN = OWN_LINK + textwrap.dedent(r'''
    def _drain():
        while True:
            if not _o.read(_link.fd_in, 1 << 20):
                return
    ''')

ATTACKS = {
    # a thread of an earlier cell forges the next cell's completion, with a final answer
    "stale_thread_forges_next_done": (
        OWN + "def _f():\n    _tm.sleep(0.3)\n"
              "    _o.write(_link.fd_out, _frame({'t': 'done', 'cell': 3, 'n_blobs': 1, 'blob_keys': ['final'], "
              "'notices': []}) + _frame(b'FORGED', b'B'))\n"
              "_t.Thread(target=_f, daemon=True).start()",
        "import time; time.sleep(1.5); secret = 'real'"),
    # a flood of small frames without the cell's nonce, never stopping
    "flood_without_nonce": (
        OWN + "def _f():\n    _tm.sleep(0.3)\n    blob = _frame({'t': 'noise', 'pad': 'x' * 200}) * 200\n"
              "    while True:\n        _o.write(_link.fd_out, blob)\n"
              "_t.Thread(target=_f, daemon=True).start()",
        "import time; time.sleep(1.5)"),
    # a flood of valid, nonce-carrying requests whose replies a second thread drains
    "flood_with_nonce": (
        None,
        OWN + "_t.Thread(target=_drain, daemon=True).start()\n"
              "blob = _frame({'t': 'sub', 'id': 1, 'n': getattr(_link, 'nonce', None), 'reqs': []}) * 500\n"
              "while True:\n    _o.write(_link.fd_out, blob)"),
    # the old amplification: each tiny 'pcheck' frame made the parent queue the whole document
    "amplify_document_resend": (
        None,
        OWN + "_t.Thread(target=_drain, daemon=True).start()\n"
              "blob = _frame({'t': 'pcheck', 'n': getattr(_link, 'nonce', None), 'plen': -1, 'psha': ''}) * 40\n"
              "while True:\n    _o.write(_link.fd_out, blob)"),
    # a request the parent refuses for its size: the refusal must not cost more than the request
    "refusal_reply_amplify": (
        None,
        OWN + "blob = _frame({'t': 'sub', 'id': 1, 'n': getattr(_link, 'nonce', None), 'reqs': [0] * 100_000})\n"
              "while True:\n    _o.write(_link.fd_out, blob)"),
    # a JSON frame nested deeper than the parser's recursion limit, under the JSON size cap
    "json_nesting": (
        None,
        OWN + "_o.write(_link.fd_out, _frame(b'[' * 250_000, b'J'))\nimport time; time.sleep(5)"),
    # a forged reply whose output is invalid bytes after one 4-byte character (a UCS-4 decode)
    "done_decode_amplify": (
        None,
        OWN + "head = {'t': 'done', 'cell': -1, 'n': getattr(_link, 'nonce', None), 'blob_keys': ['stdout'], "
              "'notices': [], 'n_blobs': 1}\n"
              "import sys; head['cell'] = sys._getframe().f_back.f_locals.get('cell_id')\n"
              "_o.write(_link.fd_out, _frame(head) + _frame('\U0001F600'.encode() + b'\\xff' * 9_000_000, b'B'))\n"
              "import time; time.sleep(5)"),
    # requests the parent must refuse (over the chunk cap) still cost it decoding: never credited back
    "refused_requests_cost_the_cell": (
        None,
        OWN + "_t.Thread(target=_drain, daemon=True).start()\n"
              "big = b'y' * 2_500_000\n"
              "while True:\n"
              "    _o.write(_link.fd_out, _frame({'t': 'sub', 'id': 2, 'n': getattr(_link, 'nonce', None), 'n_blobs': 2, "
              "'reqs': [{'index': None}]}) + _frame(big, b'B') + _frame(b'i', b'B'))"),
}

RUNNER = textwrap.dedent(r'''
    import json, sys, time
    from rlm_rig.repl.sandbox import Sandbox
    from rlm_rig.repl.types import SandboxLimits, SubCallReply
    attacks = json.loads(sys.argv[1]); launcher = sys.argv[2]; timeout = float(sys.argv[3])
    def status(key):
        for line in open('/proc/self/status'):
            if line.startswith(key + ':'):
                return int(line.split()[1]) // 1024
    lim = SandboxLimits(launcher=launcher, cell_timeout_s=timeout, max_subcall_chars=2_000_000,
                        max_output_chars=200_000, allow_weak_launchers=True)
    doc = 'D' * 5_000_000
    out = {}
    with Sandbox(doc, handler=lambda reqs: [SubCallReply(text='ok') for _ in reqs], limits=lim) as box:
        box.run_cell('x = 1')
        open('/proc/self/clear_refs', 'w').write('5')  # reset the peak (VmHWM) to the current RSS
        base = status('VmRSS')
        for name, (setup, attack) in attacks.items():
            if setup:
                box.run_cell(setup)
            t0 = time.monotonic()
            r = box.run_cell(attack)
            after = box.run_cell('print(len(prompt))')
            out[name] = {'wall': time.monotonic() - t0, 'kill_reason': r.kill_reason, 'error': (r.error or '')[:300],
                         'final': r.final_answer, 'stdout': r.stdout[:100], 'after': after.stdout.strip(),
                         'after_error': after.error}
        out['_rss'] = {'base_mib': base, 'peak_mib': status('VmHWM')}
    print(json.dumps(out))
    ''')


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_flood_forge_and_amplify_leave_the_parent_within_its_bounds(launcher):
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    res = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(ATTACKS), launcher, str(TIMEOUT_S)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=str(PROJECT))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    rss = out.pop("_rss")
    growth = rss["peak_mib"] - rss["base_mib"]
    assert growth < RSS_BOUND_MIB, (growth, out)
    print({name: round(r["wall"], 2) for name, r in out.items()}, f"(cell timeout {TIMEOUT_S} s)")
    forged = out.pop("done_decode_amplify")  # the kernel's own cell: accepted, but cut before decoding
    assert len(forged["stdout"]) <= 100, forged
    for name, r in out.items():
        assert r["kill_reason"] in ("protocol", "budget", "timeout"), (name, r)
        assert r["final"] is None and "FORGED" not in r["stdout"], (name, r)
        assert r["after"] == "5000000" and r["after_error"] is None, (name, r)  # the next cell works
    # frames that lack the cell's nonce are refused as soon as they are read
    assert out["stale_thread_forges_next_done"]["kill_reason"] == "protocol"
    assert "nonce" in out["flood_without_nonce"]["error"]
    assert out["amplify_document_resend"]["kill_reason"] == "protocol"


def _echo(reqs):
    return [SubCallReply(text="re:" + r.chunk) for r in reqs]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_sub_call_from_a_thread_that_outlived_its_cell_gets_a_clear_error(launcher):
    """The thread's late sub_call fails with SubCallError; the next cell runs normally, state kept."""
    lim = SandboxLimits(launcher=launcher, cell_timeout_s=10, allow_weak_launchers=True)
    with Sandbox("doc", handler=_echo, limits=lim) as box:
        r = box.run_cell(textwrap.dedent("""
            import threading, time
            seen = []
            def late():
                time.sleep(0.5)
                try:
                    seen.append(sub_call('late', 'q'))
                except SubCallError as exc:
                    seen.append('error: ' + str(exc))
            th = threading.Thread(target=late); th.start()
            kept = 41
            """))
        assert r.error is None, r.error
        import time
        time.sleep(1.0)  # the thread calls sub_call between cells
        r = box.run_cell("th.join(); kept += 1; print(kept, seen)")
        assert r.error is None and not r.restarted, r
        assert r.stdout.startswith("42 ['error: sub_call was called outside a running cell"), r.stdout
        # a thread whose sub_call lands inside a later cell is served normally
        r = box.run_cell("t2 = threading.Thread(target=lambda: seen.append(sub_call('x', 'q'))); t2.start(); "
                         "t2.join(); print(seen[-1])")
        assert r.stdout == "re:x\n", r


def test_integrity_labels_say_who_vouches_for_prompt_and_answer():
    with Sandbox("the document", handler=_echo, limits=SandboxLimits(cell_timeout_s=10)) as box:
        first = box.run_cell("x = 'from a variable'")
        assert first.prompt_integrity == "verified"  # no model code ran in this kernel before
        r = box.run_cell("FINAL('literal answer')")
        assert (r.prompt_integrity, r.final_answer, r.final_integrity, r.final_var) == (
            "claimed", "literal answer", "claimed", None)  # executed by the kernel: never the parent's word
        r = box.run_cell("FINAL_VAR('x')")
        assert (r.final_answer, r.final_integrity, r.final_var) == ("from a variable", "claimed", "x")
        r = box.run_cell("import sys\nsys._getframe(0).f_back.f_locals['self'].protected['prompt'] = 'forged'")
        assert r.error is None, r.error
        r = box.run_cell("print(prompt)")
        assert r.stdout == "the document\n" and r.prompt_integrity == "violated" and r.prompt_restored
        r = box.run_cell("os = __import__('os'); os._exit(3)")
        assert r.restarted
        assert box.run_cell("print(prompt)").prompt_integrity == "verified"  # a fresh kernel again


def test_the_kernel_is_not_told_host_paths_and_the_parent_checks_visibility_itself():
    """The start-up config once carried host file names for the kernel to stat (issue 20)."""
    from rlm_rig.repl.launch import KERNEL_DIR
    from rlm_rig.repl.sandbox import _visible_to_kernel

    with Sandbox("doc", handler=_echo, limits=SandboxLimits(cell_timeout_s=10)) as box:
        r = box.run_cell("import sys\nprint(sorted(sys._getframe().f_back.f_locals['self'].cfg))")
        assert "probe_paths" not in r.stdout and str(Path.home()) not in r.stdout, r
        # the parent's own check sees what the kernel sees: its code is there, the project is not
        assert _visible_to_kernel(box._kernel, [str(KERNEL_DIR / "main.py"), str(PROJECT / "pyproject.toml")]) == [
            str(KERNEL_DIR / "main.py")]


def test_a_patched_decoder_cannot_get_a_forged_answer_labelled_verified():
    """Fresh-eyes probe (issue 20, second pass): cell 1 patched json's decoder class, which the kernel's
    self-repair did not pin, and rewrote a later honest cell to the other one of its FINAL literals, which
    came back labelled `verified`. A FINAL the kernel executed is now always `claimed`."""
    patch = ("import json.decoder as d\n_orig = d.JSONDecoder.decode\n"
             "def _dec(self, s, *a, **k):\n"
             "    o = _orig(self, s, *a, **k)\n"
             "    if isinstance(o, dict) and o.get('t') == 'run' and 'FINAL(\"B\")' in o.get('code', ''):\n"
             "        o['code'] = 'FINAL(\"B\")'\n"
             "    return o\n"
             "d.JSONDecoder.decode = _dec\n")
    honest = 'x = "A"\nif x == "A":\n    FINAL("A")\nelse:\n    FINAL("B")\n'
    with Sandbox("doc", handler=_echo, limits=SandboxLimits(cell_timeout_s=10)) as box:
        box.run_cell(patch)
        r = box.run_cell(honest)
        assert r.final_answer is not None and r.final_integrity == "claimed", r


def test_cell_nonces_are_not_predictable_from_earlier_ones():
    """The nonce once came from a seeded Mersenne Twister: 312 observed nonces rebuilt its state."""
    import inspect

    from rlm_rig.repl import sandbox as sb

    src = inspect.getsource(sb)
    assert "os.urandom" in inspect.getsource(sb.Sandbox._next_nonce) and "getrandbits" not in src
    assert "random.Random" not in src


def test_parent_cpu_budget_ends_a_cell_of_many_cheap_requests():
    """Each request is small and valid, but together they cost the parent CPU (decoding, checking,
    replying; the handler's own CPU is not counted): past `max_parent_cpu_s` the kernel is replaced."""
    lim = SandboxLimits(cell_timeout_s=120, max_parent_cpu_s=0.05)
    with Sandbox("doc", handler=_echo, limits=lim) as box:
        r = box.run_cell("for i in range(200000):\n    sub_call('c', 'i')\n")
        assert r.kill_reason == "budget" and "CPU" in (r.error or ""), r
        assert 2 < r.sub_calls < 200000, r
        assert box.run_cell("print(sub_call('c', 'i'))").stdout == "re:c\n"  # a fresh kernel
