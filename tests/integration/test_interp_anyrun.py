"""interp on any run (ask or eval folders), never an empty success, and records a reviewer can check.

Fast: the refusals happen before a model is loaded; the pair tests use the tiny random model."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from rlm_rig.experiments.cli.interp import interp_app
from demo_run import make_demo_run
from rlm_rig.interp.outputs import staged_dir
from rlm_rig.interp.data.selection import NothingToStudyError, collect_sub_calls, iter_sub_calls
from rlm_rig.interp.stats.means import aggregate_ratio, small_denominator_pairs

runner = CliRunner()


def _ask_folder(tmp_path: Path, *, sub_calls: bool = True) -> Path:
    """An `rlm-rig ask --out DIR` folder: one trajectory.json at the top, no samples.jsonl."""
    run = make_demo_run(tmp_path / "demo", n_samples=1, chunks_per_sample=3, lines_per_chunk=5)
    ask = tmp_path / "ask"
    ask.mkdir()
    t = json.loads(next((run / "trajectories").glob("*.json")).read_text())
    if not sub_calls:
        t["sub_calls"] = []
    (ask / "trajectory.json").write_text(json.dumps(t))
    return ask


def test_ask_folder_is_a_run(tmp_path):
    ask = _ask_folder(tmp_path)
    items = list(iter_sub_calls(ask))
    assert [i.sample for i in items] == ["trajectory"] * 3 and all(i.chunk_text for i in items)


def test_nothing_to_study_names_reasons_with_counts(tmp_path):
    ask = _ask_folder(tmp_path, sub_calls=False)
    with pytest.raises(NothingToStudyError, match=r"no_sub_calls=1"):
        collect_sub_calls(ask)
    run = make_demo_run(tmp_path / "errs", n_samples=2, chunks_per_sample=2, lines_per_chunk=4)
    for p in (run / "trajectories").glob("*.json"):  # every worker call failed
        t = json.loads(p.read_text())
        for sc in t["sub_calls"]:
            sc.update(response=None, error="WorkerError: boom")
        p.write_text(json.dumps(t))
    with pytest.raises(NothingToStudyError) as e:
        collect_sub_calls(run)
    assert e.value.tally == {"sub_call_error": 4} and "sub_call_error=4" in str(e.value)


def test_refused_capture_leaves_no_output(tmp_path):
    ask = _ask_folder(tmp_path, sub_calls=False)
    out = tmp_path / "out"
    r = runner.invoke(interp_app, ["capture", str(ask), "--config", "cpu-tiny", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "no_sub_calls=1" in r.output
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "a refused capture left files behind"


def test_staged_dir_is_all_or_nothing(tmp_path):
    from rlm_rig.records.outdirs import claim

    out = tmp_path / "o"
    with staged_dir(out, "interp capture") as d:
        (d / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with staged_dir(claim(out, "interp capture", force=True), "interp capture") as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["o"]
    with staged_dir(claim(out, "interp capture", force=True), "interp capture") as d:
        (d / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == [".rlm-rig-output.json", "b.txt"]


def test_schema_2_reads_version_1_and_refuses_unknown(tmp_path):
    from rlm_rig.records.trajectory import SCHEMA_VERSION, SubCallRecord, Trajectory

    run = make_demo_run(tmp_path / "r", n_samples=1, chunks_per_sample=1)
    p = next((run / "trajectories").glob("*.json"))
    t = Trajectory.load(p)  # written as schema 1, without token fields
    assert SCHEMA_VERSION == 2 and t.schema_version == 1 and t.sub_calls[0].token_ids is None
    assert "token_logprobs" in SubCallRecord.model_fields
    bad = json.loads(p.read_text())
    bad["schema_version"] = 99
    p.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="schema_version 99"):
        Trajectory.load(p)


def _rows(pairs: dict[str, tuple[str, float, float, float]]) -> pd.DataFrame:
    """pair -> (chunk, LD_patched, LD_clean, LD_corrupt), one site."""
    return pd.DataFrame([dict(pair=k, chunk=c, component="resid", layer=0, position="edit", direction="denoise",
                              logit_diff=ld, logit_diff_clean=lc, logit_diff_corrupt=lx)
                         for k, (c, ld, lc, lx) in pairs.items()])


def test_ratio_of_sums_floor_and_chunks():
    df = _rows({"a": ("c1", 1.0, 2.0, 0.0), "b": ("c1", 3.0, 4.0, 0.0), "c": ("c2", 1.0, 1.0, 0.0),
                "tiny": ("c3", 5.0, 1.00002, 1.0)})  # the 2e-5 denominator that once gave normalized = 200000
    agg = aggregate_ratio(df, min_denominator=0.1, n_boot=500)
    r = agg.iloc[0]
    assert r["mean"] == pytest.approx((1 + 3 + 1) / (2 + 4 + 1))  # ratio of sums, not mean of 0.5, 0.75, 1.0
    assert r["n"] == 3 and r["n_excluded"] == 1 and r["n_chunks"] == 2 and r["den_sum"] == pytest.approx(7.0)
    assert r["mean_of_ratios"] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    # the bootstrap resamples the 2 chunks: its replicates are ratios of the chunk totals only
    assert r["ci_low"] == pytest.approx(4 / 6) and r["ci_high"] == pytest.approx(1.0)
    ex = small_denominator_pairs(df, 0.1)
    assert list(ex["pair"]) == ["tiny"] and ex["denominator"].iloc[0] == pytest.approx(2e-5, rel=1e-3)


@pytest.fixture(scope="module")
def tiny():
    from rlm_rig.interp.model import ReplayModel

    return ReplayModel("tiny", dtype="float32")


def test_pairs_spread_over_chunks_and_are_reproducible(tiny, tmp_path):
    from rlm_rig.interp.methods.capture import attach_gold
    from rlm_rig.interp.data.pairs import build_counting_pairs

    run = make_demo_run(tmp_path / "r", n_samples=2, chunks_per_sample=3, lines_per_chunk=6)
    items = [attach_gold(i) for i in iter_sub_calls(run)]
    pairs, _ = build_counting_pairs(tiny, items, n_pairs=4, corruptions=["remove", "add"], seed=0)
    assert len(pairs) == 4 and len({p.chunk for p in pairs}) == 4, [p.chunk for p in pairs]
    rec = pairs[0].record()
    item = next(i for i in items if (i.sample, i.sub_call) == (pairs[0].sample, pairs[0].sub_call))
    prompt = tiny.render(item.messages).ids
    assert rec["clean_ids"] == prompt + rec["answer_prefix_ids"]
    diff = [i for i, (a, b) in enumerate(zip(rec["clean_ids"], rec["corrupt_ids"])) if a != b]
    assert diff == rec["edit_tokens"] == rec["positions"]["edit"]
    assert rec["positions"]["last"] == [len(rec["clean_ids"]) - 1]
    assert rec["edit_chars"] is not None and rec["clean_token"] != rec["corrupt_token"]


def test_unequal_lengths_are_refused(tiny, tmp_path):

    from rlm_rig.interp.methods.capture import attach_gold
    from rlm_rig.interp.data.pairs import Pair, UnequalLengthError, build_counting_pairs
    from rlm_rig.interp.methods.patching import patch_pair, sweep_specs

    with pytest.raises(UnequalLengthError, match="equal lengths"):
        Pair("p", "r", "s", 0, "x", "", [1, 2, 3], [1, 2], "1", "2", 5, 6, 2, {})
    run = make_demo_run(tmp_path / "r", n_samples=1, chunks_per_sample=2, lines_per_chunk=6)
    (pair,), _ = build_counting_pairs(tiny, [attach_gold(i) for i in iter_sub_calls(run)], n_pairs=1,
                                      corruptions=["remove"])
    pair.corrupt_ids = pair.corrupt_ids[:-1]  # mutated after construction: patching still refuses it
    with pytest.raises(UnequalLengthError):
        patch_pair(tiny, pair, sweep_specs(pair, [0], ["resid"], ["last"], []))


def test_patch_refuses_a_run_without_countable_instructions(tmp_path):
    run = make_demo_run(tmp_path / "r", n_samples=1, chunks_per_sample=2, lines_per_chunk=5)
    for p in (run / "trajectories").glob("*.json"):
        t = json.loads(p.read_text())
        for sc in t["sub_calls"]:
            sc["instruction"] = "Summarize the text."
            sc["messages"][-1]["content"] = sc["messages"][-1]["content"].rsplit("Instruction: ", 1)[0] + \
                "Instruction: Summarize the text."
        p.write_text(json.dumps(t))
    out = tmp_path / "patch"
    r = runner.invoke(interp_app, ["patch", str(run), "--config", "cpu-tiny", "--out", str(out)])
    assert r.exit_code == 2 and "not_a_roll_count=2" in r.output, r.output
    assert not out.exists()


def test_faithful_only_filters_and_an_all_unfaithful_run_is_refused(tmp_path):
    """The demo run's answers were not written by the tiny random model, so teacher-forcing them shows
    argmax flips at once: flagged by default, dropped (and the run refused, with the count) under
    faithful_only."""
    run = make_demo_run(tmp_path / "r", n_samples=1, chunks_per_sample=2, lines_per_chunk=4)
    out = tmp_path / "cap"
    r = runner.invoke(interp_app, ["capture", str(run), "--config", "cpu-tiny", "--out", str(out), "--no-replay"])
    assert r.exit_code == 0, r.output
    f = pd.read_parquet(out / "faithfulness.parquet")
    assert len(f) == 2 and (f["source"] == "retokenized").all() and not f["faithful"].any()
    assert (f["first_argmax_divergence"] == 0).all() and f["max_abs_dlogprob"].isna().all()
    cfg = tmp_path / "p.yaml"
    cfg.write_text("worker:\n  model: tiny\n  dtype: float32\ninterp:\n  faithful_only: true\n")
    out2 = tmp_path / "cap2"
    r = runner.invoke(interp_app, ["capture", str(run), "--config", str(cfg), "--out", str(out2)])
    assert r.exit_code == 2 and "unfaithful=2" in r.output, r.output
    assert not out2.exists()
