"""Issue 12 §1 and §4 without a server: the controller is told the task instructions (answer format),
a run failing only on format shows so in the report, and the run caps (wall clock, consecutive cell
errors) end a run with its best answer so far. Real sandbox, replay controller, no worker."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.backends import ReplayLM
from rlm_rig.controller.loop import RLM, RunContext
from rlm_rig.experiments.datasets.views import split_instructions
from rlm_rig.experiments.datasets.registry import load_examples


def _ctx(responses: list[str], *more: str) -> RunContext:
    cfg = load_config("cpu-tiny", list(more))
    return RunContext(cfg=cfg, lm=ReplayLM(responses), worker=None, count_tokens=lambda s: max(1, len(s) // 4),
                      models={"controller": "replay"}, versions={}, sub_calls_enabled=False)


@pytest.fixture(scope="module")
def toy():
    return list(load_examples("oolong-real", "toy"))


def test_oolong_real_split_is_the_header_before_the_first_episode(toy):
    ex = toy[0]
    ins = split_instructions("oolong-real", ex.context)
    assert ins and ex.context.startswith(ins) and ex.context[len(ins):].startswith("[START OF EPISODE]")
    assert "Return the final answer in \\boxed{{}}" in ins and "plays the character Grog" in ins
    synth = next(iter(load_examples("oolong-synth", "mini")))
    sins = split_instructions("oolong-synth", synth.context)
    assert sins and synth.context[len(sins):].startswith("Date: ") and "do not estimate" in sins
    assert split_instructions("sniah", "any text") is None


def test_unboxed_replay_controller_is_told_the_format_before_it_answers(toy):
    ex = toy[0]
    ins = split_instructions("oolong-real", ex.context)
    traj = RLM(_ctx([f"FINAL({ex.gold})"])).run(ex.context, ex.question, instructions=ins)
    assert traj.stop_reason == "final" and traj.final_answer == ex.gold
    seen_before_answer = "\n".join(m["content"] for m in traj.turns[0].messages_in)
    assert "Return the final answer in \\boxed{{}}" in seen_before_answer and ex.question in seen_before_answer
    assert traj.task_instructions == ins


def test_a_run_failing_only_on_format_shows_format_failures(toy, tmp_path):
    """Unboxed right answers: official score 0, lenient 1, primary failure parse_failure, and the
    report's comparison counts every failure as format-only."""
    from rlm_rig.experiments.analysis.report import write_report
    from rlm_rig.records.runlog import EvalSpec, RunFolder
    from rlm_rig.experiments.runs.evaluate import sample_row

    rd = tmp_path / "fmt"
    folder = RunFolder(rd)
    folder.create(load_config("cpu-tiny"), EvalSpec(dataset="oolong-real", source="toy"))
    ints = [ex for ex in toy if ex.gold.isdigit()][:3]
    for ex in ints:
        traj = RLM(_ctx([f"FINAL({ex.gold})"])).run(ex.context, ex.question, instructions=ex.instructions)
        tpath = folder.trajectory_path(ex.id)
        traj.save(tpath)
        folder.append(sample_row(ex, "rlm", traj, str(tpath.relative_to(rd)), 100))
    out = write_report([rd], tmp_path / "rep")
    comp = pd.read_csv(out["tables"]["comparison"]).set_index("metric")
    col = comp.columns[0]
    assert comp.loc["examples with score < 1", col] == 3
    assert comp.loc["of which failed on the answer format alone (lenient score 1)", col] == 3
    fails = pd.read_csv(out["tables"]["failures"])
    assert fails.set_index("failure").loc["parse_failure", "n_primary"] == 3


def test_wall_clock_cap_ends_with_one_forced_answer_turn(toy):
    ex = toy[0]
    responses = ["```repl\nimport time\ntime.sleep(1.5)\nx = 7\n```", "FINAL(\\boxed{7})"]
    traj = RLM(_ctx(responses, "rlm.max_example_wall_s=1")).run(ex.context, ex.question)
    assert traj.stop_reason == "cap" and [c.cap for c in traj.caps_hit] == ["wall_clock"]
    assert len(traj.cells) == 1 and traj.turns[-1].forced_final
    assert traj.final_answer == "\\boxed{7}"  # the forced answer turn
    assert "used up" in traj.turns[-1].messages_in[-1]["content"]


def test_consecutive_cell_errors_cap_uses_the_last_final_var_candidate(toy):
    ex = toy[0]
    responses = [
        "FINAL_VAR(answer)",                                   # too early: no such variable yet -> candidate
        "```repl\nanswer = '\\\\boxed{42}'\n1/0\n```",          # sets it, then fails
        "```repl\nundefined_name\n```",                        # second failure in a row -> cap
        "FINAL(never asked)",
    ]
    traj = RLM(_ctx(responses, "rlm.max_consecutive_cell_errors=2")).run(ex.context, ex.question)
    assert traj.stop_reason == "cap" and [c.cap for c in traj.caps_hit] == ["cell_errors"]
    assert traj.final_answer == "\\boxed{42}"
    assert not any(t.forced_final for t in traj.turns)  # the candidate answered; no forced turn needed


def test_cell_error_cap_without_candidate_forces_one_turn_that_sees_the_last_output(toy):
    ex = toy[0]
    responses = ["```repl\n1/0\n```", "```repl\nraise ValueError('second')\n```", "FINAL(\\boxed{3})"]
    traj = RLM(_ctx(responses, "rlm.max_consecutive_cell_errors=2")).run(ex.context, ex.question)
    assert traj.stop_reason == "cap" and traj.turns[-1].forced_final and traj.final_answer == "\\boxed{3}"
    last = traj.turns[-1].messages_in[-1]["content"]
    assert "second" in last and "2 code cells in a row failed" in last


def test_cell_error_cap_resets_on_a_good_cell(toy):
    ex = toy[0]
    responses = ["```repl\n1/0\n```", "```repl\nprint(1)\n```", "```repl\n1/0\n```", "FINAL(\\boxed{1})"]
    traj = RLM(_ctx(responses, "rlm.max_consecutive_cell_errors=2")).run(ex.context, ex.question)
    assert traj.stop_reason == "final" and not traj.caps_hit


def test_model_views_are_kept_in_the_spec(toy, tmp_path):
    from rlm_rig.experiments.datasets.views import model_views
    from rlm_rig.records.runlog import EvalSpec, RunFolder

    spec = EvalSpec(dataset="oolong-real", source="toy")
    spec.model_views = model_views("oolong-real", "direct", toy[0].instructions or split_instructions("oolong-real", toy[0].context))
    RunFolder(tmp_path).create(load_config("cpu-tiny"), spec)
    back = json.loads((Path(tmp_path) / "eval.json").read_text())["model_views"]
    assert "official input" in back["models"]["answerer"] and "\\boxed" in back["instructions_example"]
    assert RunFolder(tmp_path).read_spec().model_views == back
