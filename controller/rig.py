"""config -> rig: start (or attach to) the worker, load the controller, run questions, clean up.

One :class:`Rig` owns every process it starts. Leaving its ``with`` block, by return, by error
or by Ctrl-C, stops the vLLM servers and their children.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rlm_rig.configs.schema import RigConfig
from rlm_rig.controller.subcalls import Route
from rlm_rig.worker.settings import ServerSettings, WorkerSettings
from rlm_rig.controller.doctokens import (ChunkTokens, DocTokenCounts, batch_counter_for, counter_for, normalizer_form,
                                  token_cache_folder)
from rlm_rig.controller.kernels import KernelPool
from rlm_rig.controller.backends import ControllerLM, OpenAILM, ReplayLM, TransformersLM
from rlm_rig.controller.memory import trim_heap
from rlm_rig.controller.loop import RLM, RunContext, replay_lm_for
from rlm_rig.records.trajectory import Trajectory, atomic_write_text
from rlm_rig.records.runlog import RunFolder, package_versions
from rlm_rig.records.tape import Tape
from rlm_rig.worker.models import model_identity, resolve_model
from rlm_rig.worker.tape import TapedWorker
from rlm_rig.worker.watch import WorkerWatch

if TYPE_CHECKING:
    from rlm_rig.controller.session import Session


class Rig:
    def __init__(self, cfg: RigConfig, *, run_dir: str | Path, controller_replay: str | Path | None = None,
                 tape: str | Path | None = None, replace: dict[int, str] | None = None):
        """``tape``: a run folder whose tape answers identical sub_calls (worker/tape.py); ``replace``: the
        n-th worker call's reply by ordinal, for forks (experiments/runs/fork.py)."""
        self.cfg = cfg
        self.tape = tape
        self.replace = replace
        self.worker_identity = ""  # the worker's weights (worker.models.model_identity): what tape keys name
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)  # where its logs and the worker pid file go
        self.controller_replay = controller_replay
        self._servers: list[Any] = []
        self._clients: list[Any] = []
        self._sessions: list[Session] = []
        self.worker: WorkerWatch | None = None  # the default worker behind its watch (restarts, retries, dead)
        self.workers: dict[str, WorkerWatch] = {}  # every worker by name (a profile's workers: map)
        self.lm: ControllerLM | None = None
        self.worker_model_path: str = ""
        self.count_tokens: Callable[[str], int] = lambda s: max(1, len(s) // 4)
        self.decode_token: Callable[[int], str] | None = None  # the worker's tokenizer, once the worker starts
        self.chunk_tokens: ChunkTokens | None = None
        self.doc_tokens: Callable[[str], int] = self.count_tokens  # whole-document counts (eval rows), cached
        self.kernels = KernelPool()
        self.worker_url: str | None = None
        self._worker_server: Any = None  # the VLLMServer we started for the worker (restartable), if any

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "Rig":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _server(self, server: ServerSettings, model: str, served: str, dtype: str, name: str) -> list[str]:
        """Base URLs for a model: attach when ``url`` is given, else start a server we own."""
        from rlm_rig.worker.server import ServerSpec, VLLMServer

        if server.url:
            return [VLLMServer.attach(server.url, headers=server.auth_headers())]
        spec = ServerSpec.of(server, model=model, served_name=served, dtype=dtype, offline=Path(model).exists())
        srv = VLLMServer(spec, log_dir=self.folder.logs_dir, name=name)
        self._servers.append(srv)
        srv.start()
        if name == "worker":
            self._worker_server = srv
            self._write_pid(srv)
        return [srv.url]

    def start_worker(self) -> None:
        """Every worker of the profile (the default one, then the rest of a ``workers:`` map), each served or
        attached and behind its own watch; token counts and the chunk budget follow the default worker."""
        from rlm_rig.worker.tokens import load_fast_tokenizer

        default = self.cfg.default_worker_name()
        if not getattr(self, "worker_model_path", None):  # start() resolves it first; a direct call does it here
            self.worker_model_path = resolve_model(self.cfg.worker.model)
            self._replay = self._replay_tape()
        self._own_tape = Tape(self.folder.tape_path, keep=False)  # every worker's replies, keyed by its weights
        tok = load_fast_tokenizer(self.worker_model_path)  # `tokenizers` alone: no transformers import
        self.count_tokens = counter_for(tok)
        self.decode_token = lambda i: tok.decode([i])  # the answer tokens of a reply (controller/confidence.py)
        self.chunk_tokens = ChunkTokens(self.count_tokens, normalizer_form(tok), batch_counter_for(tok))
        tok_file = Path(self.worker_model_path) / "tokenizer.json"
        self.doc_tokens = DocTokenCounts(self.count_tokens, lambda: token_cache_folder(tok_file))
        for name, w in self.cfg.worker_map().items():
            self.workers[name] = self._start_one(name, w, default=name == default)
            self._clients.append(self.workers[name])
        self.worker = self.workers[default]

    def _start_one(self, name: str, w: WorkerSettings, *, default: bool) -> Any:
        from rlm_rig.worker.sync import SyncWorker
        from rlm_rig.worker.client import WorkerClient

        path = self.worker_model_path if default else resolve_model(w.model)
        if w.backend == "transformers":
            from rlm_rig.worker.hf import TransformersWorker

            backend: Any = TransformersWorker(path, device=w.device, dtype=w.dtype, max_tokens=w.max_tokens,
                                              temperature=w.sampling.temperature, top_p=w.sampling.top_p,
                                              seed=w.sampling.seed)
            return self._taped(self._watched(SyncWorker(backend), w, None, None), w, path, default)
        served = w.served_name or name
        urls = self._server(w.server, path, served, w.dtype, "worker" if default else f"worker-{name}")
        urls += list(w.replica_urls)
        if default:
            self.worker_url = urls[0]
        backend = WorkerClient(
            urls, served, concurrency=w.max_connections, timeout_s=w.timeout_s, max_retries=w.max_retries,
            temperature=w.sampling.temperature, top_p=w.sampling.top_p, seed=w.sampling.seed, max_tokens=w.max_tokens,
            api_key=w.server.api_key(), headers={**w.server.headers, **w.server.secret_headers()},
            token_logprobs=True,  # recorded in every SubCallRecord (schema 2) for interp's faithfulness
        )
        server = self._worker_server if default else next((s for s in self._servers if s.url == urls[0]), None)
        return self._taped(self._watched(SyncWorker(backend), w, urls[0], server), w, path, default)

    def _taped(self, watched: Any, w: WorkerSettings, path: str, default: bool) -> Any:
        """The worker with the tape in front (worker/tape.py): replies of the ``tape`` run answer identical calls,
        every reply goes on this run's tape; a fork's replaced replies count the default worker's calls."""
        identity = self.worker_identity if default else model_identity(path)
        sampling, seed = self._sampling(w)
        return TapedWorker(watched, model=identity, sampling={**sampling, "seed": seed}, record=self._own_tape,
                           replay=self._replay, replace=self.replace if default else None)

    def _sampling(self, w: WorkerSettings | None = None) -> tuple[dict[str, Any], int | None]:
        """What besides weights and messages decides a worker reply: (the tape key's sampling part, its seed)."""
        w = w or self.cfg.worker
        key = {"backend": w.backend, "dtype": w.dtype, "temperature": w.sampling.temperature,
               "top_p": w.sampling.top_p, "max_tokens": w.max_tokens}
        srv = w.server  # what the server does to the weights and the prompt changes the reply too
        key.update({k: getattr(srv, k) for k in ("quantization", "generation_config", "extra_args")
                    if getattr(srv, k, None) not in (None, [], (), "")})
        return key, w.sampling.seed

    def _replay_tape(self) -> Tape | None:
        """The ``tape`` run's tape, checked against this worker's weights and sampling (TapeMismatch)."""
        self.worker_identity = model_identity(self.worker_model_path)
        if self.tape is None:
            return None
        src = RunFolder(self.tape)
        if not src.tape_path.is_file():
            raise FileNotFoundError(f"--tape {self.tape}: that run folder holds no tape (a run made before tapes, "
                                    "or not a run folder)")
        tape = Tape(src.tape_path)
        base, seed = self._sampling()
        variants = [(base, seed)]
        for by_depth in self.cfg.worker.sampling_by_depth.values():  # calls at some depths sample otherwise
            merged = {**base, "seed": seed, **by_depth.request()}
            variants.append((merged, merged.pop("seed", None)))
        tape.check_compatible(self.worker_identity, variants)
        return tape

    def _write_pid(self, srv: Any) -> None:
        """Lets `rlm-rig interp --stop-server` / interp.stop_server find and free the worker's GPU."""
        atomic_write_text(self.folder.worker_pid_path, json.dumps({"pid": srv.pid, "url": srv.url}))
        self._wrote_pid = True

    def _watched(self, sync: Any, w: WorkerSettings, url: str | None, server: Any) -> WorkerWatch:
        """A worker behind a :class:`WorkerWatch`: a dead server is noticed, restarted when it is ours,
        and its failed sub_calls re-sent; every event goes to ``RUN/logs/rig.log``."""
        health = None
        if w.backend == "vllm" and url:
            health = url[: -len("/v1")] if url.endswith("/v1") else url
        return WorkerWatch(
            sync, server=server, health_url=health, log=self.log,
            max_restarts=w.watch.max_restarts, backoff_s=w.watch.backoff_s,
            attached_wait_s=w.watch.attached_wait_s, retries=w.watch.retries,
            on_restart=self._write_pid if server is not None and server is self._worker_server else None,
        )

    def routes(self) -> dict[str, Route]:
        """The workers by name, for the sub_call router (controller.subcalls.route_for)."""
        return {name: Route(name, self.workers[name], w.max_tokens, w.system_prompt, dict(w.sampling_by_depth))
                for name, w in self.cfg.worker_map().items() if name in self.workers}

    def log(self, line: str) -> None:
        """One line into the run log (``RUN/logs/rig.log``), appended and flushed at once."""
        path = self.folder.rig_log_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")

    @property
    def worker_server(self) -> Any:
        """The vLLM server this rig started for the worker (None when attached or in-process)."""
        return self._worker_server

    @property
    def worker_dead(self) -> str | None:
        """Why the worker is gone for good (None while it is alive or being restarted)."""
        return self.worker.dead if self.worker is not None else None

    def start_controller(self) -> None:
        c = self.cfg.controller
        if self.controller_replay is not None:
            self.lm = ReplayLM.from_file(self.controller_replay)
        elif c.backend == "replay":
            if not c.replay_file:
                raise ValueError("controller.backend is 'replay' but no replay_file is set (or pass --controller-replay)")
            self.lm = ReplayLM.from_file(c.replay_file)
        elif c.backend == "transformers":
            self.lm = TransformersLM(resolve_model(c.model or ""), device=c.device, dtype=c.dtype,
                                     quantization=c.quantization, sampling=c.sampling)
        else:
            from rlm_rig.worker.sync import SyncWorker
            from rlm_rig.worker.client import WorkerClient

            assert c.server is not None and c.model is not None
            served = c.served_name or "controller"
            urls = self._server(c.server, resolve_model(c.model), served, c.dtype, "controller")
            # one slot per concurrent example, so their turns batch on the server
            slots = self.cfg.eval.max_samples
            client = SyncWorker(WorkerClient(urls, served, concurrency=slots, timeout_s=900,
                                             api_key=c.server.api_key(),
                                             headers={**c.server.headers, **c.server.secret_headers()},
                                             temperature=c.sampling.temperature, top_p=c.sampling.top_p,
                                             seed=c.sampling.seed, max_tokens=c.max_new_tokens),
                                name="controller-loop")
            self._clients.append(client)
            self.lm = OpenAILM(client, name=c.model, base_url=urls[0], served_name=served, max_connections=slots,
                               headers=c.server.auth_headers())

    def context_window(self) -> int | None:
        """The controller's window for the context guard: the config's, else what the backend knows
        (the server's max_model_len, the model's max_position_embeddings), else the configured
        server's max_model_len; None (unguarded) for a replay without a configured window."""
        c = self.cfg.controller
        if c.context_tokens:
            return c.context_tokens
        known = getattr(self.lm, "context_window", None)
        if known:
            return int(known)
        if c.backend == "openai" and c.server is not None and self.controller_replay is None:
            return c.server.max_model_len
        return None

    def start(self) -> None:
        self.check_secrets()  # an unset API-key variable fails before anything starts
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.check_sandbox()
        self.worker_model_path = resolve_model(self.cfg.worker.model)
        self._replay = self._replay_tape()  # a tape of other weights or sampling is refused before any model loads
        self.start_controller()  # cheap failures (a bad replay file) before an expensive server start
        self.start_worker()

    def check_secrets(self) -> None:
        """Every server section's API-key variable is set (MissingSecret names the one that is not)."""
        servers = [w.server for w in self.cfg.worker_map().values()]
        if self.cfg.controller.server is not None and self.controller_replay is None:
            servers.append(self.cfg.controller.server)
        for s in servers:
            s.api_key()

    def check_sandbox(self) -> None:
        """Refuse now, with what to install, if no launcher the profile allows works here (SandboxError)."""
        from rlm_rig.repl.types import SandboxError
        from rlm_rig.repl.launch import LauncherRefused, choose_plans

        sb = self.cfg.sandbox
        try:
            choose_plans(sb.launcher, network=sb.network, allow_weak=sb.allow_weak_launchers)
        except LauncherRefused as exc:
            raise SandboxError(f"the REPL sandbox cannot start: {exc}") from None

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        self.kernels.close()
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()
        for s in reversed(self._servers):
            s.stop()
        if self._servers and getattr(self, "_wrote_pid", False):  # only the pid file this rig wrote
            self.folder.worker_pid_path.unlink(missing_ok=True)
        self._servers.clear()
        if self.lm is not None:
            self.lm.close()
            self.lm = None

    # -- running --------------------------------------------------------------------------
    def models(self) -> dict[str, str]:
        extra = {f"worker:{n}": w.model for n, w in self.cfg.worker_map().items() if n != self.cfg.default_worker_name()}
        return {
            "controller": self.lm.name if self.lm else "",
            "worker": self.cfg.worker.model,
            "worker_path": self.worker_model_path,
            "worker_weights": self.worker_identity,
            **extra,
        }

    def context(self, *, sub_calls: bool = True) -> RunContext:
        assert self.lm is not None, "rig not started"
        return RunContext(
            cfg=self.cfg,
            lm=replay_lm_for(self.lm),
            worker=self.worker,
            count_tokens=self.count_tokens,
            models=self.models(),
            versions=package_versions(),
            sub_calls_enabled=sub_calls,
            chunk_tokens=self.chunk_tokens,
            kernels=self.kernels,
            context_window=self.context_window(),
            routes=self.routes() if self.workers else None,
            default_model=self.cfg.default_worker_name(),
            decode_token=self.decode_token,
        )

    def ask(
        self, doc: str | list | dict, question: str, *, run_id: str | None = None, save_to: str | Path | None = None,
        sub_calls: bool = True, on_event: Callable[[str, Trajectory], None] | None = None,
        instructions: str | None = None, extra_globals: dict[str, Any] | None = None,
    ) -> Trajectory:
        """``doc``: a str, or a list / dict of items (the REPL gets it as such); ``extra_globals``: plain JSON-able
        data put in the REPL next to it."""
        ctx = self.context(sub_calls=sub_calls)
        ctx.on_event = on_event
        ctx.extra_globals = extra_globals
        try:
            return RLM(ctx).run(doc, question, run_id=run_id, save_to=save_to, instructions=instructions)
        finally:
            trim_heap()  # keeps a long eval's memory flat across documents

    def session(self, doc: str) -> "Session":
        """Several questions about ``doc`` in one REPL and one controller conversation (controller/session.py)."""
        from rlm_rig.controller.session import Session

        assert self.lm is not None, "rig not started"
        session = Session(self, doc)
        self._sessions.append(session)  # closed with the rig if the caller did not
        return session
