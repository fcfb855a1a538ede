"""One harness answering the benchmark's question, in its own process and its own environment.

Run by ``bench_peers.py`` (the rig under the rig's interpreter, rlms and DSPy under
``bench/peers/.venv``). Each example gets its own document (seeded), so no harness is helped by a
cache keyed on the document or the prompt. Prints one JSON line per example:
``{"example": i, "seconds": ..., "answer": ...}``.

    python bench/peers/harnesses.py rig|rlms|dspy --controller URL --worker URL --chars N --k K --examples 4
    python bench/peers/harnesses.py rlms|dspy --controller URL --worker URL --doc FILE --k K   (cold: one example)

Settings changed from each harness's defaults, and why (the program needs them; nothing is tuned):
- rig: ``rlm.chunk_budget_tokens`` raised (chunks reach 312K characters; the peers have no such cap);
  the cpu-tiny profile's worker.max_connections (4) and rlm.max_sub_calls (64) set back to the rig's
  defaults (8, 200), its worker.timeout_s (120) raised to 600 (the peers' clients wait 600 s; a real
  CPU worker queues a batch's requests); the cpu-tiny worker's tokenizer (the stub serves "worker").
- rlms: none (``environment="local"``, its default REPL; the worker as its depth-1 ``other_backends``).
- DSPy: ``cache=False`` on both LMs (its on-disk cache would answer a re-run without any request);
  ``max_llm_calls`` raised to the batch size when K > 50 (its default); its default REPL
  (``PythonInterpreter``: Deno + Pyodide) downloads Pyodide and Deno's std library at start-up, which a
  machine without open internet access cannot; DSPy's own ``LocalInterpreter`` (a local subprocess)
  is used instead unless ``PEERS_DSPY_INTERPRETER=default``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "How many chunks did you split the document into and count? [K={k}]"


def make_doc(chars: int, seed: int) -> str:
    """OOLONG-like transcript lines, ASCII, distinct per seed from the first line on."""
    rng = random.Random(seed)
    names = ["Travis", "Marisha", "Sam", "Liam", "Laura", "Ashley", "Taliesin", "Matt"]
    lines = [f"Document {seed}\n"]
    n = len(lines[0])
    i = 0
    while n < chars:
        line = f"Line {i}: {rng.choice(names)} rolls a d20 and gets {rng.randint(1, 20)}.\n"
        lines.append(line)
        n += len(line)
        i += 1
    return "".join(lines)[:chars]


def rig_runner(controller: str, worker: str, run_dir: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from rlm_rig.configs.load import load_config
    from rlm_rig.controller.rig import Rig

    cfg = load_config("cpu-tiny", rig_overrides(controller, worker))
    rig = Rig(cfg, run_dir=run_dir).__enter__()
    rig.kernels.prefetch = True  # several examples follow, as `rlm-rig eval` tells its rig
    return (lambda doc, q: rig.ask(doc, q).final_answer), rig.close


def rig_overrides(controller: str, worker: str) -> list[str]:
    return ["controller.backend=openai", "controller.model=stub/rig", "controller.served_name=rig",
            f"controller.server.url={controller}", f"worker.server.url={worker}", "worker.served_name=worker",
            "worker.max_connections=8", "worker.max_tokens=4", "worker.timeout_s=600", "rlm.max_sub_calls=200",
            "rlm.chunk_budget_tokens=10000000", "sandbox.cell_timeout_s=600"]


def rlms_runner(controller: str, worker: str, k: int):
    from rlm import RLM

    rlm = RLM(backend="openai", backend_kwargs={"model_name": "rlms", "base_url": controller, "api_key": "stub"},
              other_backends=["openai"],
              other_backend_kwargs=[{"model_name": "worker", "base_url": worker, "api_key": "stub"}])
    return (lambda doc, q: rlm.completion(doc, root_prompt=q).response), lambda: None


def dspy_runner(controller: str, worker: str, k: int):
    import dspy

    # cache=False: DSPy caches every LM call on disk across processes, so a re-run of the seeded
    # documents would be answered without reaching the controller or the worker at all.
    dspy.configure(lm=dspy.LM("openai/dspy", api_base=controller, api_key="stub", cache=False))
    sub = dspy.LM("openai/worker", api_base=worker, api_key="stub", cache=False)
    kw = {"max_llm_calls": k} if k > 50 else {}
    if os.environ.get("PEERS_DSPY_INTERPRETER", "local") == "local":
        # The default PythonInterpreter (Deno + Pyodide) fetches Pyodide and Deno's std library from the
        # network when it starts; where that is blocked it cannot start, so DSPy's own LocalInterpreter
        # (a persistent local subprocess) stands in. PEERS_DSPY_INTERPRETER=default keeps the default.
        from dspy.primitives.local_interpreter import LocalInterpreter

        kw["interpreter_factory"] = LocalInterpreter
    rlm = dspy.RLM("context, question -> answer", sub_lm=sub, **kw)
    return (lambda doc, q: rlm(context=doc, question=q).answer), lambda: None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("harness", choices=["rig", "rlms", "dspy"])
    ap.add_argument("--controller", required=True)
    ap.add_argument("--worker", required=True)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--doc", type=Path, help="cold run: one example on this file")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="untimed seconds between examples (the model time of a real example, in which a "
                         "harness may prepare the next one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        if args.harness == "rig":
            run, close = rig_runner(args.controller, args.worker, Path(tmp))
        elif args.harness == "rlms":
            run, close = rlms_runner(args.controller, args.worker, args.k)
        else:
            run, close = dspy_runner(args.controller, args.worker, args.k)
        question = QUESTION.format(k=args.k)
        docs = ([args.doc.read_text()] if args.doc else None)
        for i in range(1 if args.doc else args.examples):
            doc = docs[0] if docs else make_doc(args.chars, seed=i)
            time.sleep(args.pause if i else 0)
            t0 = time.perf_counter()
            answer = run(doc, question)
            dt = time.perf_counter() - t0
            del doc
            print(json.dumps({"example": i, "seconds": dt, "answer": str(answer)}), flush=True)
        close()


if __name__ == "__main__":
    main()
