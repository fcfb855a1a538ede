"""The sub_call router bounds its own work and records whatever a hostile kernel sends (issue 20's threat model:
the requests come from model code that owns the kernel). Found by a red-team pass that had not read the suite."""
from __future__ import annotations

import random

from rlm_rig.controller.subcalls import SubCallBudget, SubCallRouter, _agree
from rlm_rig.records.trajectory import Trajectory
from rlm_rig.repl.types import SubCallRequest


class NeverCalled:
    """The worker must not be reached by any request in these tests."""

    def chat_many(self, batch, **kw):  # pragma: no cover - reaching it is the failure
        raise AssertionError("a refused call reached the worker")


def router(doc: str, limit: int, dialect: str = "rig") -> SubCallRouter:
    traj = Trajectory(run_id="r", question="q", doc_chars=len(doc), doc_sha256="0" * 64, config={}, config_hash="h",
                      models={}, versions={}, started_at="2026-01-01T00:00:00")
    return SubCallRouter(doc=doc, traj=traj, worker=NeverCalled(), count_tokens=lambda t: len(t.split()),
                         budget_tokens=100, budget=SubCallBudget(limit), depth=0, worker_max_tokens=8,
                         dialect=dialect)


class Counting(SubCallRouter):
    searched = 0

    def _span(self, chunk):
        Counting.searched += 1
        return super()._span(chunk)


def test_a_flood_past_the_budget_searches_nothing_and_keeps_one_cap_event():
    r = router("x" * 10_000, limit=0)
    r.__class__ = Counting
    for _ in range(200):
        replies = r([SubCallRequest(chunk="Zq", instruction="i", index_in_batch=i) for i in range(64)])
        assert all(rep.error and "sub_call limit reached" in rep.error for rep in replies)
    assert Counting.searched == 0  # no document search for a call that is refused anyway
    assert len(r.traj.caps_hit) == 1 and r.traj.caps_hit[0].repeats == 199
    assert r.traj.sub_calls == []


def test_an_instruction_over_the_chunk_budget_is_refused_and_not_kept():
    r = router("some text " * 100, limit=10)
    replies = r([SubCallRequest(chunk="some text", instruction="y " * 50_000, index_in_batch=None)])
    assert replies[0].error and "chunk too large" in replies[0].error
    assert r.traj.sub_calls == [] and r.budget.used == 0


def test_agreement_by_slices_equals_a_character_walk():
    def walk(a, i, b, j, backward):
        k = 0
        if backward:
            while i - k > 0 and j - k > 0 and a[i - k - 1] == b[j - k - 1]:
                k += 1
        else:
            while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                k += 1
        return k

    rnd = random.Random(0)
    for _ in range(5000):
        a = "".join(rnd.choice("ab") for _ in range(rnd.randint(0, 24)))
        b = "".join(rnd.choice("ab") for _ in range(rnd.randint(0, 24)))
        i, j = rnd.randint(0, len(a)), rnd.randint(0, len(b))
        for backward in (False, True):
            assert _agree(a, i, b, j, backward) == walk(a, i, b, j, backward)


def test_an_official_prompt_is_located_inside_the_document():
    rnd = random.Random(1)
    doc = "".join(rnd.choice("abcdefgh ") for _ in range(20_000))
    r = router(doc, limit=10, dialect="official")
    start, end = r._span_inside("Count the a's in this text:\n" + doc[5_000:6_000] + "\nReply with a number.")
    assert (start, end) == (5_000, 6_000)


def test_a_chunk_whose_text_occurs_twice_gets_no_span():
    r = router("ERROR disk full\nok\nERROR disk full\n", limit=10)
    assert r._span("ERROR disk full") == (None, None)  # item 0 or item 2: never a guess
    assert r._span("ok\n") == (16, 19)


def test_calls_after_the_wall_clock_are_refused_before_any_work():
    import time

    r = router("some text", limit=10)
    r.deadline = time.perf_counter() - 1
    reply = r([SubCallRequest(chunk="some", instruction="i", index_in_batch=None)])[0]
    assert reply.error and "time for this question is used up" in reply.error
    assert r.budget.used == 0 and r.traj.caps_hit[0].cap == "wall_clock"


def test_concurrent_generations_cannot_each_spend_the_same_remainder():
    from rlm_rig.controller.subcalls import SharedTokens

    t = SharedTokens(used=900)
    a, b = t.reserve(512, 1000), t.reserve(512, 1000)  # two children asking at once
    assert a + b == 100
    t.settle(a, 80)
    t.settle(b, 0)
    assert t.used == 980 and t.reserved == 0
