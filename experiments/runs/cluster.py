"""`rlm-rig eval --ray ADDRESS|local --replicas N`: one eval spread over rig replicas that run as Ray actors.

The driver (this module) is the only writer of the run folder (RunFolder: trajectory, then its sample row, fsync),
so a driver killed at any moment leaves a run that ``--resume`` finishes, with any number of replicas. It streams
examples from the dataset registry and hands them out pull-style: each replica has ``eval.max_samples`` slots and
takes the next example when one frees. A replica that dies mid-example (actor killed, node lost) has its in-flight
examples given to the others, up to ``cluster.max_example_retries`` times; then the example is written as
``error: replica`` (never scored; ``--resume`` redoes it). Ctrl-C stops every replica (each stops its servers and
sandboxes), then kills the actors; a cluster this driver started (``local``) goes down with it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlm_rig.configs.schema import RigConfig
from rlm_rig.records.trajectory import SampleRow, atomic_write_text
from rlm_rig.records.runlog import EvalSpec, RunFolder
from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.runs.examples import iter_examples, resolve_dataset
from rlm_rig.experiments.runs.methods import METHODS
from rlm_rig.experiments.runs.preflight import DiskFullError, check_inputs, disk_full_message, is_disk_full
from rlm_rig.interp.progress import LiveLine
from rich.text import Text

_LOCAL_TMP: list[str] = []  # temp dirs of local clusters this process started (removed after ray.shutdown)
REPLICA_FAILURE = "replica"  # the row error of an example whose replicas kept dying (records.runlog.REDO_ERRORS)


class ClusterError(Exception):
    """An expected cluster failure (unreachable address, a replica no node can hold, every replica dead):
    the CLI prints it as one line and exits 2."""


@dataclass
class ReplicaState:
    """The driver's view of one replica: its actor, its slots, what it did (for the progress lines and the run log)."""

    id: int
    actor: Any
    start_ref: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    status: str = "starting"  # starting | running | dead | retired | failed | stopped
    reason: str = ""
    in_flight: dict[Any, Example] = field(default_factory=dict)
    done: int = 0
    score_sum: float = 0.0
    requeued: int = 0
    t_start: float = field(default_factory=time.perf_counter)
    t_ready: float | None = None

    @property
    def ready(self) -> bool:
        return self.status == "running"

    def line(self) -> str:
        host = self.info.get("host", "?")
        mean = f"{self.score_sum / self.done:.3f}" if self.done else "-"
        el = time.perf_counter() - (self.t_ready or self.t_start)
        rate = f"{3600 * self.done / el:.0f}/h" if self.done and el > 0 else "-"
        tail = f" ({self.reason})" if self.reason else ""
        return (f"replica {self.id} @{host} [{self.status}]{tail}: {self.done} done, {len(self.in_flight)} running, "
                f"mean score {mean}, {rate}")


# -- connecting -----------------------------------------------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int] | None:
    """host:port of a running cluster's GCS, or None for ``local`` / ``auto`` (no address to check)."""
    if address in ("local", "auto"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r} must be local, auto, or HOST:PORT of a running Ray head "
                           "(ray start --head prints it)")
    return host, int(port)


def check_reachable(address: str) -> None:
    """Before anything is claimed or started: Ray is installed and a head answers at the address.
    WHY a plain TCP connect: ray.init keeps retrying an unreachable GCS for a minute before it fails."""
    hp = parse_address(address)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ClusterError("--ray needs the `cluster` extra: pip install 'rlm-rig[cluster]' (ray)") from None
    if hp is not None:
        try:
            socket.create_connection(hp, timeout=5).close()
        except OSError as e:
            raise ClusterError(f"--ray {address}: no Ray head answers there ({e.strerror or e}); start one with "
                               "`ray start --head` or use --ray local") from None


