"""Run an evaluation: examples -> method -> trajectory -> score -> samples.jsonl -> results.json.

Examples run concurrently (``eval.max_samples``) in threads that share one rig, so their sub_calls
share the worker client's concurrency limit. Each finished example is appended (fsync) before the
next is counted, which is what makes ``--resume`` exact.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from rlm_rig.configs.schema import RigConfig
from rlm_rig.records.trajectory import SampleRow, Trajectory
from rlm_rig.controller.rig import Rig
from rlm_rig.records.runlog import EvalSpec, RunFolder
from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.scoring import score_output, score_output_lenient
from rlm_rig.experiments.runs.examples import iter_examples, resolve_dataset
from rlm_rig.experiments.runs.methods import METHODS, run_method
from rlm_rig.experiments.runs.preflight import DiskFullError, check_inputs, disk_full_message, is_disk_full
from rlm_rig.worker.watch import WORKER_FAILURE, WorkerDeadError


def sub_call_failures(traj: Trajectory) -> dict[str, int]:
    """Failed sub_calls at every depth, by ``error_kind`` (a run that errored for a worker reason
    outside any sub_call counts as one ``worker`` failure)."""
    out: dict[str, int] = {}
    for t in traj.walk():
        for sc in t.sub_calls:
            if sc.error:
                k = sc.error_kind or "other"
                out[k] = out.get(k, 0) + 1
    if traj.error_kind == WORKER_FAILURE and not out.get(WORKER_FAILURE):
        out[WORKER_FAILURE] = 1
    return out


def sample_row(ex: Example, method: str, traj: Trajectory, traj_rel: str, context_tokens: int | None) -> SampleRow:
    """One scored row. A sample hit by a worker failure (a sub_call failed because the worker was down,
    at any depth) gets ``error="worker"``: it is not a valid answer, reports keep it out of the scores
    and ``--resume`` runs it again."""
    off = score_output(ex.dataset, traj.final_answer, ex.gold, answer_type=ex.answer_type)
    len_ = score_output_lenient(ex.dataset, traj.final_answer, ex.gold, answer_type=ex.answer_type)
    fails = sub_call_failures(traj)
    error = WORKER_FAILURE if fails.get(WORKER_FAILURE) else (traj.error.splitlines()[0] if traj.error else None)
    c_in, c_out = traj.controller_tokens()
    w_in, w_out = traj.worker_tokens()
    return SampleRow(
        id=ex.id,
        dataset=ex.dataset,
        method=method,
        question=ex.question,
        question_type=ex.question_type,
        episodes=ex.episodes,
        context_chars=ex.context_chars,
        context_tokens=context_tokens,
        gold=ex.gold,
        answer=traj.final_answer,
        score=off.score,
        parsed=off.parsed_json(),
        lenient_score=len_.score,
        stop_reason=traj.stop_reason,
        n_turns=len(traj.turns),
        n_cells=len(traj.cells),
        n_cell_errors=sum(1 for c in traj.cells if c.error or c.timed_out or c.restarted),
        n_sub_calls=len([s for s in traj.sub_calls if s.instruction != "(retrieved)"]),
        controller_tokens_in=c_in,
        controller_tokens_out=c_out,
        worker_tokens_in=w_in,
        worker_tokens_out=w_out,
        wall_s=traj.wall_s,
        model_s=traj.model_wall_s,
        trajectory=traj_rel,
        error=error,
        n_sub_call_failures=sum(fails.values()),
        sub_call_failures=fails,
        extra={**({"answer_type": ex.answer_type} if ex.answer_type else {}),
               # where the gold sits in the document (generated sets): the loss ledger's positions
               **({"gold_spans": ex.meta["gold_spans"]} if ex.meta.get("gold_spans") else {}),
               **({"run_error": traj.error.splitlines()[0]} if error == WORKER_FAILURE and traj.error else {})},
    )


class Progress:
    """Live figures for the rich display: done/total, mean score, worker tok/s, sub_calls in flight."""

    def __init__(self, total: int | None, rig: Rig):
        self.total = total
        self.rig = rig
        self.done = 0
        self.score_sum = 0.0
        self.worker_out_tokens = 0
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()

    def add(self, row: SampleRow) -> None:
        if row.error == WORKER_FAILURE:  # not a valid answer: neither done nor scored
            return
        with self.lock:
            self.done += 1
            self.score_sum += row.score
            self.worker_out_tokens += row.worker_tokens_out

    def line(self) -> str:
        mean = self.score_sum / self.done if self.done else float("nan")
        el = max(1e-6, time.perf_counter() - self.t0)
        in_flight = self.rig.worker.in_flight if self.rig.worker is not None else 0
        total = "?" if self.total is None else str(self.total)
        return (f"{self.done}/{total} done | mean score {mean:.3f} | worker {self.worker_out_tokens / el:.1f} tok/s "
                f"| sub_calls in flight {in_flight}")


def run_eval(
    cfg: RigConfig,
    spec: EvalSpec,
    run_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    check_inputs(spec, METHODS)  # a bad dataset, method or row schema fails before any server starts
    folder = RunFolder(run_dir)
    # an --out holding other work is refused before any server starts; the lock is held until the run ends
    held = folder.claim("eval", resume=resume)
    try:
        return _run(cfg, spec, folder, resume, show_progress)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(disk_full_message(folder.path, len(folder.rows()), e)) from e
        raise
    finally:
        held.release()


def _run(cfg: RigConfig, spec: EvalSpec, folder: RunFolder, resume: bool, show_progress: bool) -> dict[str, Any]:
    if resume:
        folder.repair()
    done = folder.done_ids() if resume else set()
    status = "failed"
    with Rig(cfg, run_dir=folder.path, controller_replay=spec.controller_replay, tape=spec.tape) as rig:
        flags = {"worker_url": rig.worker_url, "worker_server": dataclasses.asdict(cfg.worker.server)}
        if resume:
            folder.write_env(cfg, flags)
            prev = folder.read_results()
            folder.write_results({**(prev.model_dump() if prev else {}), "status": "running"})
        todo = [ex for ex in iter_examples(spec, rig.count_tokens) if ex.id not in done]
        rig.kernels.prefetch = len(todo) > 1  # a spare kernel ready for each next example
        if not resume:
            from rlm_rig.experiments.datasets.views import model_views

            spec.model_views = model_views(resolve_dataset(spec)[0], spec.method,
                                           todo[0].instructions if todo else None)
            folder.create(cfg, spec, server_flags=flags)
        progress = Progress(len(todo) + len(done), rig)
        progress.done = len(done)

        def one(ex: Example) -> SampleRow:
            tpath = folder.trajectory_path(ex.id)
            if rig.worker_dead:  # do not start examples on a dead worker
                raise WorkerDeadError(_dead_line(rig, folder))
            traj = run_method(spec.method, rig, ex.context, ex.question, run_id=ex.id, save_to=tpath,
                              instructions=ex.instructions)
            n_tokens = rig.doc_tokens(ex.context)  # cached by document hash: once per window, not per question
            row = sample_row(ex, spec.method, traj, str(tpath.relative_to(folder.path)), n_tokens)
            folder.append(row)
            progress.add(row)
            if rig.worker_dead:
                raise WorkerDeadError(_dead_line(rig, folder))
            return row

        try:
            _drive(todo, one, cfg.eval.max_samples, progress, show_progress)
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except WorkerDeadError:
            status = "worker_dead"
            raise
        finally:
            summary = summarize(folder)
            events = list(rig.worker.events) if rig.worker is not None else []
            before = folder.read_results() if resume else None
            prev = list(getattr(before, "worker_events", None) or [])
            folder.write_results({**summary, "status": status, "method": spec.method, "dataset": spec.dataset,
                                  "worker_events": prev + events})
    return {**summary, "status": status, "run_dir": str(folder.path)}


def _dead_line(rig: Rig, folder: RunFolder) -> str:
    return (f"the worker cannot be brought back ({rig.worker_dead}); samples it failed are marked "
            f"error=worker and not scored; continue with: rlm-rig eval --resume {folder.path}")


def _drive(todo: list[Example], one: Any, concurrency: int, progress: Progress, show: bool) -> None:
    from rich.live import Live
    from rich.text import Text

    live = Live(Text(progress.line()), refresh_per_second=2, transient=False) if show else None
    if live:
        live.start()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as ex:
            pending: set[Future[Any]] = set()
            it = iter(todo)
            for item in it:
                pending.add(ex.submit(one, item))
                if len(pending) >= concurrency:
                    break
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()  # a harness bug surfaces here; model/worker failures are in the row
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(ex.submit(one, nxt))
                if live:
                    live.update(Text(progress.line()))
    finally:
        if live:
            live.update(Text(progress.line()))
            live.stop()
            live.console.print()


def summarize(folder: RunFolder) -> dict[str, Any]:
    rows = folder.rows()
    try:
        from rlm_rig.experiments.analysis.report import summarize_run

        return summarize_run(folder.path)
    except ImportError:
        n = len(rows)
        return {"n": n, "mean_score": (sum(r["score"] for r in rows) / n) if n else None}


def resume_eval(run_dir: str | Path, *, show_progress: bool = True) -> dict[str, Any]:
    from rlm_rig.configs.load import validate_config

    folder = RunFolder(run_dir)
    cfg_data, spec = folder.load_spec()
    cfg = validate_config(cfg_data, str(folder.config_path))
    return run_eval(cfg, spec, folder.path, resume=True, show_progress=show_progress)


def merge_runs(run_dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Shards -> one run: rows deduplicated by id, trajectories copied, configs checked equal."""
    import shutil

    import yaml

    from rlm_rig.records.trajectory import append_jsonl

    folders = [RunFolder(d) for d in run_dirs]
    out = RunFolder(out_dir)
    hashes = set()
    for f in folders:
        cfg_data, _ = f.load_spec()
        hashes.add(yaml.safe_dump(cfg_data, sort_keys=True))
    if len(hashes) > 1:
        raise ValueError("cannot merge runs with different configs")
    for f in folders:
        if out.path.resolve() == f.path.resolve() or out.path.resolve() in f.path.resolve().parents:
            raise ValueError(f"--out {out.path} is (or holds) the shard {f.path}; merge into a new folder")
    held = out.claim("merge")
    try:
        out.copy_header(folders[0])
        seen: set[str] = set()
        for f in folders:
            for row in f.rows():
                if row["id"] in seen:
                    continue
                seen.add(row["id"])
                if row.get("trajectory") and (f.path / row["trajectory"]).exists():
                    dest = out.path / row["trajectory"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f.path / row["trajectory"], dest)
                append_jsonl(out.samples_path, row)
        spec = out.read_spec()
        if spec is not None:
            out.write_spec(spec.model_copy(update={"shard": None}))
        statuses = [r.status if (r := f.read_results()) else None for f in folders]
        status = "complete" if all(st == "complete" for st in statuses) else "partial"
        summary = summarize(out)
        out.write_results({**summary, "status": status, "merged_from": [str(f.path) for f in folders],
                           "shard_status": statuses})
    finally:
        held.release()
    return {**summary, "status": status}
