"""The official dialect, rlm_query recursion, custom tools and list/dict contexts, through the real loop:
a replay controller, the real sandbox and the real tiny worker (transformers in-process, as test_loop.py)."""
from __future__ import annotations

import json


from rlm_rig.configs.load import load_config
from rlm_rig.controller.backends import ReplayLM
from rlm_rig.controller.loop import RLM, RunContext
from rlm_rig.records.trajectory import Trajectory
from test_loop import cell, count_tokens, hf_worker  # noqa: F401 - the shared tiny in-process worker fixtures

ITEMS = [f"Scene {k}: " + "".join(f"Grog rolls a d20 and gets {i}.\n" for i in range(k + 3)) for k in range(4)]


def make_rlm(responses, hf_worker, count_tokens, *overrides):
    cfg = load_config("cpu-tiny", ["worker.max_tokens=8", "sandbox.cell_timeout_s=20", "rlm.dialect=official",
                                   *overrides])
    ctx = RunContext(cfg=cfg, lm=ReplayLM(responses), worker=hf_worker, count_tokens=count_tokens,
                     models={"controller": "replay", "worker": "tiny"}, versions={})
    return RLM(ctx)


def test_official_list_context_finishes_through_answer(hf_worker, count_tokens, tmp_path):
    responses = [
        cell("print(type(context).__name__, len(context), context_0 is context)\nprint(SHOW_VARS())"),
        cell("rs = llm_query_batched(['Count the rolls.\\n' + c for c in context])\n"
             "one = llm_query(context[2])\nprint(len(rs), all(isinstance(r, str) for r in rs))"),
        "FINAL(ignored in this dialect)",
        cell("answer['content'] = 'rolls: ' + str(len(rs))\nanswer['ready'] = True\nprint('set')"),
    ]
    path = tmp_path / "t.json"
    t = make_rlm(responses, hf_worker, count_tokens).run(ITEMS, "How many rolls?", save_to=path)
    assert t.stop_reason == "final" and t.final_answer == "rolls: 4" and len(t.turns) == 4
    assert t.cells[0].stdout.splitlines() == ["list 4 True", "Variables in the REPL: {'context': 'list', "
                                              "'context_0': 'list'}"]
    assert t.doc_layout == {"type": "list", "length": 4, "item_chars": [len(x) for x in ITEMS]}
    assert t.doc_chars == sum(len(x) for x in ITEMS)
    assert len(t.sub_calls) == 5 and all(s.kind == "llm" and s.response is not None for s in t.sub_calls)
    joined = "".join(ITEMS)
    for k, s in enumerate(t.sub_calls[:4]):  # the slice inside "instruction + slice" is placed, and mapped back
        assert s.messages == [{"role": "user", "content": "Count the rolls.\n" + ITEMS[k]}]
        assert joined[s.chunk_start:s.chunk_end] == ITEMS[k] and (s.chunk_item, s.chunk_item_offset) == (k, 0)
    assert t.sub_calls[4].chunk_item == 2 and t.sub_calls[4].messages == [{"role": "user", "content": ITEMS[2]}]
    # the controller saw the type, the length and the item sizes, never the content
    system = t.turns[0].messages_in[0]["content"]
    assert "list of 4 items" in system and f"{len(ITEMS[3]):,}" in system and "Grog" not in system
    assert "llm_query" in system and 'answer["ready"]' in system and "FINAL_VAR" not in system
    assert Trajectory.load(path).model_dump() == t.model_dump()


def test_official_dict_context(hf_worker, count_tokens):
    doc = {"ep1": ITEMS[0], "ep2": ITEMS[1], "meta": {"n": 2}}
    responses = [
        cell("print(sorted(context), context['meta']['n'])\ncontext['ep1'] = 'changed'"),
        cell("r = llm_query(context['ep2'])\nanswer['content'] = context['ep1'][:7]\nanswer['ready'] = True"),
    ]
    t = make_rlm(responses, hf_worker, count_tokens).run(doc, "q")
    assert t.cells[0].stdout.strip() == "['ep1', 'ep2', 'meta'] 2"
    # the in-place change was put back before the next cell, and that cell was told so
    assert t.final_answer == "Scene 0" and t.cells[1].prompt_restored
    assert t.doc_layout["type"] == "dict" and t.doc_layout["keys"] == ["ep1", "ep2", "meta"]
    s = t.sub_calls[0]
    assert s.chunk_item == "ep2" and s.chunk_item_offset == 0


