"""Write the counting set as an interp-ready run folder: real worker answers, exact per-chunk gold.

WHY: interp reads runs as data (trajectories/*.json in the Trajectory layout, samples.jsonl, a
`--gold FILE`). A real eval over OOLONG has only a regex proxy for per-chunk gold; the counting set
has the exact k of every chunk. Writing it in the run layout lets every interp command (capture,
patch, probe, report) run on it unchanged, with interp never importing experiments.

One sample per passage, one sub_call each, whose `messages` are exactly the rig's worker messages.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from rlm_rig.records.trajectory import SampleRow, SubCallRecord, Trajectory, atomic_write_text
from rlm_rig.records.runlog import RunFolder

from .counting import CountingItem, count_messages, roll_mentions, score_count, validate_counts



@dataclass(frozen=True)
class WorkerAnswer:
    """What the worker returned for one sub_call (text None when the call failed)."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    # what the worker generated, token by token (schema 2): interp teacher-forces these ids and compares its
    # replayed logprobs with these. None when the backend returned none (the transformers worker: ids only).
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None


@contextmanager
def profile_worker(profile: str, log_dir: Path, *, url: str | None = None, ports: range | None = None,
                   served_name: str | None = None, overrides: Sequence[str] = ()) -> Iterator[Any]:
    """The profile's worker, started (or attached at ``url``) by the same `Rig` code as ``eval``.

    WHY: the study and its bench used to build their own ServerSpec with settings written outside any
    profile; now the profile is the one source of the dtype, window and flags, and a port in ``ports``
    keeps concurrent builders apart. Yields the Rig (``rig.worker`` has ``chat_many``); stops the server.
    """
    from rlm_rig.configs.load import load_config
    from rlm_rig.controller.rig import Rig
    from rlm_rig.worker.server import find_free_port

    sets = list(overrides)
    if served_name:
        sets.append(f"worker.served_name={served_name}")
    sets.append(f"worker.server.url={url}" if url else f"worker.server.port={find_free_port(ports=ports)}")
    rig = Rig(load_config(profile, sets), run_dir=log_dir)
    try:
        rig.start_worker()
        yield rig
    finally:
        rig.close()


def answers_from_results(results: Sequence[Any]) -> list[WorkerAnswer]:
    """`SyncWorker.chat_many` results (Completion or an exception) -> WorkerAnswer."""
    out = []
    for r in results:
        if isinstance(r, BaseException):
            out.append(WorkerAnswer(None, error=f"{type(r).__name__}: {r}"))
        else:
            extra = getattr(r, "extra", None) or {}
            out.append(WorkerAnswer(r.text, r.prompt_tokens, r.completion_tokens, r.latency_s,
                                    token_ids=extra.get("token_ids"), token_logprobs=extra.get("token_logprobs")))
    return out


def answer_items(worker: Any, items: Sequence[CountingItem], *, max_tokens: int) -> list[WorkerAnswer]:
    """One concurrent batch of sub_calls through anything with SyncWorker's `chat_many`."""
    batch = [count_messages(it.passage, it.instruction) for it in items]
    return answers_from_results(worker.chat_many(batch, max_tokens=max_tokens))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_counting_run(
    run_dir: str | Path,
    items: Sequence[CountingItem],
    answers: Sequence[WorkerAnswer],
    *,
    worker_model: str,
    worker_config: dict[str, Any],
    profile_yaml: str | Path | None = None,
    run_id: str | None = None,
) -> Path:
    """trajectories/<item id>.json, samples.jsonl (score = exact match), gold.jsonl, config.yaml.

    `worker_config` lands in every trajectory's `config.worker` (interp reads `max_tokens` from it to
    recognise cut-off answers); `profile_yaml` is copied to config.yaml so interp finds the profile."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    validate_counts(items)
    folder = RunFolder(run_dir)
    run_id = run_id or folder.path.name
    config = {"worker": dict(worker_config), "source": "rlm_rig.experiments.studies.counting_run"}
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    samples, gold = [], []
    for it, ans in zip(items, answers):
        sub = SubCallRecord(
            id=0, cell=0, depth=1, batch=0, chunk_start=0, chunk_end=len(it.passage), chunk_chars=len(it.passage),
            instruction=it.instruction, response=ans.text, error=ans.error, prompt_tokens=ans.prompt_tokens,
            completion_tokens=ans.completion_tokens, latency_s=ans.latency_s,
            messages=count_messages(it.passage, it.instruction), token_ids=ans.token_ids,
            token_logprobs=ans.token_logprobs,
        )
        traj = Trajectory(
            run_id=run_id, question=it.instruction, doc_chars=len(it.passage),
            doc_sha256=hashlib.sha256(it.passage.encode()).hexdigest(), config=config, config_hash=config_hash,
            models={"worker": worker_model}, versions={}, started_at=_now(), finished_at=_now(),
            sub_calls=[sub], final_answer=ans.text, stop_reason="final" if ans.error is None else "error",
            error=ans.error,
        )
        tpath = traj.save(folder.trajectory_path(it.id), fsync=False)
        sc = score_count(ans.text, it.k)
        samples.append(SampleRow(
            id=it.id, dataset="counting", method="worker", question=it.instruction, question_type=f"n{it.n_lines}",
            context_chars=len(it.passage), gold=str(it.k), answer=ans.text, score=sc["exact"], parsed=sc["pred"],
            lenient_score=sc["oolong"], n_sub_calls=1, trajectory=folder.relative(tpath), error=ans.error,
            extra={"k": it.k, "n_lines": it.n_lines, "roll_line_indices": it.roll_line_indices,
                   "gold_spans": [list(sp) for sp in roll_mentions(it.passage)]},
        ))
        gold.append({"sample": it.id, "sub_call": 0, "gold": it.k})
    folder.write_samples(samples)
    atomic_write_text(folder.gold_path, "".join(json.dumps(r) + "\n" for r in gold))
    if profile_yaml is not None:
        shutil.copyfile(profile_yaml, folder.config_path)
    return folder.path
