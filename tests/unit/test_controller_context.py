"""The controller's context guard: trim old cell outputs, then shorten the reply, then end with
stop_reason 'context', never a crash (a replay controller and the real sandbox; no server)."""
from __future__ import annotations

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.loop import RLM, RunContext
from rlm_rig.controller.backends import ReplayLM
from rlm_rig.controller.context import TRIMMED, ContextFull, ContextGuard, guarded_generate
from rlm_rig.worker.errors import ContextLengthError


def count_chars(messages) -> int:  # 1 token per character: easy arithmetic in the assertions
    return sum(len(m["content"]) for m in messages)


def convo(n_cells: int, out_chars: int) -> list[dict[str, str]]:
    m = [{"role": "system", "content": "S" * 100}, {"role": "user", "content": "Q" * 50}]
    for i in range(n_cells):
        m += [{"role": "assistant", "content": f"code {i}"}, {"role": "user", "content": str(i) * out_chars}]
    return m


def test_guard_trims_oldest_outputs_first_and_keeps_the_newest():
    g = ContextGuard(window=2000, count=count_chars, min_new_tokens=100)
    m = convo(4, 500)
    assert g.fit(m, 300) == 300
    assert g.trimmed == [3, 5]  # the two oldest outputs; system, question and the newest output untouched
    assert m[0]["content"] == "S" * 100 and m[1]["content"] == "Q" * 50 and m[-1]["content"] == "3" * 500
    assert m[3]["content"] == TRIMMED.format(window=2000) and m[7]["content"] == "2" * 500
    assert count_chars(m) + 300 <= 2000


def test_guard_shortens_the_reply_then_gives_up():
    g = ContextGuard(window=900, count=count_chars, min_new_tokens=100)
    m = convo(1, 600)  # the only output is the newest: nothing to trim
    assert g.fit(m, 300) == 900 - count_chars(m)  # 100 <= reply < 300
    with pytest.raises(ContextFull, match="window"):
        ContextGuard(window=700, count=count_chars, min_new_tokens=100).fit(convo(1, 600), 300)


class FakeServerLM:
    """Stands in for a server that answers HTTP 400 above `limit` tokens (the real 400 is exercised in
    tests/integration/test_served_controller.py)."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, []

    def generate(self, messages, *, max_new_tokens, sampling=None):
        self.calls.append(max_new_tokens)
        if count_chars(messages) + max_new_tokens > self.limit:
            raise ContextLengthError("maximum context length", status=400)
        return "ok"


def test_a_server_400_trims_and_retries():
    lm = FakeServerLM(limit=1500)
    g = ContextGuard(window=10_000, count=count_chars, min_new_tokens=100)  # the guard believes a bigger window
    m = convo(4, 500)
    assert guarded_generate(lm, m, 300, g) == "ok"
    assert len(lm.calls) > 1 and count_chars(m) + lm.calls[-1] <= 1500
    with pytest.raises(ContextFull):
        guarded_generate(FakeServerLM(limit=100), convo(1, 500), 300, ContextGuard(10_000, count_chars))


def cell(code: str) -> str:
    return f"```repl\n{code}\n```"


def run(window: int | None, responses: list[str], **kw):
    cfg = load_config("cpu-tiny", ["sandbox.cell_timeout_s=10", "rlm.feedback_max_chars=3000", "controller.max_new_tokens=200",
                                   *kw.pop("overrides", [])])
    ctx = RunContext(cfg=cfg, lm=ReplayLM(responses), worker=None, count_tokens=lambda s: len(s) // 4,
                     models={}, versions={}, sub_calls_enabled=False, context_window=window)
    return RLM(ctx).run("x" * 1000, "How many?", run_id="ctx")


def test_loop_trims_and_tells_the_model_and_records_it():
    big = cell("print('a' * 2500)")
    t = run(4000, [big, big, big, big, "FINAL(7)"])
    assert t.stop_reason == "final" and t.final_answer == "7" and t.error is None
    caps = [c for c in t.caps_hit if c.cap == "context"]
    assert caps and "removed" in caps[0].detail
    # the record keeps what the model saw when it saw it: the first output is intact in its turn
    assert "a" * 2500 in t.turns[1].messages_in[0]["content"]


def test_loop_ends_with_stop_reason_context_not_a_crash():
    big = cell("print('a' * 2900)")
    t = run(1500, [big] * 6 + ["FINAL(3)"], overrides=["rlm.max_iterations=6"])
    assert t.error is None and t.stop_reason == "context", (t.stop_reason, t.error)
    assert any(c.cap == "context" for c in t.caps_hit)
    assert len(t.turns) < 7


def test_unguarded_without_a_window():
    big = cell("print('a' * 2500)")
    t = run(None, [big, big, "FINAL(1)"])
    assert t.stop_reason == "final" and not any(c.cap == "context" for c in t.caps_hit)
