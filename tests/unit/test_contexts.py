"""List/dict contexts: packing for the kernel, mapping spans back to items, loading --doc, dialect settings."""
from __future__ import annotations

import json

import pytest

from rlm_rig.configs.load import ConfigError, load_config
from rlm_rig.controller.tools import ToolImportError, check_tool_name, import_tool, tool_docs
from rlm_rig.experiments.datasets.contexts import ContextFileError, load_context_file
from rlm_rig.records.trajectory import SubCallRecord
from rlm_rig.repl._kernel.context import altered, put_back, snapshot, unpack
from rlm_rig.repl.context import ContextError, pack_context


def test_a_list_packs_flat_and_unpacks_to_the_same_value():
    value = ["abc", "", "defg", {"k": [1, 2]}, 7]
    p = pack_context(value)
    assert p.flat == 'abcdefg{"k": [1, 2]}7' and p.lengths == [3, 0, 4, 13, 1] and p.json_items == [3, 4]
    assert unpack(p.flat, p.layout()) == value
    assert p.summary() == {"type": "list", "length": 5, "item_chars": [3, 0, 4, 13, 1]}


def test_a_dict_keeps_its_keys_and_order():
    value = {"b": "xx", "a": "yyy"}
    p = pack_context(value)
    assert unpack(p.flat, p.layout()) == value and list(unpack(p.flat, p.layout())) == ["b", "a"]
    assert p.locate(0) == ("b", 0) and p.locate(3) == ("a", 1)


def test_a_string_is_not_touched():
    p = pack_context("plain")
    assert p.layout() is None and unpack("plain", None) == "plain" and p.locate(2) == (None, None)


def test_spans_map_to_items_and_are_clipped_to_the_item_holding_their_middle():
    p = pack_context(["aaaa", "bbbbbbbb", "cc"])
    assert p.locate(5) == (1, 1) and p.locate(12) == (2, 0)
    assert p.clip_to_item(2, 12) == (4, 12)  # spilled 2 characters into item 0: cut back to item 1


@pytest.mark.parametrize("bad", [b"bytes", 3, {1: "x"}, [{1, 2}], [float("nan")]])
def test_what_cannot_be_a_context(bad):
    with pytest.raises(ContextError):
        pack_context(bad)


def test_in_place_changes_are_found_and_put_back():
    lst = ["a", "b"]
    snap = snapshot(lst)
    lst.append("c")
    lst[0] = "z"
    assert altered(lst, snap)
    put_back(lst, snap)
    assert lst == ["a", "b"] and not altered(lst, snap)
    d = {"k": "v", "j": "w"}
    snap = snapshot(d)
    d["k"] = "other"
    assert altered(d, snap)
    put_back(d, snap)
    assert d == {"k": "v", "j": "w"} and snapshot("s") is None


def test_doc_files(tmp_path):
    (tmp_path / "a.txt").write_text("plain")
    (tmp_path / "l.json").write_text(json.dumps(["x", "y"]))
    (tmp_path / "d.json").write_text(json.dumps({"k": "v"}))
    (tmp_path / "r.jsonl").write_text('{"a": 1}\n\n"s"\n')
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "2.txt").write_text("second")
    (folder / "1.txt").write_text("first")
    (folder / "skip.md").write_text("no")
    assert load_context_file(tmp_path / "a.txt") == "plain"
    assert load_context_file(tmp_path / "l.json") == ["x", "y"]
    assert load_context_file(tmp_path / "d.json") == {"k": "v"}
    assert load_context_file(tmp_path / "r.jsonl") == [{"a": 1}, "s"]
    assert load_context_file(folder) == ["first", "second"]


@pytest.mark.parametrize("name,content,msg", [
    ("empty", None, "no .txt files"), ("s.json", '"just a string"', "needs a list or an object"),
    ("bad.json", "{", "not valid JSON"), ("bad.jsonl", '1\n{\n', "line 2 is not valid JSON"),
    ("missing.txt", False, "is not a file or a folder")])
def test_bad_doc_files_are_one_line(tmp_path, name, content, msg):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif content is not False:
        path.write_text(content)
    with pytest.raises(ContextFileError, match=msg):
        load_context_file(path)


def test_dialect_setting():
    assert load_config("cpu-tiny").rlm.dialect == "rig"
    assert load_config("cpu-tiny", ["rlm.dialect=official"]).rlm.dialect == "official"
    with pytest.raises(ConfigError) as err:
        load_config("cpu-tiny", ["rlm.dialect=dspy"])
    assert len(str(err.value).splitlines()) == 1 and "rlm.dialect" in str(err.value)


def test_tool_settings():
    cfg = load_config("cpu-tiny", ["rlm.tools={dumps: 'json:dumps'}"])
    fns = cfg.rlm.import_tools()
    assert fns["dumps"] is json.dumps and "dumps(" in tool_docs(fns)["dumps"]
    for bad in ("{context: 'json:dumps'}", "{'1x': 'json:dumps'}", "{t: 'nocolon'}"):
        with pytest.raises(ConfigError):
            load_config("cpu-tiny", [f"rlm.tools={bad}"])
    with pytest.raises(ConfigError, match="rlm.tools.t: cannot import 'json:nothing_here'"):
        load_config("cpu-tiny", ["rlm.tools={t: 'json:nothing_here'}"])
    with pytest.raises(ToolImportError, match="is not callable"):
        import_tool("t", "json:__doc__")
    with pytest.raises(ValueError):
        check_tool_name("answer")


def test_old_sub_call_records_read_as_plain_worker_calls():
    rec = SubCallRecord.model_validate({"id": 0, "cell": 0, "depth": 1, "chunk_chars": 3, "instruction": "i"})
    assert (rec.kind, rec.fallback, rec.tool, rec.chunk_item) == ("llm", None, None, None)


def test_a_text_doc_reaches_the_kernel_byte_faithful(tmp_path):
    raw = b"line one\r\nline two\rthree \xff end\n"
    (tmp_path / "a.txt").write_bytes(raw)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "1.txt").write_bytes(raw)
    for value in (load_context_file(tmp_path / "a.txt"), load_context_file(tmp_path / "f")[0]):
        assert len(value) == len(raw) and "\r\n" in value and "\rthree" in value and "\ufffd" not in value
        # the sandbox sends the doc as UTF-8 "surrogatepass" and the kernel decodes it the same way
        assert value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass") == value
        assert value.encode("utf-8", "surrogateescape") == raw


@pytest.mark.parametrize("value", [[{1: "a"}], ["s", (1, 2)], {"k": [{"x": (1,)}]}, [{2: [3]}]])
def test_items_that_json_would_change_are_refused(value):
    with pytest.raises(ContextError, match=r"context item \d+ \(\w+\) does not survive JSON unchanged"):
        pack_context(value)
    assert pack_context([{"a": [1, 2.5, None, True]}, "s"]).json_items == [0]


@pytest.mark.parametrize("body,kind", [("raise SystemExit(3)", "SystemExit: 3"),
                                       ("raise ValueError('one\\ntwo\\nthree')", "ValueError: one)")])
def test_a_tool_module_failing_at_import_is_one_line(tmp_path, monkeypatch, body, kind):
    (tmp_path / "rlm_rig_bad_tool_mod.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ToolImportError) as info:
        import_tool("t", "rlm_rig_bad_tool_mod:f")
    assert kind in str(info.value) and "\n" not in str(info.value)
