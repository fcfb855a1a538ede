"""The recursive boundary's math, on hand-computed cases: reply confidence, the resplit halves and their
combination, ECE and the reliability table, the loss ledger's stages and sums, error concentration."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from rlm_rig.controller.confidence import answer_confidence, combine, halves, reply_confidence, tell_line
from rlm_rig.experiments.analysis.calibration import calibration_frame, concentration, ece
from rlm_rig.experiments.analysis.ledger import NoGoldPositions, build_ledger, total_loss
from rlm_rig.records.trajectory import SampleRow, SubCallRecord, Trajectory


def test_reply_confidence_is_the_reply_probability():
    assert reply_confidence([math.log(0.5), math.log(0.5)]) == pytest.approx(0.25)
    assert reply_confidence([0.0]) == 1.0
    assert reply_confidence([-math.inf]) == 0.0
    assert reply_confidence(None) is None and reply_confidence([]) is None
    assert reply_confidence([float("nan")]) is None and reply_confidence([math.inf, -math.inf]) is None


def test_answer_confidence_covers_the_first_integers_tokens():
    pieces = ["The", " count", " is", " 1", "2", ".", ""]  # "" : an end-of-reply token decodes to nothing
    lps = [math.log(p) for p in (0.9, 0.5, 0.5, 0.8, 0.5, 0.1, 0.9)]
    decode = pieces.__getitem__
    assert answer_confidence(range(7), lps, decode) == pytest.approx(0.8 * 0.5)
    assert answer_confidence([0, 5], [lps[0], lps[5]], decode) == pytest.approx(0.9 * 0.1)  # no integer: whole reply
    assert answer_confidence(range(7), lps, None) == pytest.approx(reply_confidence(lps))  # no tokenizer: whole reply
    assert answer_confidence(range(6), lps, decode) == pytest.approx(reply_confidence(lps))  # lengths differ: whole


def test_halves_cut_at_the_line_break_nearest_the_middle_and_rejoin():
    chunk = "aaaa\nbb\ncccc\nd"
    a, b = halves(chunk)
    assert a + b == chunk and a == "aaaa\nbb\n" and b == "cccc\nd"
    assert halves("ab cd") == ("ab ", "cd") and halves("abcd") == ("ab", "cd") and halves("a") is None


def test_combine_sums_counts_and_joins_the_rest():
    assert combine("How many rolls? Reply with a single integer.", ["3", "There are 4."]) == "7"
    assert combine("How many rolls?", ["3", "none"]) is None
    assert combine("How many rolls?", ["3", None]) is None
    assert combine("What is the magic number?", ["NONE", " 1234567 "]) == "NONE\n1234567"


def test_tell_line_marks_low_replies():
    recs = [SimpleNamespace(id=0, confidence=0.9), SimpleNamespace(id=1, confidence=0.2),
            SimpleNamespace(id=2, confidence=None)]
    line = tell_line(recs, 0.5)
    assert "#0 0.90," in line and "#1 0.20 LOW" in line and "#2 n/a" in line


def test_ece_by_hand():
    # bins of 0.1: 0.9 (two replies, one right: |0.5-0.9|), 0.1 (|0-0.1|), 0.6 (|1-0.6|)
    value, table = ece([0.9, 0.9, 0.1, 0.6], [True, False, False, True])
    assert value == pytest.approx(2 / 4 * 0.4 + 1 / 4 * 0.1 + 1 / 4 * 0.4)
    assert table["n"].tolist() == [0, 1, 0, 0, 0, 0, 1, 0, 0, 2]
    assert table.loc[9, "accuracy"] == 0.5 and table.loc[9, "mean_confidence"] == pytest.approx(0.9)
    assert ece([1.0], [True])[0] == 0.0  # 1.0 lands in the last bin
    with pytest.raises(ValueError):
        ece([], [])


def _sc(i, start, end, reply, lps=None, **kw):
    return SubCallRecord(id=i, cell=0, depth=1, chunk_start=start, chunk_end=end, chunk_chars=end - start,
                         instruction="q", response=reply, token_logprobs=lps, **kw)


def _traj(subs, final, n=1000):
    return Trajectory(run_id="r", question="q", doc_chars=n, doc_sha256="x", config={}, config_hash="h", models={},
                      versions={}, started_at="t", sub_calls=subs, final_answer=final)


def _row(i, gold, answer, score, spans, parsed=None, **extra):
    return SampleRow(id=i, dataset="needle-sweep", method="rlm", question="q", context_chars=1000, gold=gold,
                     answer=answer, score=score, parsed=parsed, trajectory=f"trajectories/{i}.json",
                     extra={"gold_spans": spans, **extra} if spans else extra)


def _run(pairs):
    return SimpleNamespace(name="run", path="run", rows=[r for r, _ in pairs],
                           trajectories={r.id: t for r, t in pairs})


def _value_run():
    g = "1234567"
    return _run([
        (_row("solved", g, g, 1.0, [[100, 107]]), _traj([_sc(0, 0, 500, g)], g)),
        (_row("unsent", g, "0", 0.0, [[900, 907]]), _traj([_sc(0, 0, 500, "NONE")], "0")),
        (_row("misread", g, "7", 0.0, [[100, 107]]), _traj([_sc(0, 0, 500, "7"), _sc(1, 500, 1000, "NONE")], "7")),
        (_row("lostagg", g, "0", 0.0, [[600, 607]]), _traj([_sc(0, 0, 500, "0"), _sc(1, 500, 1000, g)], "0")),
        (_row("format", g, f"{g} or 2", 0.0, [[600, 607]]), _traj([_sc(0, 500, 1000, g)], f"{g} or 2")),
        (_row("nogold", g, "0", 0.0, None), _traj([_sc(0, 0, 1000, "0")], "0")),
    ])


def test_value_ledger_stages_and_total():
    run = _value_run()
    ledger = build_ledger(run)
    stages = dict(zip(ledger["sample"], ledger["stage"]))
    assert stages == {"unsent": "never_sent", "misread": "read_wrong_no_probe", "lostagg": "mis_aggregated",
                      "format": "format"}
    assert ledger["loss"].sum() == total_loss(run)["value_loss"] == 4.0
    assert ledger.set_index("sample").loc["unsent", "position"] == pytest.approx(0.9)
    # with probe results for the misread chunk: right value decoded -> represented, not said; else misread
    assert build_ledger(run, {("misread", 0): 1234567}).set_index("sample").loc["misread", "stage"] == "represented_not_said"
    assert build_ledger(run, {("misread", 0): 7}).set_index("sample").loc["misread", "stage"] == "misread"


def test_count_ledger_signed_contributions_add_up():
    # gold 5 items: two at 50/60 (chunk 0), two at 300/310 (chunk 1), one at 900 (never sent).
    # chunk 0 says 3 (+1), chunk 1 says 1 (-1), sum 4; final written "6" (+2 mis-aggregated), scored 6.
    spans = [[50, 52], [60, 62], [300, 302], [310, 312], [900, 902]]
    row = _row("c", "5", "the total is 6", 0.0, spans, parsed=6, k=5)
    traj = _traj([_sc(0, 0, 200, "3"), _sc(1, 200, 500, "1")], "the total is 6")
    ledger = build_ledger(_run([(row, traj)]))
    got = sorted(zip(ledger["stage"], ledger["delta"]))
    assert got == [("mis_aggregated", 2.0), ("never_sent", -1.0), ("read_wrong_no_probe", -1.0),
                   ("read_wrong_no_probe", 1.0)]
    assert ledger["delta"].sum() == 6 - 5 == total_loss(_run([(row, traj)]))["count_signed_error"]
    # the scorer read 4 where the text ends on 6: a format contribution of -2 keeps the sum exact
    row2 = _row("c", "5", "the total is 6", 0.0, spans, parsed=4, k=5)
    l2 = build_ledger(_run([(row2, traj)]))
    assert l2.set_index("stage").loc["format", "delta"] == -2.0 and l2["delta"].sum() == 4 - 5


def test_count_example_with_nothing_to_count_still_counts():
    row = _row("zero", "0", "12", 0.0, None, parsed=12, k=0, gold_spans=[])
    ledger = build_ledger(_run([(row, _traj([_sc(0, 0, 1000, "12")], "12"))]))
    assert ledger[["stage", "delta"]].values.tolist() == [["read_wrong_no_probe", 12.0]]


def test_no_gold_positions_is_refused():
    run = _run([(_row("nogold", "1", "0", 0.0, None), _traj([], "0"))])
    with pytest.raises(NoGoldPositions):
        build_ledger(run)


def test_calibration_frame_and_concentration():
    g = "1234567"
    lp = [math.log(0.8)]
    run = _run([
        (_row("a", g, g, 1.0, [[100, 107]]), _traj([_sc(0, 0, 500, g, lp), _sc(1, 500, 1000, "NONE", lp)], g)),
        (_row("b", g, "0", 0.0, [[100, 107]]), _traj([_sc(0, 0, 500, "0", [math.log(0.1)])], "0")),
    ])
    frame = calibration_frame(run)
    # only chunks holding the gold are scored for a value question: a's chunk 0 (right), b's chunk 0 (wrong)
    assert frame[["sample", "sub_call", "correct"]].values.tolist() == [["a", 0, True], ["b", 0, False]]
    assert frame["confidence"].tolist() == pytest.approx([0.8, 0.1])
    conc = concentration(frame, 0.5).set_index("group")
    assert conc.loc["some chunk < 0.5", "error_rate"] == 1.0 and conc.loc["all chunks >= 0.5", "error_rate"] == 0.0
    assert conc.loc["some chunk < 0.5", "share_of_errors"] == 1.0


def test_low_confidence_setting_reads_a_bare_off():
    from rlm_rig.configs.load import load_config

    assert load_config("cpu-tiny", ["rlm.low_confidence=off"]).rlm.low_confidence == "off"  # YAML: off -> False
    assert load_config("cpu-tiny", ["rlm.low_confidence=resplit"]).rlm.low_confidence == "resplit"
    assert load_config("cpu-tiny").rlm.low_confidence == "off" and load_config("cpu-tiny").rlm.low_confidence_threshold == 0.5


def test_by_position_keeps_every_bin_in_order():
    from rlm_rig.experiments.analysis.ledger import by_position

    table = by_position(build_ledger(_value_run()), bins=10)
    assert list(table.index) == [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)]
    assert table.loc["0.9-1.0", "never_sent"] == 1.0 and table.loc["0.6-0.7", "mis_aggregated"] == 1.0
    assert table.to_numpy().sum() == 4.0
