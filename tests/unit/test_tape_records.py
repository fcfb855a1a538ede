"""The sub_call tape's key and file (records/tape.py): no server needed."""
from __future__ import annotations

import pytest

from rlm_rig.records.tape import Tape, TapeEntry, TapeMismatch, tape_key

MSGS = [{"role": "user", "content": "count the rolls"}]
SAMPLING = {"temperature": 0.0, "max_tokens": 16}


def test_the_key_changes_with_each_of_weights_messages_sampling_and_seed():
    base = tape_key("sha256:aa", MSGS, SAMPLING, None)
    assert base == tape_key("sha256:aa", [dict(m) for m in MSGS], dict(reversed(SAMPLING.items())), None)
    others = [tape_key("sha256:ab", MSGS, SAMPLING, None),
              tape_key("sha256:aa", [{"role": "user", "content": "count the rolls "}], SAMPLING, None),
              tape_key("sha256:aa", MSGS, {**SAMPLING, "temperature": 0.5}, None),
              tape_key("sha256:aa", MSGS, SAMPLING, 1)]
    assert base not in others and len(set(others)) == 4


def entry(model="sha256:aa", sampling=SAMPLING, text="3") -> TapeEntry:
    return TapeEntry(key=tape_key(model, MSGS, sampling, None), model=model, sampling=sampling, messages=MSGS,
                     text=text, token_ids=[18], token_logprobs=[-0.1])


def test_a_tape_reads_back_what_it_wrote_once_per_key(tmp_path):
    t = Tape(tmp_path / "t.jsonl")
    t.add(entry())
    t.add(entry(text="4"))  # same key: kept once, the first reply
    back = Tape(tmp_path / "t.jsonl")
    assert len(back) == 1 and back.get(entry().key).text == "3" and back.get(entry().key).token_ids == [18]
    back.check_compatible("sha256:aa", SAMPLING, None)


def test_a_tape_of_other_weights_or_sampling_or_none_at_all_is_refused(tmp_path):
    t = Tape(tmp_path / "t.jsonl")
    with pytest.raises(TapeMismatch, match="no worker replies"):
        t.check_compatible("sha256:aa", SAMPLING, None)
    t.add(entry())
    with pytest.raises(TapeMismatch, match="weights sha256:aa; this run's worker is sha256:bb"):
        t.check_compatible("sha256:bb", SAMPLING, None)
    with pytest.raises(TapeMismatch, match="sampling"):
        t.check_compatible("sha256:aa", {**SAMPLING, "temperature": 0.7}, None)
    with pytest.raises(TapeMismatch, match="sampling"):
        t.check_compatible("sha256:aa", SAMPLING, 7)


def test_a_written_only_tape_keeps_keys_not_replies(tmp_path):
    t = Tape(tmp_path / "t.jsonl", keep=False)
    t.add(entry())
    t.add(entry(text="4"))
    assert len(t) == 1 and t.entries == {} and t.keys() == {entry().key}
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1


def test_a_tape_sampled_otherwise_at_some_depth_is_accepted_by_the_same_profile(tmp_path):
    t = Tape(tmp_path / "t.jsonl")
    deep = {**SAMPLING, "temperature": 0.7}
    t.add(entry(sampling=deep))  # every call of this run was made at a depth with its own sampling
    with pytest.raises(TapeMismatch):
        t.check_compatible("sha256:aa", SAMPLING, None)
    t.check_compatible("sha256:aa", [(SAMPLING, None), (deep, None)])  # the profile's variants, as Rig passes them


def test_a_forks_replay_never_asks_the_model_before_its_fork_point(tmp_path):
    from rlm_rig.worker.client import Completion
    from rlm_rig.worker.tape import ReplayDiverged, TapedWorker

    class Model:
        calls = 0

        def chat_many(self, batch, **kw):
            Model.calls += len(batch)
            return [Completion("from the model", 1, 1, 0.0, "stop") for _ in batch]

    tape = Tape(tmp_path / "t.jsonl")
    tape.add(entry())
    w = TapedWorker(Model(), model="sha256:aa", sampling=SAMPLING, record=None, replay=tape, replace={2: "7"})
    other = [{"role": "user", "content": "not what the original asked"}]
    got = w.chat_many([MSGS, other, MSGS])
    assert got[0].text == "3" and isinstance(got[1], ReplayDiverged) and got[2].text == "7"
    assert Model.calls == 0 and w.diverged and "#1" in w.diverged
