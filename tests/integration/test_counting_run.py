"""The counting set as an interp run folder (fast: the tiny random model answers in-process)."""
from __future__ import annotations

import json

import pytest

from rlm_rig.experiments.studies.counting import count_messages, make_counting_set
from rlm_rig.experiments.studies.counting_run import WorkerAnswer, answer_items, write_counting_run
from rlm_rig.interp.methods.capture import attach_gold
from rlm_rig.interp.data.selection import iter_sub_calls, load_gold_file


@pytest.fixture(scope="module")
def items():
    return make_counting_set(seed=0, ks=[0, 3], lengths=(10,), per_cell=2)


def test_run_folder_round_trips_through_interp(tmp_path, items, tiny_model_path):
    from rlm_rig.worker.sync import SyncWorker
    from rlm_rig.worker.hf import TransformersWorker

    with SyncWorker(TransformersWorker(tiny_model_path, max_tokens=6)) as sync:
        answers = answer_items(sync, items, max_tokens=6)
    answers[1] = WorkerAnswer(None, error="WorkerError: boom")  # a failed call is kept, not dropped
    run = write_counting_run(tmp_path / "run", items, answers, worker_model="tiny",
                             worker_config={"model": "tiny", "max_tokens": 6})
    gold = load_gold_file(run / "gold.jsonl")
    assert gold == {(it.id, 0): it.k for it in items}
    subs = {s.sample: s for s in iter_sub_calls(run)}
    assert set(subs) == {it.id for i, it in enumerate(items) if i != 1}  # no response: not replayable
    for it in items:
        if it.id not in subs:
            continue
        s = attach_gold(subs[it.id], gold)
        assert s.messages == count_messages(it.passage) and s.chunk_text == it.passage
        assert (s.gold, s.gold_source) == (it.k, "gold_file") and s.max_tokens == 6
        # the generated token ids travel into the run (schema 2), so interp teacher-forces them
        ans = answers[items.index(it)]
        assert ans.token_ids and s.token_ids == ans.token_ids
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == [str(it.k) for it in items] and rows[1]["error"] == "WorkerError: boom"
    assert all(r["score"] in (0.0, 1.0) and r["trajectory"].startswith("trajectories/") for r in rows)


def test_lengths_must_match(tmp_path, items):
    with pytest.raises(ValueError, match="answers"):
        write_counting_run(tmp_path, items, [WorkerAnswer("1")], worker_model="x", worker_config={})


@pytest.mark.vllm
def test_the_study_worker_comes_from_the_profile_through_the_rig(tmp_path, items, vllm_server):
    """profile_worker (the SmolLM2 study and its bench) builds the worker from a profile with the Rig, as
    `eval` does: here cpu-tiny, attached to the session's server, with the study's max_tokens override."""
    from rlm_rig.experiments.studies.counting_run import profile_worker

    with profile_worker("cpu-tiny", tmp_path, url=vllm_server, served_name="tiny",
                        overrides=["worker.max_tokens=4"]) as rig:
        assert rig.worker_server is None and rig.cfg.worker.max_tokens == 4 and rig.cfg.name == "cpu-tiny"
        answers = answer_items(rig.worker, items[:2], max_tokens=4)
    assert [a.error for a in answers] == [None, None] and all(a.token_ids for a in answers)
