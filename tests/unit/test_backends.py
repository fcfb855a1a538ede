"""Replay backend: file formats, order, exhaustion, and errors naming the file."""
import json

import pytest

from rlm_rig.controller.backends import ReplayExhausted, ReplayLM, load_replay


def test_formats(tmp_path):
    (tmp_path / "a.yaml").write_text("- one\n- two\n")
    (tmp_path / "b.yaml").write_text("responses: [x]\n")
    (tmp_path / "c.json").write_text(json.dumps({"turns": [{"response": "r0"}, {"response": "r1"}]}))
    assert load_replay(tmp_path / "a.yaml") == ["one", "two"]
    assert load_replay(tmp_path / "b.yaml") == ["x"]
    assert load_replay(tmp_path / "c.json") == ["r0", "r1"]


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_replay(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("{a: 1}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_replay(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="cannot parse"):
        load_replay(tmp_path / "bad.json")


def test_order_fork_and_exhaustion():
    lm = ReplayLM(["a", "b"])
    msgs = [{"role": "user", "content": "x" * 40}]
    assert lm.generate(msgs, max_new_tokens=5).text == "a"
    assert lm.fork().generate(msgs, max_new_tokens=5).text == "a"
    g = lm.generate(msgs, max_new_tokens=5)
    assert g.text == "b" and g.prompt_tokens == 10
    with pytest.raises(ReplayExhausted):
        lm.generate(msgs, max_new_tokens=5)
