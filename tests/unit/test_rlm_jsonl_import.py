"""`rlm-rig import --format rlm-jsonl`: the reader of the official RLM log, mirror of our exporter.

A rig trajectory exported in the official shape and read back keeps its turns, cells, worker calls (with the
messages interp replays), nested runs and final answer; a file that is not an official log is one line, exit 2,
and leaves no folder behind; a file holding several completions gives several runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlm_rig.experiments.cli import app
from rlm_rig.experiments.runs.imported import read_runs
from rlm_rig.experiments.view.rlm_jsonl import write_rlm_jsonl
from rlm_rig.records.trajectory import SubCallRecord
from demo_run import rlm_trajectory

SYSTEM = {"role": "system", "content": "You write code."}


def _same_calls(a: list[SubCallRecord], b: list[SubCallRecord]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.id, x.cell, x.messages, x.response or "", x.error, x.error_kind) == \
            (y.id, y.cell, y.messages, y.response or "", y.error, y.error_kind)
        assert (x.prompt_tokens, x.completion_tokens, x.latency_s) == (y.prompt_tokens, y.completion_tokens, y.latency_s)
        assert (x.nested_trajectory is None) == (y.nested_trajectory is None)


def test_export_then_import_keeps_the_trajectory(tmp_path):
    t = rlm_trajectory("s1", nested=rlm_trajectory("s1.1", depth=1))
    f = write_rlm_jsonl(t, tmp_path / "s1_2026-01-02_03-04-05_0123abcd.jsonl")
    ((sid, back),) = read_runs([f], question="Q?")
    assert sid == "s1" and back.final_answer == "3" and back.stop_reason == "final" and back.doc_chars == 100
    assert [x.response for x in back.turns] == [x.response for x in t.turns]
    assert [x.messages_in for x in back.turns] == [x.messages_in for x in t.turns]
    assert [x.latency_s for x in back.turns] == [x.latency_s for x in t.turns]
    assert [(c.index, c.turn, c.code, c.stdout, c.duration_s, c.sub_calls, c.final_answer) for c in back.cells] == \
        [(c.index, c.turn, c.code, c.stdout, c.duration_s, c.sub_calls, c.final_answer) for c in t.cells]
    # the official record has one stderr: the cell's error and notices travel in it
    assert back.cells[1].stderr == "warn\nValueError: no\ncell output cut"
    _same_calls(back.sub_calls, t.sub_calls)
    child, orig = back.sub_calls[1].nested_trajectory, t.sub_calls[1].nested_trajectory
    assert child.depth == 1 and child.final_answer == orig.final_answer
    assert [x.response for x in child.turns] == [x.response for x in orig.turns]
    _same_calls(child.sub_calls, orig.sub_calls)
    assert back.models == {"controller": "ctrl", "worker": "wk"}
    assert back.config["rlm"] == {"max_depth": 2, "max_iterations": 5}


def _official(tmp: Path, name: str, lines: list[dict]) -> Path:
    p = tmp / name
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def _iteration(n: int, *, final: str | None = None, calls: int = 0) -> dict:
    block = {"code": "x = 1", "result": {"stdout": "", "stderr": "", "locals": {}, "execution_time": 0.1,
                                         "rlm_calls": [{"root_model": "wk", "prompt": f"p{k}", "response": "r",
                                                        "usage_summary": {"model_usage_summaries": {"wk": {
                                                            "total_calls": 1, "total_input_tokens": 5,
                                                            "total_output_tokens": 1}}},
                                                        "execution_time": 0.1} for k in range(calls)],
                                         "final_answer": final}}
    return {"type": "iteration", "iteration": n, "timestamp": "t", "prompt": [SYSTEM, {"role": "user", "content": f"turn {n}"}],
            "response": f"```repl\nx = 1\n```", "code_blocks": [block], "final_answer": final, "iteration_time": 0.2}


META = {"type": "metadata", "timestamp": "2026-01-02T03:04:05", "root_model": "root", "max_depth": 1,
        "max_iterations": 30, "backend": "openai", "backend_kwargs": {"model_name": "root"},
        "environment_type": "local", "environment_kwargs": {}, "other_backends": ["openai"]}


def test_one_file_with_two_completions_gives_two_runs(tmp_path):
    """The official logger writes metadata once and restarts the iteration count for each completion."""
    f = _official(tmp_path, "rlm_2026-01-02_03-04-05_89abcdef.jsonl",
                  [META, _iteration(1, calls=2), _iteration(2, final="A"), _iteration(1, final="B")])
    runs = read_runs([f])
    assert [(sid, t.final_answer, len(t.turns)) for sid, t in runs] == [("rlm-1", "A", 2), ("rlm-2", "B", 1)]
    t = runs[0][1]
    assert [s.messages for s in t.sub_calls] == [[{"role": "user", "content": "p0"}], [{"role": "user", "content": "p1"}]]
    assert t.models["worker"] == "wk" and t.worker_tokens() == (10, 2)
    # the second turn's prompt repeats the first: only what it adds is the turn's new messages
    assert runs[0][1].turns[1].messages_in == [{"role": "user", "content": "turn 2"}]


def test_a_log_cut_short_imports_as_an_error_run(tmp_path):
    f = _official(tmp_path, "cut.jsonl", [META, _iteration(1)])
    ((_, t),) = read_runs([f])
    assert t.final_answer is None and t.stop_reason == "error" and "without a final answer" in t.error


@pytest.mark.parametrize("content,says", [
    ("", "no iteration lines"),
    ("not json\n", "line 1 is not JSON"),
    ("[1, 2]\n", "JSON list, not an object"),
    (json.dumps({"type": "step"}) + "\n", "neither 'metadata' nor 'iteration'"),
    (json.dumps(META) + "\n", "no iteration lines"),
    (json.dumps({"type": "iteration", "iteration": 1, "code_blocks": []}) + "\n", "a string 'response'"),
    (json.dumps({"type": "iteration", "response": "r", "code_blocks": [{"code": 3}]}) + "\n", "a string 'code'"),
])
def test_not_an_official_log_is_one_line_and_exit_2(tmp_path, content, says):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    r = CliRunner().invoke(app, ["import", "--format", "rlm-jsonl", str(f), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert says in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_unknown_format_and_missing_file_exit_2(tmp_path):
    f = _official(tmp_path, "ok.jsonl", [META, _iteration(1, final="A")])
    r = CliRunner().invoke(app, ["import", "--format", "dspy", str(f), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "--format 'dspy' is not known" in r.output
    r = CliRunner().invoke(app, ["import", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "neither a file nor a folder" in r.output
    assert not (tmp_path / "run").exists()

