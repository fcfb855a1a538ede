"""Issue 12 §2: edge-case generators with exact gold, registered for `eval --dataset NAME`, and the
command-line knobs (lengths, positions, seeds; S-NIAH grid; OOLONG-synth context_len / subset)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_rig.experiments.cli.evaluate import loader_options
from rlm_rig.experiments.datasets.edge import generators as g
from rlm_rig.experiments.datasets.edge.scoring import score_absent, score_all_values, score_last_number
from rlm_rig.records.runlog import EvalSpec
from rlm_rig.experiments.runs.examples import iter_examples
from rlm_rig.experiments.datasets.scoring import score_output

REPO = Path(__file__).resolve().parents[2]
NAMES = ["needle-sweep", "json-haystack", "multi-needle", "decoys", "absent", "multi-hop"]


@pytest.mark.parametrize("name", NAMES)
def test_every_generator_runs_through_eval_examples_and_scores_its_gold(name):
    spec = EvalSpec(dataset=name, loader_options={"lengths": [3000, 6000], "seed": 3})
    exs = list(iter_examples(spec))
    assert exs and len({e.id for e in exs}) == len(exs)
    assert exs == list(iter_examples(spec))  # deterministic
    for e in exs:
        assert e.dataset == name and e.instructions
        assert len(e.context) <= max(spec.loader_options["lengths"]) + 10
        assert score_output(name, e.gold, e.gold).score == 1.0  # the gold itself scores full marks
        assert score_output(name, None, e.gold).score == 0.0
        if name != "absent":
            for v in e.gold.split(", "):
                assert v in e.context  # the answer is really there


def test_needle_sweep_positions_are_where_asked():
    exs = list(g.needle_sweep(lengths=[20_000]))
    assert [e.meta["position"] for e in exs] == list(g.SWEEP_POSITIONS)
    for e in exs:
        assert e.context[e.meta["needle_start"]:].startswith("The special magic number")
        assert abs(e.meta["needle_start"] / len(e.context) - e.meta["position"]) < 0.02
        assert len(re.findall(r"\d{7}", e.context)) == 1  # the filler has no numbers


def test_multi_needle_asks_each_then_all():
    exs = list(g.multi_needle(lengths=[10_000], positions=[0.1, 0.5, 0.9]))
    assert [e.question_type for e in exs] == ["multi_needle_one"] * 3 + ["multi_needle_all"]
    assert len({e.context for e in exs}) == 1
    assert exs[-1].gold == ", ".join(e.gold for e in exs[:3])
    assert score_all_values(f"{exs[0].gold} and {exs[1].gold}", exs[-1].gold).score == pytest.approx(2 / 3)


def test_decoys_are_labelled_and_score_zero():
    e = next(g.decoys(lengths=[8_000]))
    assert len(e.meta["decoys"]) == 3
    for w in e.meta["decoys"]:
        assert f"is {w}, but that number is wrong" in e.context
        assert score_output("decoys", w, e.gold).score == 0.0
        assert score_output("decoys", f"Not {w}; it is {e.gold}.", e.gold).score == 1.0


def test_absent_rule():
    e = next(g.absent(lengths=[6_000]))
    assert e.gold == "NONE" and len(re.findall(r"\d{7}", e.context)) == 2
    key = re.search(r"number for (\S+) mentioned", e.question).group(1)
    assert key not in e.context
    assert score_absent("NONE", e.gold).score == 1.0
    assert score_absent("The text does not state it (not mentioned).", e.gold).score == 1.0
    assert score_absent("1234567", e.gold).score == 0.0
    assert score_absent("None found, maybe 1234567", e.gold).score == 0.0  # a hedge with a guess is a guess


def test_multi_hop_needs_both_facts_far_apart():
    e = next(g.multi_hop(lengths=[20_000], positions=[0.2]))
    a, b = e.meta["fact_starts"]
    assert b - a > 0.5 * len(e.context)
    locker = re.search(r"kept in the locker named (\w+)\.", e.context).group(1)
    assert f"The locker named {locker} holds the number {e.gold}." in e.context
    assert len(re.findall(r"holds the number \d{7}", e.context)) == 3  # two distractor lockers
    assert score_last_number(f"locker {locker}: {e.gold}", e.gold).score == 1.0


def test_json_haystack_gold_is_the_field_value():
    import json

    e = next(g.json_haystack(lengths=[5_000]))
    recs = json.loads(e.context)
    rid, field = re.search(r'id "([^"]+)"', e.question).group(1), re.search(r'"(\w+)" for', e.question).group(1)
    assert str(next(r for r in recs if r["id"] == rid)[field]) == e.gold


def test_loader_options_from_the_command_line():
    assert loader_options("sniah", length=["2000,4000"], position=["0.1", "0.9"], per_cell=2) == {
        "lengths": [2000, 4000], "depths": [0.1, 0.9], "per_cell": 2}
    assert loader_options("decoys", length=["3000"], position=["0.3"], gen_seed=5) == {
        "lengths": [3000], "positions": [0.3], "seed": 5}
    assert loader_options("oolong-synth", context_len=1024, subset="trec_coarse") == {
        "context_len": 1024, "subset": "trec_coarse"}
    with pytest.raises(ValueError, match="--context-len"):
        loader_options("absent", context_len=5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loader_options("sniah", position=["1.5"])
    # the S-NIAH grid from options: 2 lengths x 2 depths
    exs = list(iter_examples(EvalSpec(dataset="sniah", loader_options=loader_options(
        "sniah", length=["2000,4000"], position=["0.1,0.9"]))))
    assert sorted({(e.meta["target_length"], e.meta["depth"]) for e in exs}) == [(2000, 0.1), (2000, 0.9), (4000, 0.1), (4000, 0.9)]
    synth = list(iter_examples(EvalSpec(dataset="oolong-synth", source="mini", loader_options={"context_len": 1024})))
    assert synth and {e.meta["context_len"] for e in synth} == {1024}


def test_bad_generator_option_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", "eval", "--dataset", "absent", "--context-len", "9",
                        "--out", str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--context-len do(es) not apply to --dataset absent" in r.stderr
    assert "Traceback" not in r.stderr
