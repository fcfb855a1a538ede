"""The frame format and the parent's behaviour when a kernel cannot start."""
from __future__ import annotations

import os
import sys

import pytest

from rlm_rig.repl.sandbox import Sandbox
from rlm_rig.repl.types import SandboxError, SandboxLimits
from rlm_rig.repl._kernel.wire import FrameDecoder, ProtocolError, decode_json, encode_bytes, encode_json


def test_frames_round_trip_in_pieces():
    data = encode_json({"t": "x", "text": "h\u00e9llo \ud800 surrogate"}) + encode_bytes(b"\x00raw")
    dec = FrameDecoder(max_frame=1 << 20)
    frames = []
    for i in range(len(data)):  # byte by byte: partial reads must be handled
        dec.feed(data[i:i + 1])
        while (frame := dec.next_frame()) is not None:
            frames.append(frame)
    assert frames[0][0] == b"J" and decode_json(frames[0][1])["text"] == "h\u00e9llo \ud800 surrogate"
    assert frames[1] == (b"B", b"\x00raw")


@pytest.mark.parametrize("blob,match", [
    (b"Z\x00\x00\x00\x01x", "unknown frame kind"),
    (b"J\x7f\xff\xff\xff", "exceeds"),
])
def test_decoder_rejects_garbage(blob, match):
    dec = FrameDecoder(max_frame=1024)
    dec.feed(blob)
    with pytest.raises(ProtocolError, match=match):
        dec.next_frame()


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"no_t": 1}', b"\xff\xfe"])
def test_decode_json_rejects_non_messages(payload):
    with pytest.raises(ProtocolError):
        decode_json(payload)


def test_unstartable_kernel_raises_sandbox_error(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with pytest.raises(SandboxError, match="could not start the REPL kernel"):
        Sandbox("p", handler=lambda reqs: [], limits=SandboxLimits(startup_timeout_s=5, launcher="none"))


def _no_bwrap(monkeypatch):
    import rlm_rig.repl.launch as launch

    for name in ("bwrap", "unshare"):
        monkeypatch.setitem(launch._plan_cache, launch.plan_key(name, False), None)
        monkeypatch.setitem(launch._plan_errors, launch.plan_key(name, False), "disabled by the test")


def test_auto_launcher_falls_back_when_allowed_and_reports(monkeypatch):
    """An unusable wrapper is skipped when weaker launchers are allowed; the report says which runs."""
    from rlm_rig.repl.launch import plan_for

    _no_bwrap(monkeypatch)
    limits = SandboxLimits(cell_timeout_s=5, allow_weak_launchers=True)
    if plan_for("none", network=False) is None:  # root, and no unprivileged uid can run this interpreter
        with pytest.raises(SandboxError, match="must switch to an unprivileged uid"):
            Sandbox("p", handler=lambda reqs: [], limits=limits)
        return
    with Sandbox("p", handler=lambda reqs: [], limits=limits) as box:
        assert box.isolation.launcher == "none"
        assert not box.isolation.pid_namespace
        assert any("bubblewrap is not usable" in n and "apt-get install bubblewrap" in n for n in box.isolation.notes)
        r = box.run_cell("import os\nos.fork()")
    assert "sandbox: starting processes is not allowed" in r.error


def test_auto_launcher_as_root_refuses_weaker_launchers(monkeypatch):
    """As root, "auto" does not silently fall back below bubblewrap: the error says what to install."""
    import rlm_rig.repl.launch as launch

    monkeypatch.setattr(launch, "is_root", lambda: True)
    _no_bwrap(monkeypatch)
    with pytest.raises(SandboxError, match=r"refuses the weaker launchers.*apt-get install bubblewrap.*"
                                           r"allow_weak_launchers"):
        Sandbox("p", handler=lambda reqs: [], limits=SandboxLimits(cell_timeout_s=5))


def test_closed_sandbox_refuses_cells():
    box = Sandbox("p", handler=lambda reqs: [])
    box.close()
    box.close()  # idempotent
    with pytest.raises(SandboxError, match="closed"):
        box.run_cell("1")


def test_run_cell_rejects_non_str():
    with Sandbox("p", handler=lambda reqs: []) as box:
        with pytest.raises(TypeError, match="code must be a str"):
            box.run_cell(b"print(1)")  # type: ignore[arg-type]


def test_bad_handler_results_become_subcall_errors():
    from rlm_rig.repl.types import SubCallReply

    def wrong_length(reqs):
        return [SubCallReply(text="only one")]

    with Sandbox("p", handler=wrong_length) as box:
        r = box.run_cell("sub_call_batch(['a', 'b'], 'q')")
        assert "SubCallError" in r.error and "wrong length" in r.error
        assert not r.restarted


def test_repl_imports_no_heavy_dependencies():
    """The rig's controller imports repl early; it must stay stdlib-only (no torch, numpy, ...)."""
    import subprocess

    code = ("import sys, rlm_rig.repl.sandbox\n"
            "print(sorted(m for m in ('torch', 'numpy', 'transformers', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_keyboard_interrupt_in_handler_propagates_and_next_cell_gets_a_fresh_kernel():
    from rlm_rig.repl.types import SubCallReply

    calls = []

    def handler(reqs):
        calls.append(len(reqs))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return [SubCallReply(text="ok") for _ in reqs]

    with Sandbox("PROMPT", handler=handler, limits=SandboxLimits(cell_timeout_s=10)) as box:
        with pytest.raises(KeyboardInterrupt):
            box.run_cell("sub_call('a', 'b')")
        r = box.run_cell("print(len(prompt), sub_call('a', 'b'))")
        assert r.error is None and r.stdout == "6 ok\n"
        assert box.kernel_starts == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop of the weak launchers is for root parents")
@pytest.mark.parametrize("launcher", ["unshare", "none"])
def test_weak_launchers_as_root_drop_to_a_kernel_uid_or_are_refused(launcher):
    """As root, `unshare` and `none` never leave the kernel root on the host (issue 20)."""
    from rlm_rig.repl.launch import plan_for
    from rlm_rig.repl.uids import UID_BASE, UID_COUNT

    lim = SandboxLimits(cell_timeout_s=5, launcher=launcher)
    if plan_for(launcher, network=False) is None:
        with pytest.raises(SandboxError, match="must switch to an unprivileged uid before Python starts"):
            Sandbox("p", handler=lambda reqs: [], limits=lim)
        return
    with Sandbox("p", handler=lambda reqs: [], limits=lim) as box:
        assert UID_BASE <= box.isolation.host_uid < UID_BASE + UID_COUNT, box.isolation