def test_rlm_query_nests_then_falls_back_at_the_depth_limit(hf_worker, count_tokens):
    responses = [  # one replay cursor: the child's turns come in the order they are asked for
        cell("sub = rlm_query('Count the rolls in this: ' + context[1])\nprint(sub)"),
        cell("print(type(context).__name__, context[:24])\n"
             "deep = rlm_query('Say yes.')\nanswer['content'] = 'child saw ' + str(len(context))\n"
             "answer['ready'] = True"),
        cell("answer['content'] = 'root got: ' + sub\nanswer['ready'] = True"),
    ]
    t = make_rlm(responses, hf_worker, count_tokens, "rlm.max_depth=2").run(ITEMS, "q")
    prompt = "Count the rolls in this: " + ITEMS[1]
    assert t.stop_reason == "final" and t.final_answer == f"root got: child saw {len(prompt)}"
    (rec,) = t.sub_calls
    assert rec.kind == "rlm" and rec.fallback is None and rec.depth == 1 and rec.response == f"child saw {len(prompt)}"
    child = rec.nested_trajectory
    assert child is not None and child.depth == 1 and child.question == ""
    assert child.cells[0].stdout.startswith("str Count the rolls in this")
    first = child.turns[0].messages_in[1]["content"]
    assert "written in `context`" in first and "worker calls" in first and "controller tokens" in first
    (deep,) = child.sub_calls  # at the limit: a plain worker call, and the record says so
    assert deep.kind == "rlm" and deep.fallback == "max_depth" and deep.nested_trajectory is None
    assert deep.messages == [{"role": "user", "content": "Say yes."}] and deep.response is not None
    assert [x.depth for x in t.walk()] == [0, 1]


def test_rlm_query_at_depth_one_is_a_recorded_plain_call(hf_worker, count_tokens):
    responses = [cell("r = rlm_query_batched(['a', 'b'])\nanswer.update(content=str(len(r)), ready=True)")]
    t = make_rlm(responses, hf_worker, count_tokens).run("plain text", "q")
    assert t.final_answer == "2"  # answer.update(...) finishes too (checked when the cell ends)
    assert [(s.kind, s.fallback, s.batch) for s in t.sub_calls] == [("rlm", "max_depth", 0)] * 2


def test_shared_sub_call_budget_reaches_the_child(hf_worker, count_tokens):
    responses = [
        cell("sub = rlm_query('x')\nprint(sub)"),
        cell("rs = llm_query_batched(['a', 'b', 'c'])\nanswer['content'] = rs[0][:6]\nanswer['ready'] = True"),
        cell("answer['content'] = sub\nanswer['ready'] = True"),
    ]
    t = make_rlm(responses, hf_worker, count_tokens, "rlm.max_depth=2", "rlm.max_sub_calls=3").run("doc", "q")
    child = t.sub_calls[0].nested_trajectory
    assert "2 worker calls" in child.turns[0].messages_in[1]["content"]  # one of 3 went to the rlm_query itself
    assert t.final_answer == "Error:" and [c.cap for c in child.caps_hit] == ["sub_calls"]


def test_custom_tool(hf_worker, count_tokens):
    responses = [
        cell("print(lookup('Grog'))\nprint(lookup(name='vex', default='?')['what'])"),
        cell("try:\n    not_json(3)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
             "try:\n    boom()\nexcept Exception as e:\n    print('boom:', e)\n"
             "try:\n    lookup({1})\nexcept TypeError as e:\n    print('args:', e)"),
        cell("answer['content'] = lookup('grog')['what']\nanswer['ready'] = True"),
    ]
    tools = "rlm.tools={lookup: 'dialect_tools:lookup', not_json: 'dialect_tools:not_json', boom: 'dialect_tools:boom'}"
    t = make_rlm(responses, hf_worker, count_tokens, tools).run("doc", "q")
    assert t.cells[0].stdout == "{'name': 'Grog', 'what': 'goliath barbarian'}\nhalf-elf ranger\n"
    out = t.cells[1].stdout.splitlines()
    assert out[0].startswith("ToolError tool not_json returned a value that is not JSON-serialisable")
    assert out[1].startswith("boom: boom raised KeyError") and out[2].startswith("args: lookup: arguments must be JSON")
    assert t.final_answer == "goliath barbarian"
    recs = [s for s in t.sub_calls if s.kind == "tool"]
    assert [r.tool for r in recs] == ["lookup", "lookup", "not_json", "boom", "lookup"]
    assert json.loads(recs[0].response) == {"name": "Grog", "what": "goliath barbarian"}
    assert json.loads(recs[1].instruction) == {"args": [], "kwargs": {"name": "vex", "default": "?"}}
    assert recs[2].error_kind == "tool_result" and recs[3].error_kind == "tool"
    system = t.turns[0].messages_in[0]["content"]  # listed with their signatures and docstrings
    assert "lookup(name: str, default: str = 'unknown') -> dict: Look a character up" in system


def test_rig_dialect_also_accepts_the_answer_dict(hf_worker, count_tokens):
    responses = [cell("answer['content'] = prompt[:5]\nanswer['ready'] = True"), "FINAL(not reached)"]
    t = make_rlm(responses, hf_worker, count_tokens, "rlm.dialect=rig").run("hello world", "q")
    assert t.stop_reason == "final" and t.final_answer == "hello" and len(t.turns) == 1
    # `answer` as an ordinary variable keeps working under rig
    responses = [cell("answer = 'plain'"), "FINAL_VAR(answer)"]
    t = make_rlm(responses, hf_worker, count_tokens, "rlm.dialect=rig").run("hello world", "q")
    assert t.final_answer == "plain"
