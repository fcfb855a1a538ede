"""The RLM loop's mechanics with a replay controller, a real sandbox and a real (in-process) tiny worker.

The worker here is the tiny random Qwen2 run by transformers in-process: real, deterministic and
fast. The same loop against the real vLLM server is in tests/integration/test_rig_vllm.py.
"""
from __future__ import annotations

import re

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.loop import RLM, RunContext
from rlm_rig.controller.backends import ReplayLM
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.hf import TransformersWorker
from rlm_rig.worker.tokens import load_tokenizer

DOC = "".join(f"Line {i}: Travis rolls a d20 and gets {i % 20 + 1}.\n" for i in range(300))


@pytest.fixture(scope="module")
def hf_worker(tiny_model_path):
    w = SyncWorker(TransformersWorker(str(tiny_model_path), device="cpu", dtype="float32", max_tokens=8))
    yield w
    w.close()


@pytest.fixture(scope="module")
def count_tokens(tiny_model_path):
    tok = load_tokenizer(str(tiny_model_path))
    return lambda s: len(tok(s, add_special_tokens=False)["input_ids"])


def make_rlm(responses, hf_worker, count_tokens, *overrides):
    cfg = load_config("cpu-tiny", ["worker.max_tokens=8", "sandbox.cell_timeout_s=5", *overrides])
    ctx = RunContext(cfg=cfg, lm=ReplayLM(responses), worker=hf_worker, count_tokens=count_tokens,
                     models={"controller": "replay", "worker": "tiny"}, versions={})
    return RLM(ctx)


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def test_full_loop_records_everything(hf_worker, count_tokens, tmp_path):
    responses = [
        "Look first.\n" + cell("print(len(prompt), prompt.count('\\n'))"),
        cell("chunks = [prompt[i:i+2000] for i in range(0, len(prompt), 2000)]\n"
             "rs = sub_call_batch(chunks, 'How many rolls? Reply with a number.')\n"
             "one = sub_call(chunks[0], 'Summarise.')\nprint(len(rs), rs[0][:20])"),
        "Done.\nFINAL(\\boxed{42})",
    ]
    rlm = make_rlm(responses, hf_worker, count_tokens)
    path = tmp_path / "t.json"
    t = rlm.run(DOC, "How many rolls?", run_id="r1", save_to=path)
    assert t.stop_reason == "final" and t.final_answer == "\\boxed{42}"
    assert len(t.turns) == 3 and len(t.cells) == 2
    assert t.cells[0].stdout.strip() == f"{len(DOC)} {DOC.count(chr(10))}"
    n_chunks = -(-len(DOC) // 2000)
    assert len(t.sub_calls) == n_chunks + 1
    assert t.cells[1].stdout.startswith(str(n_chunks))
    for s in t.sub_calls:
        assert s.cell == 1 and s.depth == 1 and s.response is not None and s.error is None
        assert DOC[s.chunk_start:s.chunk_end] == (DOC[s.chunk_start:s.chunk_start + s.chunk_chars])
        assert s.chunk_tokens == count_tokens(DOC[s.chunk_start:s.chunk_end])
        assert s.prompt_tokens > 0 and s.completion_tokens > 0
        assert s.messages[-1]["content"].endswith(s.instruction)
    batch_ids = {s.batch for s in t.sub_calls[:n_chunks]}
    assert batch_ids == {0} and t.sub_calls[-1].batch is None
    # the system prompt describes the document's shape, never its content
    system = t.turns[0].messages_in[0]["content"]
    assert f"{len(DOC):,} characters" in system and "Travis" not in system
    # saved, loadable, identical
    from rlm_rig.records.trajectory import Trajectory

    assert Trajectory.load(path).model_dump() == t.model_dump()


def test_deterministic(hf_worker, count_tokens):
    responses = [cell("r = sub_call(prompt[:500], 'Count rolls.')\nprint(r)"), "FINAL_VAR(r)"]
    a = make_rlm(responses, hf_worker, count_tokens).run(DOC, "q")
    b = make_rlm(responses, hf_worker, count_tokens).run(DOC, "q")
    assert a.final_answer == b.final_answer == a.sub_calls[0].response


def test_final_inside_code_ends_run(hf_worker, count_tokens):
    t = make_rlm([cell("x = 6 * 7\nFINAL(x)"), "never used"], hf_worker, count_tokens).run(DOC, "q")
    assert t.stop_reason == "final" and t.final_answer == "42" and len(t.turns) == 1


def test_final_var_missing_is_told_not_ended(hf_worker, count_tokens):
    t = make_rlm(["FINAL_VAR(nope)", cell("nope = 'found'"), "FINAL_VAR(nope)"], hf_worker, count_tokens).run(DOC, "q")
    assert t.stop_reason == "final" and t.final_answer == "found"
    assert "no variable named 'nope'" in t.turns[1].messages_in[-1]["content"]


def test_format_error_is_told(hf_worker, count_tokens):
    t = make_rlm(["I think the answer is 3.", "FINAL(3)"], hf_worker, count_tokens).run(DOC, "q")
    assert t.final_answer == "3" and "no ```repl code block" in t.turns[1].messages_in[-1]["content"]


def test_max_iterations_forces_a_final_turn(hf_worker, count_tokens):
    t = make_rlm([cell("print(1)")] * 2 + ["FINAL(7)"], hf_worker, count_tokens, "rlm.max_iterations=2").run(DOC, "q")
    assert t.stop_reason == "max_iterations" and t.final_answer == "7"
    assert t.turns[-1].forced_final and [c.cap for c in t.caps_hit] == ["max_iterations"]
    assert "Give your final answer now" in t.turns[-1].messages_in[-1]["content"]


def test_sub_call_cap(hf_worker, count_tokens):
    code = ("try:\n    sub_call_batch([prompt[:100]] * 3, 'x')\nexcept SubCallError as e:\n    print('refused:', e)\n"
            "print(sub_call(prompt[:100], 'y')[:5] != None)")
    t = make_rlm([cell(code), "FINAL(0)"], hf_worker, count_tokens, "rlm.max_sub_calls=2").run(DOC, "q")
    assert "sub_call limit reached" in t.cells[0].stdout
    assert [c.cap for c in t.caps_hit] == ["sub_calls"]
    assert len(t.sub_calls) == 1  # the refused batch sent nothing


def test_chunk_token_cap(hf_worker, count_tokens):
    code = "try:\n    sub_call(prompt, 'x')\nexcept SubCallError as e:\n    print('refused:', e)"
    t = make_rlm([cell(code), "FINAL(0)"], hf_worker, count_tokens, "rlm.chunk_budget_tokens=100").run(DOC, "q")
    assert "chunk too large" in t.cells[0].stdout and t.caps_hit[0].cap == "chunk_tokens"
    assert t.sub_calls == []


def test_cell_timeout_restarts_and_tells(hf_worker, count_tokens):
    responses = [cell("keep = 1"), cell("while True:\n    pass"), cell("print('keep' in globals(), len(prompt))"), "FINAL(ok)"]
    t = make_rlm(responses, hf_worker, count_tokens, "sandbox.cell_timeout_s=2").run(DOC, "q")
    assert t.cells[1].timed_out and t.cells[1].restarted
    assert t.caps_hit[0].cap == "cell_timeout"
    assert "LOST" in t.turns[2].messages_in[-1]["content"]
    assert t.cells[2].stdout.split() == ["False", str(len(DOC))]


def test_controller_token_cap(hf_worker, count_tokens):
    # each turn re-reads the ~550-token system prompt: the cap is hit after two turns
    t = make_rlm([cell("print(1)")] * 2 + ["FINAL(1)"], hf_worker, count_tokens,
                 "rlm.max_controller_tokens=1000").run(DOC, "q")
    assert t.stop_reason == "cap" and t.caps_hit[-1].cap == "controller_tokens"
    assert len(t.turns) == 3 and t.turns[-1].forced_final and t.final_answer == "1"


def test_output_truncation_is_told(hf_worker, count_tokens):
    t = make_rlm([cell("print('x' * 10000)"), "FINAL(1)"], hf_worker, count_tokens, "rlm.feedback_max_chars=500").run(DOC, "q")
    fb = t.turns[1].messages_in[-1]["content"]
    assert t.cells[0].feedback_truncated and "output truncated" in fb and "x" * 501 not in fb


def test_replay_exhausted_is_an_error_with_a_record(hf_worker, count_tokens):
    t = make_rlm([cell("print(1)")], hf_worker, count_tokens).run(DOC, "q")
    assert t.stop_reason == "error" and "ReplayExhausted" in t.error and len(t.cells) == 1


def test_nested_rlm_at_depth_two(hf_worker, count_tokens):
    """rlm_query starts the child RLM; sub_call stays one-shot (the child's own sub_call is a plain call)."""
    responses = [
        cell("r = rlm_query(prompt[:3000], 'Count rolls.')\nprint(r)"),
        # the nested run, over the chunk
        cell("inner = sub_call(prompt[:200], 'Count.')\nprint(len(prompt))"),
        "FINAL(inner-done)",
        # back at the root
        "FINAL_VAR(r)",
    ]
    t = make_rlm(responses, hf_worker, count_tokens, "rlm.max_depth=2").run(DOC, "q")
    assert t.stop_reason == "final" and t.final_answer == "inner-done"
    nested = t.sub_calls[0].nested_trajectory
    assert nested.depth == 1 and nested.doc_chars == 3000
    assert nested.cells[0].stdout.strip() == "3000"
    assert nested.sub_calls[0].depth == 2 and nested.sub_calls[0].response
    assert t.sub_calls[0].kind == "rlm" and nested.sub_calls[0].kind == "llm"
    assert nested.sub_calls[0].nested_trajectory is None


def test_sub_call_stays_one_shot_below_the_depth_limit(hf_worker, count_tokens):
    t = make_rlm([cell("r = sub_call(prompt[:300], 'Count rolls.')"), "FINAL_VAR(r)"], hf_worker, count_tokens,
                 "rlm.max_depth=3").run(DOC, "q")
    assert t.stop_reason == "final" and len(t.sub_calls) == 1
    assert t.sub_calls[0].kind == "llm" and t.sub_calls[0].nested_trajectory is None


def test_rlm_chars_per_token_and_budget_in_repl(hf_worker, count_tokens):
    t = make_rlm([cell("print(CHUNK_BUDGET_CHARS > 0, question)"), "FINAL(1)"], hf_worker, count_tokens).run(DOC, "what?")
    assert t.cells[0].stdout.strip() == "True what?"
    assert re.search(r"about \d+ characters", t.turns[0].messages_in[0]["content"])


def test_chunk_tokens_bound_never_undercounts(tiny_model_path, count_tokens):
    """The length bound that spares tokenizing a chunk is an upper bound on its real token count, for
    ASCII, accented and composed/decomposed Unicode text alike; near the cap the count is exact."""
    import random

    from rlm_rig.controller.doctokens import ChunkTokens, batch_counter_for, counter_for, normalizer_form, token_bound
    from rlm_rig.worker.tokens import load_fast_tokenizer

    fast = load_fast_tokenizer(str(tiny_model_path))
    form = normalizer_form(fast)
    assert form == "NFC"
    rng = random.Random(0)
    alphabet = "ab 12\n\t.,;'e\u0301\u00e9\u00df\u0958\u2126\u4e2d\U0001f600"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        assert count_tokens(text) <= token_bound(text, form)
    chunk = DOC[:700]
    n = count_tokens(chunk)
    sizer = ChunkTokens(counter_for(fast), form)
    assert sizer.check(chunk, len(chunk) + 1) == (None, False)  # the bound settles it: nothing tokenized
    assert sizer.check(chunk, n) == (n, False) and sizer.check(chunk, n - 1) == (n, True)
    batched = ChunkTokens(counter_for(fast), form, batch_counter_for(fast))  # counted together, in parallel
    chunks = [DOC[:700], DOC[5:900], "x" * 100, DOC]  # DOC is over 20x the cap in characters: refused unread
    assert batched.check_many(chunks, n) == [sizer.check(c, n) for c in chunks] == [
        (n, False), (count_tokens(DOC[5:900]), True), (None, False), (len(DOC) // 4, True)]


def test_doc_token_counts_are_exact_and_cached_by_hash(tiny_model_path, count_tokens, tmp_path):
    from rlm_rig.controller.doctokens import DocTokenCounts

    calls = []

    def counting(s):
        calls.append(len(s))
        return count_tokens(s)

    counts = DocTokenCounts(counting, tmp_path)
    assert counts(DOC) == count_tokens(DOC) and counts("".join(DOC)) == count_tokens(DOC) and len(calls) == 1
    again = DocTokenCounts(counting, tmp_path)  # a new process: the count comes from the disk cache
    assert again(DOC) == count_tokens(DOC) and len(calls) == 1


def test_loop_with_chunk_tokens_keeps_chunks_under_the_cap(hf_worker, count_tokens, tiny_model_path):
    from rlm_rig.controller.doctokens import ChunkTokens, counter_for, normalizer_form
    from rlm_rig.worker.tokens import load_fast_tokenizer

    fast = load_fast_tokenizer(str(tiny_model_path))
    cfg = load_config("cpu-tiny", ["worker.max_tokens=8", "rlm.chunk_budget_tokens=300"])
    code = ("out = []\nfor n in (800, 900, 1000, 5000):\n    try:\n        sub_call(prompt[:n], 'x'); out.append('ok')\n"
            "    except SubCallError:\n        out.append('refused')\nprint(out)")
    ctx = RunContext(cfg=cfg, lm=ReplayLM([cell(code), "FINAL(1)"]), worker=hf_worker, count_tokens=count_tokens,
                     models={}, versions={}, chunk_tokens=ChunkTokens(counter_for(fast), normalizer_form(fast)))
    t = RLM(ctx).run(DOC, "q")
    verdicts = eval(t.cells[0].stdout)
    for n, v in zip((800, 900, 1000, 5000), verdicts):
        assert v == ("ok" if count_tokens(DOC[:n]) <= 300 else "refused")
    for s in t.sub_calls:
        assert s.chunk_tokens <= 300
