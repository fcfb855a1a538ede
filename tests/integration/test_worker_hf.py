"""TransformersWorker (in-process) on the tiny model, its agreement with vLLM, and token counting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rlm_rig.worker.client import Completion
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.hf import TransformersWorker
from rlm_rig.worker.tokens import count_chat_tokens, count_tokens, load_tokenizer

PROMPTS = [
    "How many natural twenties were rolled?",
    "ORSIN: I rolled a 17. DM: That hits.",
    "def count(x):\n    return len(x)",
    "Summarise: the dragon breathes frost on the party.",
    "List every number: 3, 14, 15, 92, 65",
    "Ünïcödé and emoji 🎲 in one line",
]


@pytest.fixture(scope="module")
def hf(tiny_model_path: Path) -> TransformersWorker:
    return TransformersWorker(tiny_model_path, dtype="float32", max_tokens=16)


def _msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_chat_counts_tokens_like_the_server_does(hf: TransformersWorker, tiny_model_path: Path) -> None:
    c = asyncio.run(hf.chat(_msgs(PROMPTS[0]), max_tokens=10))
    assert isinstance(c, Completion) and c.text
    assert c.prompt_tokens == count_chat_tokens(_msgs(PROMPTS[0]), str(tiny_model_path))
    assert c.completion_tokens == 10 and c.finish_reason == "length"
    assert len(c.extra["token_ids"]) == 10
    again = asyncio.run(hf.chat(_msgs(PROMPTS[0]), max_tokens=10))
    assert again.text == c.text  # greedy


def test_stop_strings_are_cut_like_openai(hf: TransformersWorker) -> None:
    full = asyncio.run(hf.chat(_msgs(PROMPTS[1]), max_tokens=16))
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip(), f"degenerate output {full.text!r}"
    cut = asyncio.run(hf.chat(_msgs(PROMPTS[1]), max_tokens=16, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]


def test_generation_runs_off_the_event_loop(hf: TransformersWorker) -> None:
    """While the model generates in its thread, other coroutines keep running."""

    async def go() -> tuple[int, list[Completion]]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        res = await asyncio.gather(hf.chat(_msgs(PROMPTS[2]), max_tokens=16), hf.chat(_msgs(PROMPTS[3]), max_tokens=16))
        done.set()
        await t
        return ticks, list(res)

    ticks, res = asyncio.run(go())
    assert ticks > 10 and all(r.completion_tokens == 16 for r in res)
    assert hf.in_flight == 0


def test_sync_facade_over_transformers(hf: TransformersWorker) -> None:
    with SyncWorker(hf) as sync:
        out = sync.chat_many([_msgs(p) for p in PROMPTS[:3]], max_tokens=4)
    assert [type(o) for o in out] == [Completion] * 3


@pytest.mark.vllm
def test_greedy_agrees_with_vllm(hf: TransformersWorker, worker_client: SyncWorker) -> None:
    """Same weights, same fp32, same template: greedy text should match token for token."""
    batch = [_msgs(p) for p in PROMPTS]
    served = worker_client.chat_many(batch, max_tokens=24)
    with SyncWorker(hf) as sync:
        local = sync.chat_many(batch, max_tokens=24)
    agree = [s.text == h.text for s, h in zip(served, local)]
    print(f"\nvLLM vs transformers greedy agreement: {sum(agree)}/{len(agree)}")
    for s, h in zip(served, local):
        assert s.prompt_tokens == h.prompt_tokens
        if s.text == h.text:
            assert s.completion_tokens == h.completion_tokens and s.finish_reason == h.finish_reason
    assert sum(agree) >= len(agree) - 1, [(s.text, h.text) for s, h in zip(served, local)]


def test_token_helpers(tiny_model_path: Path) -> None:
    tok = load_tokenizer(str(tiny_model_path))
    assert load_tokenizer(tiny_model_path) is tok  # cached per path
    assert count_tokens("I rolled 20", tok) == count_tokens("I rolled 20", str(tiny_model_path)) == len(
        tok("I rolled 20", add_special_tokens=False)["input_ids"]
    )
    assert count_tokens("", tok) == 0
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer("/nonexistent/tokenizer/dir")
    with pytest.raises(TypeError):
        count_tokens(None, tok)  # type: ignore[arg-type]


def test_bad_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransformersWorker(tmp_path / "nope")
    with pytest.raises(ValueError, match="dtype"):
        TransformersWorker(tmp_path, dtype="int3")