def connect(address: str, *, local_cpus: float) -> bool:
    """Join the cluster (or start a local one sized to hold the replicas). True when this driver started it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == "local":
        # its token-auth notice is about a cluster nobody else joins; one less line between the user and progress
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        # a short temp dir: Ray's unix sockets live under it and their paths must stay under ~107 bytes
        tmp = tempfile.mkdtemp(prefix="rlmray-", dir="/tmp")
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(local_cpus + 0.999)), include_dashboard=False,
                 _temp_dir=tmp, log_to_driver=False, configure_logging=False)
        _LOCAL_TMP.append(tmp)
        return True
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError) as e:
        raise ClusterError(f"--ray {address}: cannot join the cluster: {str(e).splitlines()[0]}") from None
    return False


def disconnect(started_local: bool) -> None:
    """Leave the cluster; a local one this process started goes down (and its temp dir with it)."""
    import ray

    if not started_local:
        ray.shutdown()
        return
    ray.shutdown()
    for tmp in _LOCAL_TMP:
        shutil.rmtree(tmp, ignore_errors=True)
    _LOCAL_TMP.clear()


def check_fits(cfg: RigConfig, address: str) -> int:
    """Refuse a replica that no node can hold; return how many fit in the cluster now (the rest wait for nodes)."""
    import ray

    c = cfg.cluster
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        raise ClusterError(f"--ray {address}: the cluster has no live node")
    big_gpu = max(n.get("GPU", 0.0) for n in nodes)
    big_cpu = max(n.get("CPU", 0.0) for n in nodes)
    if c.gpus > big_gpu:
        raise ClusterError(f"profile {cfg.name!r}: a replica needs {c.gpus} GPU(s) on one node (cluster.gpus) but the "
                           f"largest node of the cluster at {address} has {big_gpu:g}")
    if c.cpus > big_cpu:
        raise ClusterError(f"profile {cfg.name!r}: a replica needs {c.cpus:g} CPU(s) on one node (cluster.cpus) but "
                           f"the largest node of the cluster at {address} has {big_cpu:g}")
    fit = 0
    for n in nodes:
        k = int(n.get("CPU", 0.0) // c.cpus)
        if c.gpus:
            k = min(k, int(n.get("GPU", 0.0) // c.gpus))
        fit += k
    return fit


def spawn(cfg: RigConfig, spec: EvalSpec, replica_id: int) -> ReplicaState:
    """One replica actor with the profile's resources; GPUs as one STRICT_PACK bundle (one node). Its servers
    start in ``start()``, whose result the driver waits for alongside the examples."""
    import ray

    from rlm_rig.experiments.runs.replica import RigReplica

    c = cfg.cluster
    opts: dict[str, Any] = dict(num_cpus=c.cpus, num_gpus=c.gpus, max_concurrency=cfg.eval.max_samples + 2,
                                max_restarts=0, max_task_retries=0, name=None)
    if c.gpus:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = placement_group([{"CPU": c.cpus, "GPU": float(c.gpus)}], strategy="STRICT_PACK")
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                       placement_group_bundle_index=0)
    opts.pop("name")
    actor = ray.remote(RigReplica).options(**opts).remote(replica_id, cfg.model_dump(mode="json"),
                                                          spec.model_dump(mode="json"))
    st = ReplicaState(replica_id, actor)
    st.start_ref = actor.start.remote()
    return st


# -- the driver -----------------------------------------------------------------------------------------------------
def run_cluster_eval(cfg: RigConfig, spec: EvalSpec, run_dir: str | Path, *, address: str, replicas: int,
                     resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    if replicas < 1:
        raise ClusterError(f"--replicas {replicas}: need at least 1")
    check_inputs(spec, METHODS)  # a bad dataset, method or row schema fails before any cluster or server
    check_reachable(address)
    folder = RunFolder(run_dir)
    if not resume:
        folder.claim("eval")
    try:
        return _Driver(cfg, spec, folder, address, replicas, resume, show_progress).run()
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(disk_full_message(folder.path, len(folder.rows()), e)) from e
        raise


class _Driver:
    def __init__(self, cfg: RigConfig, spec: EvalSpec, folder: RunFolder, address: str, n: int, resume: bool,
                 show: bool):
        self.cfg, self.spec, self.folder, self.address, self.n = cfg, spec, folder, address, n
        self.resume, self.show = resume, show
        self.replicas: list[ReplicaState] = []
        self.retry: deque[Example] = deque()
        self.attempts: Counter[str] = Counter()
        self.stream: Iterator[Example] | None = None
        self.stream_done = False
        self.written = 0
        self.t0 = time.perf_counter()
        self.t_last_row: float | None = None

    def log(self, line: str) -> None:
        """One line into the run log (RUN/logs/rig.log), as the single-box rig writes it."""
        path = self.folder.rig_log_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line.rstrip()}\n")

    # -- examples ---------------------------------------------------------------------------------------------------
    def _examples(self) -> Iterator[Example]:
        """The spec's examples not yet done, streamed (the driver never holds the dataset)."""
        done = self.folder.done_ids() if self.resume else set()
        for ex in iter_examples(self.spec, self._token_counter()):
            if ex.id not in done:
                yield ex

    def _token_counter(self) -> Any:
        """The worker's tokenizer, loaded on the driver only when a filter or a generator counts tokens."""
        if self.spec.max_context_tokens is None and self.spec.loader_options.get("unit") != "tokens":
            return None
        from rlm_rig.controller.doctokens import counter_for
        from rlm_rig.worker.models import resolve_model
        from rlm_rig.worker.tokens import load_tokenizer

        return counter_for(load_tokenizer(resolve_model(self.cfg.worker.model)))

    def next_example(self) -> Example | None:
        """A requeued example first (a dead replica's), else the next of the stream; None when neither has one."""
        if self.retry:
            return self.retry.popleft()
        assert self.stream is not None
        ex = None if self.stream_done else next(self.stream, None)
        self.stream_done = ex is None
        return ex

    # -- run --------------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started_local = connect(self.address, local_cpus=self.n * self.cfg.cluster.cpus)
        status, created = "failed", False
        try:
            fit = check_fits(self.cfg, self.address)
            if self.resume:
                self.folder.repair()  # a torn last row (a driver killed mid-append) before the done ids are read
            self.stream = self._examples()
            first = next(self.stream, None)
            self._write_start(first)
            created = True
            if first is not None:
                self.retry.append(first)
                if fit < self.n:
                    self.log(f"cluster: {self.n} replicas asked, {fit} fit on the live nodes now; the rest wait")
                self.log(f"cluster: {self.n} replica(s) of profile {self.cfg.name} on {self.address} "
                         f"({self.cfg.cluster.cpus:g} CPU, {self.cfg.cluster.gpus} GPU each)")
                self.replicas = [spawn(self.cfg, self.spec, i) for i in range(self.n)]
                status = self._loop()
            else:
                status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except ReplicasDeadError:
            status = "replicas_dead"
            raise
        finally:
            self._stop_replicas()
            result = self._finish(status) if created else {}
            disconnect(started_local)
        return result

    def _write_start(self, first: Example | None) -> None:
        flags = {"ray": self.address, "replicas": self.n, "cluster": self.cfg.cluster.model_dump(mode="json"),
                 "worker_server": dataclasses.asdict(self.cfg.worker.server)}
        if self.resume:
            self.folder.write_env(self.cfg, flags)
            prev = self.folder.read_results()
            self.folder.write_results({**(prev.model_dump() if prev else {}), "status": "running"})
            return
        from rlm_rig.experiments.datasets.views import model_views

        self.spec.model_views = model_views(resolve_dataset(self.spec)[0], self.spec.method,
                                            first.instructions if first else None)
        self.folder.create(self.cfg, self.spec, server_flags=flags)

    def _loop(self) -> str:
        import ray

        conc = self.cfg.eval.max_samples
        with ReplicaLines(self.show) as live:
            while True:
                for r in self.replicas:  # pull: every free slot of a running replica takes the next example
                    while r.ready and len(r.in_flight) < conc:
                        ex = self.next_example()
                        if ex is None:
                            break
                        r.in_flight[r.actor.run.remote(ex)] = ex
                in_flight = sum(len(r.in_flight) for r in self.replicas)
                if self.stream_done and not self.retry and not in_flight:
                    return "complete"
                starting = [r for r in self.replicas if r.status == "starting"]
                if not any(r.ready for r in self.replicas) and not starting:
                    reasons = "; ".join(f"replica {r.id}: {r.reason}" for r in self.replicas)
                    raise ReplicasDeadError(f"every replica is gone and examples remain ({reasons}); samples finished "
                                            f"so far are kept: continue with rlm-rig eval --resume {self.folder.path} "
                                            f"--ray {self.address}")
                refs = [r.start_ref for r in starting] + [ref for r in self.replicas for ref in r.in_flight]
                ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
                for ref in ready:
                    self._settle(ref)
                self._check_start_timeouts()
                live.lines = [self._total_line()] + [r.line() for r in self.replicas]

    def _settle(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        for r in self.replicas:
            if r.status == "starting" and ref == r.start_ref:
                try:
                    r.info = ray.get(ref)
                    r.status, r.t_ready = "running", time.perf_counter()
                    self.log(f"replica {r.id} started: host={r.info['host']} node={r.info['node']} "
                             f"pid={r.info['pid']} "
                             f"gpus={r.info['gpus']} resources={r.info['resources']} in {r.info['start_s']} s "
                             f"(its logs come to RUN/logs/replica{r.id}-* when it stops)")
                except (RayActorError, RayTaskError) as e:
                    self._lose(r, "failed", _first_line(e))
                return
            if ref in r.in_flight:
                ex = r.in_flight.pop(ref)
                try:
                    res = ray.get(ref)
                except RayActorError as e:
                    r.in_flight[ref] = ex  # handed back with the rest of its in-flight examples
                    self._lose(r, "dead", _first_line(e))
                    return
                except RayTaskError as e:  # raised inside the replica, which lives on: retry the example elsewhere
                    self.log(f"replica {r.id} raised on example {ex.id}:\n{e}")
                    self._retry_or_fail(ex, r, f"raised {_first_line(e)}")
                    return
                if "retired" in res:
                    r.in_flight[ref] = ex
                    self._lose(r, "retired", res["retired"])
                    return
                self._write(r, res)
                return

    def _lose(self, r: ReplicaState, status: str, reason: str) -> None:
        """A replica that died, failed to start or lost its worker: its in-flight examples go to the others."""
        import ray

        r.status, r.reason = status, reason
        self.log(f"replica {r.id} {status}: {reason}")
        for ex in r.in_flight.values():
            self._retry_or_fail(ex, r, status)
        r.in_flight.clear()
        try:
            ray.kill(r.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def _retry_or_fail(self, ex: Example, r: ReplicaState, why: str) -> None:
        """Give the example to another replica (first in line), or after the retry limit write it as error: replica."""
        self.attempts[ex.id] += 1
        if self.attempts[ex.id] <= self.cfg.cluster.max_example_retries:
            r.requeued += 1
            self.retry.appendleft(ex)
            self.log(f"example {ex.id}: requeued after replica {r.id} {why} "
                     f"(try {self.attempts[ex.id] + 1} of {self.cfg.cluster.max_example_retries + 1})")
        else:
            self._write_replica_error(ex, r, why)

    def _check_start_timeouts(self) -> None:
        limit = self.cfg.cluster.start_timeout_s
        for r in self.replicas:
            if r.status == "starting" and time.perf_counter() - r.t_start > limit:
                self._lose(r, "failed", f"not started within cluster.start_timeout_s={limit:g} s (no node free?)")

    def _write(self, r: ReplicaState, res: dict[str, Any]) -> None:
        """Trajectory first, then its row (fsync): a kill between the two reruns the example on --resume."""
        row = SampleRow.model_validate(res["row"])
        tpath = self.folder.trajectory_path(row.id)
        tpath.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(tpath, res["trajectory"])
        row.trajectory = str(tpath.relative_to(self.folder.path))
        self.folder.append(row)
        self.written += 1
        self.t_last_row = time.perf_counter()
        if row.error is None or row.error not in ("worker", REPLICA_FAILURE):
            r.done += 1
            r.score_sum += row.score

    def _write_replica_error(self, ex: Example, r: ReplicaState, why: str) -> None:
        tries = self.attempts[ex.id]
        self.log(f"example {ex.id}: error: replica after {tries} replica failure(s); --resume redoes it")
        self.folder.append(SampleRow(
            id=ex.id, dataset=ex.dataset, method=self.spec.method, question=ex.question, question_type=ex.question_type,
            episodes=ex.episodes, context_chars=ex.context_chars, gold=ex.gold, answer=None, score=0.0,
            error=REPLICA_FAILURE, replica={"id": r.id, "host": r.info.get("host", "")},
            extra={"replica_failures": tries, "last_failure": why if why not in ("dead", "retired") else r.reason,
                   **({"answer_type": ex.answer_type} if ex.answer_type else {})}))

    def _total_line(self) -> str:
        done = sum(r.done for r in self.replicas)
        el = max(1e-6, time.perf_counter() - self.t0)
        live = sum(1 for r in self.replicas if r.ready)
        return f"{done} done this run | {3600 * done / el:.0f} examples/h | {live}/{len(self.replicas)} replicas running"

    # -- ending -----------------------------------------------------------------------------------------------------
    def _stop_replicas(self) -> None:
        """Each replica stops its servers and sandboxes (bounded wait), then its actor is killed."""
        import ray

        live = [r for r in self.replicas if r.status in ("running", "starting", "retired")]
        refs = {}
        for r in live:
            try:
                refs[r.actor.stop.remote()] = r
            except Exception:  # noqa: BLE001 - an actor already gone
                pass
        if refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=60)
            for ref in ready:
                r = refs[ref]
                try:
                    got = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - died (an idle replica's death is seen here first)
                    if r.status in ("running", "starting"):
                        r.status, r.reason = "dead", _first_line(e)
                        self.log(f"replica {r.id} dead: {r.reason} (noticed when stopping: it held no example)")
                    continue
                for name, text in got.pop("logs", {}).items():
                    atomic_write_text(self.folder.path / "logs" / f"replica{r.id}-{name}", text)
                r.info.update(got)
        for r in self.replicas:
            try:
                ray.kill(r.actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
            if r.status in ("running", "starting", "retired"):
                r.status = "stopped" if r.status != "retired" else r.status

    def _finish(self, status: str) -> dict[str, Any]:
        from rlm_rig.experiments.runs.evaluate import summarize

        reps = [{"id": r.id, "host": r.info.get("host"), "node": r.info.get("node"), "pid": r.info.get("pid"),
                 "gpus": r.info.get("gpus"),
                 "resources": r.info.get("resources"), "status": r.status, "reason": r.reason or None,
                 "examples": r.done, "requeued_from": r.requeued, "start_s": r.info.get("start_s"),
                 "busy_s": r.info.get("busy_s"),
                 "wall_s": round(time.perf_counter() - r.t_start, 2)} for r in self.replicas]
        for rep in reps:
            self.log(f"replica {rep['id']} end: {rep['status']}, {rep['examples']} examples, wall {rep['wall_s']} s, "
                     f"busy {rep['busy_s']} s, resources {rep['resources']}")
        summary = summarize(self.folder)
        prev = self.folder.read_results() if self.resume else None
        runs = list(getattr(prev, "cluster_runs", None) or [])
        ready = [r.t_ready for r in self.replicas if r.t_ready is not None]
        runs.append({"address": self.address, "replicas": reps, "status": status,
                     "wall_s": round(time.perf_counter() - self.t0, 2), "examples_written": self.written,
                     # from the driver's start: every replica up, the last row written (bench/bench_cluster.py)
                     "all_ready_s": round(max(ready) - self.t0, 2) if ready else None,
                     "last_row_s": round(self.t_last_row - self.t0, 2) if self.t_last_row else None})
        self.folder.write_results({**summary, "status": status, "method": self.spec.method,
                                   "dataset": self.spec.dataset, "cluster_runs": runs})
        self.replicas_summary = reps
        return {**summary, "status": status, "run_dir": str(self.folder.path), "replicas": reps}


class ReplicaLines(LiveLine):
    """Live progress: a total line, then one line per replica (drawn on a terminal only)."""

    def __init__(self, show: bool):
        self.lines: list[str] = []
        super().__init__()
        if not show:
            self.live = None

    def render(self) -> Text:
        return Text("\n".join(self.lines))


class ReplicasDeadError(ClusterError):
    """Every replica died or failed to start while examples remained."""


def _first_line(e: BaseException) -> str:
    """The cause of a Ray error in one line: the remote exception's own message when there is one (a RayTaskError
    carries the replica's exception as ``cause``), without Ray's traceback, colours or actor repr."""
    import re

    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and cause is not e:
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"[:300]
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "ray::", "actor_id=", "repr=")):
            return line[:300]
    return type(e).__name__


def resume_cluster_eval(run_dir: str | Path, *, address: str, replicas: int, show_progress: bool = True
                        ) -> dict[str, Any]:
    from rlm_rig.configs.load import validate_config

    folder = RunFolder(run_dir)
    cfg_data, spec = folder.load_spec()
    cfg = validate_config(cfg_data, str(folder.config_path))
    return run_cluster_eval(cfg, spec, folder.path, address=address, replicas=replicas, resume=True,
                            show_progress=show_progress)
