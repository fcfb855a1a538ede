"""A small, realistic run folder for tests and benches: trajectories whose sub_calls count D&D rolls.

Written through the records room (`Trajectory`, `SampleRow`, `RunFolder`), as schema-1 records (no
recorded token ids: interp falls back to greedy replay on them, which the tests exercise), with the
worker messages in the rig's own worker template, so everything downstream reads it like a run.
The transcript lines are invented here (no dataset text). Moved from interp/demo.py: only tests and
benches write it.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from rlm_rig.interp.data.rolls import count_roll_lines
from rlm_rig.records.runlog import RunFolder
from rlm_rig.records.trajectory import CellRecord, ControllerTurn, SampleRow, SubCallRecord, Trajectory

DEMO_SCHEMA = 1  # what this folder claims: schema-1 records carry no token ids

_SPEAKERS = ["Matt", "Laura", "Travis", "Marisha", "Taliesin", "Liam", "Sam", "Ashley"]
_ROLL_LINES = [
    "I rolled a {n}.", "That's a natural {n}!", "Roll for initiative.", "Can I roll perception?",
    "I'll roll the d20 for that.", "Rolled a {n}, plus four.", "Natural 20!", "Make a dexterity roll.",
]
_PLAIN_LINES = [
    "We walk into the tavern and look around.", "He said the door was locked from the inside.",
    "I go over to the bar and ask for an ale.", "She took the map and put it in her bag.",
    "They had a long night on the road.", "You see a figure in a grey cloak by the fire.",
    "I want to talk to the innkeeper about the rumors.", "Okay, we get our things and go upstairs.",
    "The guard made a face and went back inside.", "What did the old man say about the mine?",
]
_INSTRUCTIONS = [
    "Count the lines in this text where someone rolls dice. Answer with a single number.",
    "How many dice rolls are mentioned in this text? Answer with a number.",
]
WORKER_SYSTEM = "You are a careful reader. Answer the instruction using only the given text. Be brief."


def demo_chunk(rng: random.Random, n_lines: int) -> str:
    lines = []
    for _ in range(n_lines):
        sp = rng.choice(_SPEAKERS)
        pool = _ROLL_LINES if rng.random() < 0.35 else _PLAIN_LINES
        lines.append(f"{sp}: " + rng.choice(pool).format(n=rng.randint(2, 19)))
    return "\n".join(lines)


def worker_messages(chunk: str, instruction: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": WORKER_SYSTEM},
        {"role": "user", "content": f"Text:\n{chunk}\n\nInstruction: {instruction}"},
    ]


def make_demo_run(
    run_dir: str | Path, *, n_samples: int = 3, chunks_per_sample: int = 3, lines_per_chunk: int = 8, seed: int = 0,
    wrong_every: int = 3,
) -> Path:
    """Write trajectories/*.json and samples.jsonl. Every `wrong_every`-th sub_call answer is off by
    one and every other sample's final answer is wrong, so selections have both kinds."""
    rng = random.Random(seed)
    folder = RunFolder(run_dir)
    samples = []
    k = 0
    for s in range(n_samples):
        chunks = [demo_chunk(rng, lines_per_chunk) for _ in range(chunks_per_sample)]
        doc = "\n".join(chunks)
        instr = _INSTRUCTIONS[s % len(_INSTRUCTIONS)]
        subs, pos, answers = [], 0, []
        for i, ch in enumerate(chunks):
            gold = count_roll_lines(ch)
            ans = gold + 1 if (k % wrong_every == wrong_every - 1) else gold
            k += 1
            answers.append(ans)
            subs.append(SubCallRecord(
                id=i, cell=0, depth=1, batch=0, chunk_start=pos, chunk_end=pos + len(ch), chunk_chars=len(ch),
                chunk_tokens=None, instruction=instr, response=f"There are {ans} rolls.", error=None,
                prompt_tokens=0, completion_tokens=0, latency_s=0.0, nested_trajectory=None,
                messages=worker_messages(ch, instr),
            ))
            pos += len(ch) + 1
        gold_total = sum(count_roll_lines(c) for c in chunks)
        final = str(sum(answers)) if s % 2 == 0 else str(sum(answers) + 2)
        sid = f"demo-{s:03d}"
        traj = Trajectory(
            schema_version=DEMO_SCHEMA, run_id="demo-run", question="How many rolls are there in this transcript?",
            doc_chars=len(doc), doc_sha256=hashlib.sha256(doc.encode()).hexdigest(), config={}, config_hash="demo",
            models={"worker": "tiny"}, versions={}, depth=0, started_at="2026-01-01T00:00:00Z",
            finished_at="2026-01-01T00:00:01Z", wall_s=1.0, turns=[], cells=[], sub_calls=subs, caps_hit=[],
            final_answer=final, stop_reason="final", error=None,
        )
        tpath = traj.save(folder.trajectory_path(sid), fsync=False)
        samples.append(SampleRow(
            schema_version=DEMO_SCHEMA, id=sid, dataset="demo", method="rlm", question=traj.question,
            question_type="singledoc_rolls" if s % 2 == 0 else "multidoc_rolls", context_chars=len(doc),
            gold=str(gold_total), answer=final, score=1.0 if final == str(gold_total) else 0.0,
            trajectory=folder.relative(tpath), n_sub_calls=len(subs),
        ))
    folder.write_samples(samples)
    return folder.path


def rlm_trajectory(run_id: str, depth: int = 0, nested: Trajectory | None = None) -> Trajectory:
    """A two-turn run in the official dialect's shape (a worker call, a nested run and a failed call when
    ``nested`` is given), for the rlm-jsonl export/import tests."""
    msgs = [{"role": "user", "content": "Text:\nabc\n\nInstruction: count"}]
    subs = [SubCallRecord(id=0, cell=0, depth=depth + 1, chunk_chars=3, instruction="count", response="3",
                          prompt_tokens=12, completion_tokens=1, latency_s=0.25, messages=msgs)]
    if nested is not None:
        subs.append(SubCallRecord(id=1, cell=1, depth=depth + 1, chunk_chars=5, instruction="go deeper",
                                  response=nested.final_answer, latency_s=1.5, nested_trajectory=nested,
                                  messages=[{"role": "user", "content": "go deeper"}]))
        subs.append(SubCallRecord(id=2, cell=1, depth=depth + 1, chunk_chars=4, instruction="fails", error="boom",
                                  error_kind="worker", messages=[{"role": "user", "content": "fails"}]))
    turns = [ControllerTurn(index=0, messages_in=[{"role": "system", "content": "You write code."}, {"role": "user", "content": "Q?"}],
                            response="```repl\nx = llm_query('count')\n```", latency_s=0.5),
             ControllerTurn(index=1, messages_in=[{"role": "user", "content": "out: 3"}],
                            response="```repl\nanswer['content'] = x\nanswer['ready'] = True\n```", latency_s=0.25)]
    cells = [CellRecord(index=0, turn=0, code="x = llm_query('count')", stdout="", duration_s=0.5, sub_calls=1),
             CellRecord(index=1, turn=1, code="answer['content'] = x\nanswer['ready'] = True", stdout="done\n",
                        stderr="warn", error="ValueError: no", notices=["cell output cut"], duration_s=0.125,
                        sub_calls=2 if nested else 0, final_answer="3")]
    return Trajectory(run_id=run_id, question="Q?", doc_chars=100, doc_sha256="0" * 64,
                      config={"controller": {"backend": "replay"}, "rlm": {"max_depth": 2, "max_iterations": 5}},
                      config_hash="h", models={"controller": "ctrl", "worker": "wk"}, versions={}, depth=depth,
                      started_at="2026-01-02T03:04:05", turns=turns, cells=cells, sub_calls=subs,
                      final_answer="3", stop_reason="final")
