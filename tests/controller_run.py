"""A small run folder whose trajectories carry the controller's side: the chunk-count replay's turns
(configs/replays/chunk-count.yaml), the cells' printed outputs in the rig's feedback format
(`controller.prompts.cell_feedback`), and the sub_calls whose replies those outputs print.

Written through the records room like tests/demo_run.py; the per-chunk replies are drawn at random, so the
final answer is their sum, as the replay's code computes it. A short system prompt keeps the tiny model's
conversations short; the rig's own is longer but has the same place in the conversation.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import yaml

from rlm_rig.controller.prompts import cell_feedback
from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.trajectory import CellRecord, ControllerTurn, SampleRow, SubCallRecord, Trajectory

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You answer questions about a long text held in the REPL variable `prompt`. Use sub_call_batch to read it."


def replay_responses() -> list[str]:
    return yaml.safe_load((ROOT / "configs" / "replays" / "chunk-count.yaml").read_text())["responses"]


def _trajectory(s: int, rng: random.Random, n_chunks: int, controller: str, prompt_tokens: int) -> Trajectory:
    replies = [rng.randint(0, 6) for _ in range(n_chunks)]
    total = sum(replies)
    question = "Total number of rolls in this episode?"
    out0 = f"chars: {4000 + s} lines: {90 + s}\nepisodes: 1 first at [0]\nheader: [START OF EPISODE]"
    out1 = f"{n_chunks} chunks; per-chunk counts: {replies} ; total: {total}"
    r = replay_responses()
    msgs_in = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question: {question}"}],
               [{"role": "user", "content": cell_feedback(out0, truncated_from=None, notices=[], iteration=1,
                                                           max_iterations=6)}],
               [{"role": "user", "content": cell_feedback(out1, truncated_from=None, notices=[], iteration=2,
                                                           max_iterations=6)}]]
    turns = [ControllerTurn(index=i, messages_in=m, response=r[i], prompt_tokens=prompt_tokens)
             for i, m in enumerate(msgs_in)]
    cells = [CellRecord(index=0, turn=0, code="...", stdout=out0 + "\n"),
             CellRecord(index=1, turn=1, code="...", stdout=out1 + "\n", sub_calls=n_chunks)]
    subs = [SubCallRecord(id=i, cell=1, depth=1, batch=0, chunk_start=i * 100, chunk_end=i * 100 + 99, chunk_chars=99,
                          instruction="How many rolls? Reply with a single integer.", response=str(v))
            for i, v in enumerate(replies)]
    return Trajectory(run_id="controller-run", question=question, doc_chars=n_chunks * 100,
                      doc_sha256=hashlib.sha256(b"doc").hexdigest(), config={}, config_hash="t",
                      models={"controller": controller, "worker": "tiny"}, versions={},
                      started_at="2026-01-01T00:00:00Z", turns=turns, cells=cells, sub_calls=subs,
                      final_answer="\\boxed{" + str(total) + "}", stop_reason="final")


def make_controller_run(run_dir: str | Path, *, n_samples: int = 4, n_chunks: int = 4, seed: int = 0,
                        controller: str = "replay:chunk-count.yaml", prompt_tokens: int = 0,
                        turns: bool = True) -> Path:
    """Write trajectories/*.json and samples.jsonl; `turns=False` drops the controller turns (a bad input)."""
    rng = random.Random(seed)
    folder = RunFolder(run_dir)
    rows = []
    for s in range(n_samples):
        traj = _trajectory(s, rng, n_chunks, controller, prompt_tokens)
        if not turns:
            traj.turns = []
        sid = f"ctl-{s:03d}"
        path = traj.save(folder.trajectory_path(sid), fsync=False)
        rows.append(SampleRow(id=sid, dataset="demo", method="rlm", question=traj.question, context_chars=400,
                              gold=traj.final_answer or "", answer=traj.final_answer, score=1.0,
                              trajectory=folder.relative(path), n_turns=len(traj.turns)))
    folder.write_samples(rows)
    return folder.path
