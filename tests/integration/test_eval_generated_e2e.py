"""Issue 12 end to end on the real tiny vLLM worker: a generated set runs through `eval` with the
direct baseline (its instructions reach the answerer), and an RLM eval of OOLONG-real tells the
controller the task instructions while `prompt` stays the unchanged context."""
from __future__ import annotations

import json

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.records.trajectory import read_jsonl
from rlm_rig.records.runlog import EvalSpec
from rlm_rig.experiments.runs.evaluate import run_eval

pytestmark = pytest.mark.vllm


def _cfg(url: str):
    return load_config("cpu-tiny", [f"worker.server.url={url}", "worker.served_name=tiny"])


def test_generated_set_through_eval_direct(vllm_server, tmp_path):
    rd = tmp_path / "ns"
    spec = EvalSpec(dataset="needle-sweep", method="direct", limit=2, loader_options={"lengths": [1500], "positions": [0.1, 0.9]})
    res = run_eval(_cfg(vllm_server), spec, rd, show_progress=False)
    rows = read_jsonl(rd / "samples.jsonl")
    assert res["status"] == "complete" and len(rows) == 2 and {r["dataset"] for r in rows} == {"needle-sweep"}
    for r in rows:
        t = json.loads((rd / r["trajectory"]).read_text())
        sent = t["sub_calls"][0]["messages"][0]["content"]
        assert sent.endswith("Answer with the number only.\n" + r["question"])
    views = json.loads((rd / "eval.json").read_text())["model_views"]
    assert views["dataset"] == "needle-sweep" and views["instructions_example"] == "Answer with the number only."


def test_rlm_controller_gets_the_oolong_instructions(vllm_server, tmp_path):
    rd = tmp_path / "rlm"
    run_eval(_cfg(vllm_server), EvalSpec(dataset="oolong-real", source="toy", limit=1), rd, show_progress=False)
    row = read_jsonl(rd / "samples.jsonl")[0]
    t = json.loads((rd / row["trajectory"]).read_text())
    first = t["turns"][0]["messages_in"][1]["content"]
    assert "Return the final answer in \\boxed{{}}" in first and "Use this mapping" in first
    assert t["task_instructions"] and first.index("Task instructions") < first.index("Question: ")
    assert row["context_chars"] == t["doc_chars"]  # prompt = the whole, unchanged context_window_text
