"""Live progress for `ask` and `interp patch`: drawn on a terminal from the loop's real events,
silent when the output is not a terminal."""
from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rich.console import Console

from rlm_rig.configs.load import load_config
from rlm_rig.controller.loop import RLM, RunContext
from rlm_rig.controller.backends import ReplayLM
from rlm_rig.experiments.cli.live import AskProgress
from rlm_rig.interp.progress import PairProgress
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.hf import TransformersWorker
from rlm_rig.worker.tokens import load_tokenizer

DOC = "".join(f"line {i}: Grog rolls a {i % 20}.\n" for i in range(300))


@pytest.fixture(scope="module")
def hf_worker(tiny_model_path):
    w = SyncWorker(TransformersWorker(str(tiny_model_path), device="cpu", dtype="float32", max_tokens=8))
    yield w
    w.close()


def _tty() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=200), buf


def test_ask_progress_follows_the_loop(hf_worker, tiny_model_path):
    tok = load_tokenizer(str(tiny_model_path))
    cfg = load_config("cpu-tiny", ["worker.max_tokens=8", "sandbox.cell_timeout_s=20"])
    responses = ["```repl\nrs = sub_call_batch([prompt[:1000], prompt[1000:2000]], 'How many rolls?')\nprint(rs)\n```",
                 "FINAL(2)"]
    ctx = RunContext(cfg=cfg, lm=ReplayLM(responses), worker=hf_worker,
                     count_tokens=lambda s: len(tok(s, add_special_tokens=False)["input_ids"]),
                     models={"controller": "replay", "worker": "tiny"}, versions={})
    con, buf = _tty()
    events, lines = [], []
    with AskProgress(hf_worker, cfg.rlm.max_iterations, console=con) as live:
        def spy(kind, traj):
            live.on_event(kind, traj)
            events.append(kind)
            lines.append(live.line())
        t = RLM(replace(ctx, on_event=spy)).run(DOC, "How many rolls?")
    assert t.stop_reason == "final" and len(t.sub_calls) == 2
    assert events == ["turn", "cell", "cell_done", "turn", "done"]
    assert lines[1].startswith("turn 1/6 | cell 0 running") and "0 done" in lines[1]
    assert "2 done" in lines[2] and "1 cells run" in lines[2]
    assert float(lines[-1].split("worker ")[1].split(" tok/s")[0]) > 0
    assert "2 done" in buf.getvalue()  # drawn on the (forced) terminal


def test_quiet_when_not_a_terminal():
    buf = io.StringIO()
    con = Console(file=buf)  # a StringIO is not a terminal
    with AskProgress(None, 6, console=con) as live:
        live.on_event("turn", None)
    with PairProgress(console=con) as p:
        p(1, 4, 120)
    assert live.live is None and p.live is None and buf.getvalue() == ""


def test_pair_progress_eta():
    con, buf = _tty()
    with PairProgress(console=con) as p:
        p(2, 8, 300)
        line = p.line()
    assert line.startswith("pairs 2/8 | patches 300 |") and "ETA" in line
    assert "pairs 2/8" in buf.getvalue()
