"""The sub_call tape against a REAL vLLM-CPU server: a rerun from the tape sends nothing to the worker.

The server's own request counter (vLLM's /metrics, `vllm:request_success_total`) is the witness, not
the rig's counters: a tape hit must never reach the server.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.rig import Rig
from rlm_rig.experiments.datasets.registry import load_examples
from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.tape import Tape
from rlm_rig.records.trajectory import Trajectory

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy():
    return next(iter(load_examples("oolong-real", "toy")))


def served_requests(url: str) -> float:
    """Requests the server finished, by its own Prometheus counter (all finish reasons)."""
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def attached(url: str, *more: str):
    return load_config("cpu-tiny", [f"worker.server.url={url}", "worker.served_name=tiny", *more])


def run(url: str, run_dir: Path, doc: str, question: str, tape: Path | None = None) -> Trajectory:
    with Rig(attached(url), run_dir=run_dir, tape=tape) as rig:
        return rig.ask(doc, question, save_to=RunFolder(run_dir).ask_trajectory_path)


def what_happened(t: Trajectory) -> dict:
    """Everything a trajectory says the run did (times and ids left out)."""
    return {"final": t.final_answer, "stop": t.stop_reason, "turns": [x.response for x in t.turns],
            "cells": [(c.code, c.stdout, c.stderr, c.error) for c in t.cells],
            "subs": [(s.messages, s.response, s.token_ids, s.token_logprobs, s.prompt_tokens, s.completion_tokens)
                     for s in t.sub_calls]}


@pytest.fixture(scope="module")
def recorded(vllm_server, toy, tmp_path_factory):
    a = tmp_path_factory.mktemp("tape-a")
    return a, run(vllm_server, a, toy.context, toy.question)


def test_a_rerun_from_the_tape_is_identical_and_sends_nothing(vllm_server, toy, recorded, tmp_path):
    a_dir, a = recorded
    assert len(a.sub_calls) >= 2 and {s.source for s in a.sub_calls} == {"model"}
    tape = Tape(RunFolder(a_dir).tape_path)
    assert len(tape) == len({str(s.messages) for s in a.sub_calls})
    assert all(e.token_ids and e.token_logprobs for e in tape.entries.values())
    before = served_requests(vllm_server)
    b = run(vllm_server, tmp_path, toy.context, toy.question, tape=a_dir)
    assert served_requests(vllm_server) == before  # zero worker calls, counted by the server
    assert {s.source for s in b.sub_calls} == {"tape"}
    assert what_happened(b) == what_happened(a)
    assert Tape(RunFolder(tmp_path).tape_path).keys() == tape.keys()  # the rerun's own tape is whole
    from rlm_rig.experiments.analysis.boundary import tape_markdown
    from rlm_rig.experiments.analysis.metrics import load_run

    table = "".join(tape_markdown([load_run(tmp_path)]))  # `report` says who answered
    assert f"| 0 | {len(b.sub_calls)} | 0 |" in table, table
    assert tape_markdown([load_run(a_dir)]) == []  # nothing to say when the model answered every call


def test_only_the_changed_sub_call_reaches_the_worker(vllm_server, toy, recorded, tmp_path):
    a_dir, a = recorded
    last = a.sub_calls[-1]
    i = next(j for j in range(last.chunk_start, last.chunk_end) if toy.context[j] == "a")
    doc = toy.context[:i] + "o" + toy.context[i + 1:]  # same length: the chunks keep their bounds
    before = served_requests(vllm_server)
    b = run(vllm_server, tmp_path, doc, toy.question, tape=a_dir)
    assert served_requests(vllm_server) == before + 1
    assert [s.source for s in b.sub_calls] == ["tape"] * (len(a.sub_calls) - 1) + ["model"]
    assert [s.response for s in b.sub_calls[:-1]] == [s.response for s in a.sub_calls[:-1]]


def test_a_tape_of_other_weights_or_sampling_is_refused_in_one_line(vllm_server, recorded, tiny_model_path, tmp_path):
    a_dir, _ = recorded
    other = tmp_path / "other-tiny"
    shutil.copytree(tiny_model_path, other)
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: other weights
    weights.write_bytes(bytes(data))
    doc = tmp_path / "doc.txt"
    doc.write_text("x\n" * 50)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra, words in ((["--set", f"worker.model={other}"], "weights"), (["--set", "worker.temperature=0.7"], "sampling")):
        r = subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", "ask", "-c", "cpu-tiny", "--doc", str(doc),
                            "-q", "how many?", "--tape", str(a_dir), "--out", str(tmp_path / words),
                            "--set", f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny", *extra],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "tape" in lines[0] and words in lines[0], r.stderr
