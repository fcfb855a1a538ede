"""The transformers controller backend on the tiny model, full precision and 4-bit NF4 (bitsandbytes on CPU).

A random model writes no useful code: these tests check the mechanics (load, chat template, token
counts, the loop reaching a recorded stop), not answers.
"""
import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.loop import RLM, RunContext
from rlm_rig.controller.backends import TransformersLM
from rlm_rig.worker.sync import SyncWorker
from rlm_rig.worker.hf import TransformersWorker
from rlm_rig.worker.tokens import load_tokenizer


@pytest.fixture(scope="module")
def worker(tiny_model_path):
    w = SyncWorker(TransformersWorker(str(tiny_model_path), device="cpu", dtype="float32", max_tokens=4))
    yield w
    w.close()


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_transformers_controller_runs_the_loop(tiny_model_path, worker, quant):
    lm = TransformersLM(str(tiny_model_path), device="cpu", dtype="float32", quantization=quant)
    if quant == "nf4":
        import bitsandbytes as bnb

        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in lm.model.modules())
        assert n4 > 0, "expected bitsandbytes 4-bit linear layers"
    tok = load_tokenizer(str(tiny_model_path))
    cfg = load_config("cpu-tiny", ["rlm.max_iterations=2", "controller.max_new_tokens=12"])
    ctx = RunContext(cfg=cfg, lm=lm, worker=worker, count_tokens=lambda s: len(tok(s)["input_ids"]),
                     models={"controller": lm.name}, versions={})
    t = RLM(ctx).run("Matt: roll for initiative.\n" * 50, "How many rolls?")
    assert t.stop_reason in ("max_iterations", "final")
    assert len(t.turns) >= 2
    for turn in t.turns:
        assert turn.prompt_tokens > 0 and 0 < turn.completion_tokens <= 12
    assert t.error is None


def test_transformers_controller_samples_with_controller_sampling(tiny_model_path):
    """controller.sampling reaches generate(): a seed repeats a sampled turn, another seed changes it."""
    from rlm_rig.worker.settings import Sampling

    msgs = [{"role": "user", "content": "Write some code."}]

    def turn(seed):
        lm = TransformersLM(str(tiny_model_path), device="cpu", dtype="float32",
                            sampling=Sampling(temperature=2.0, seed=seed))
        try:
            return lm.generate(msgs, max_new_tokens=16).text
        finally:
            lm.close()

    a, b, c = turn(3), turn(3), turn(4)
    greedy = TransformersLM(str(tiny_model_path), device="cpu", dtype="float32")
    g = greedy.generate(msgs, max_new_tokens=16).text
    assert a == b != c and g not in (a, c)


def test_transformers_controller_takes_a_turns_sampling_per_call(tiny_model_path):
    """One backend shared by runs at several depths: a call's own sampling decides that turn (seeded under the
    lock, so concurrent turns with other seeds repeat), and the backend's default stays untouched."""
    from concurrent.futures import ThreadPoolExecutor

    from rlm_rig.worker.settings import Sampling

    msgs = [{"role": "user", "content": "Write some code."}]
    lm = TransformersLM(str(tiny_model_path), device="cpu", dtype="float32")  # controller.sampling: greedy

    def turn(seed=None):
        s = None if seed is None else Sampling(temperature=2.0, seed=seed)
        return lm.generate(msgs, max_new_tokens=16, sampling=s).text

    greedy, a, c = turn(), turn(3), turn(4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(turn, [3, 4, None, 3]))
    assert a != c and greedy not in (a, c) and together == [a, c, greedy, a] and turn() == greedy
