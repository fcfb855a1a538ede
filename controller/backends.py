"""Controller language models behind one small interface: ``generate(messages) -> Generation``.

Three backends: an in-process transformers model (optionally 4-bit NF4 through bitsandbytes), any
OpenAI-compatible server (started or attached with the worker's own server code), and a replay of
recorded responses (tests, and counterfactual runs of a recorded controller against another worker).
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from rlm_rig.controller.parsing import closed_cell_end, truncate_cell
from rlm_rig.worker.sync import SyncWorker

Messages = list[dict[str, str]]


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class ControllerLM(Protocol):
    name: str

    def generate(self, messages: Messages, *, max_new_tokens: int, sampling: Any = None) -> Generation:
        """``sampling``: this turn's worker.settings.Sampling (controller.sampling_at(depth)); None: the backend's
        own (controller.sampling). Per call, not per backend: nested runs share one backend, concurrently."""
        ...

    def close(self) -> None: ...


class ReplayExhausted(RuntimeError):
    pass


def load_replay(path: str | Path) -> list[str]:
    """A list of responses: YAML/JSON list, ``{responses: [...]}``, or a saved trajectory's turns."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"replay file {str(p)!r} does not exist")
    try:
        data: Any = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"replay file {p}: cannot parse ({e})") from None
    if isinstance(data, dict) and "turns" in data:  # a trajectory
        data = [t["response"] for t in data["turns"]]
    elif isinstance(data, dict) and "responses" in data:
        data = data["responses"]
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ValueError(f"replay file {p}: expected a list of response strings (or {{responses: [...]}})")
    return data


class ReplayLM:
    """Returns recorded responses in order; token counts are estimated at 4 characters a token."""

    def __init__(self, responses: list[str], name: str = "replay"):
        self.responses = list(responses)
        self.name = name
        self._i = 0
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> "ReplayLM":
        return cls(load_replay(path), name=f"replay:{Path(path).name}")

    def generate(self, messages: Messages, *, max_new_tokens: int, sampling: Any = None) -> Generation:
        """``sampling`` is ignored: a recorded response is what it was."""
        with self._lock:
            if self._i >= len(self.responses):
                raise ReplayExhausted(f"replay has only {len(self.responses)} responses")
            text = self.responses[self._i]
            self._i += 1
        prompt_chars = sum(len(m["content"]) for m in messages)
        return Generation(text, math.ceil(prompt_chars / 4), math.ceil(len(text) / 4), 0.0)

    def fork(self) -> "ReplayLM":
        """A fresh cursor over the same responses: each eval example replays from the start."""
        return ReplayLM(self.responses, self.name)

    def close(self) -> None:
        pass


class TransformersLM:
    """Any causal LM in-process; ``quantization='nf4'`` loads it in 4-bit through bitsandbytes."""

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "bfloat16", quantization: str = "none",
                 sampling: Any = None):
        """``sampling``: a worker.settings.Sampling (controller.sampling); None or temperature 0 decodes greedily."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        self.device = device
        torch_dtype = getattr(torch, dtype)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if quantization != "none":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=quantization,
                bnb_4bit_compute_dtype=torch_dtype,
                bnb_4bit_use_double_quant=True,
            )
            kwargs["device_map"] = {"": device}
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, **kwargs)
        if quantization == "none":
            self.model.to(device)
        self.model.eval()
        self.quantization = quantization
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self._lock = threading.Lock()  # one generate at a time: eval threads share this model
        self.sampling = sampling

    def _sampling_kwargs(self, sampling: Any = None) -> dict[str, Any]:
        """generate() keywords for this turn's sampling (default controller.sampling); a seed re-seeds torch before
        each turn (the caller holds the lock), so a sampled turn repeats."""
        s = self.sampling if sampling is None else sampling
        if s is None or s.temperature <= 0:
            return {"do_sample": False}
        if s.seed is not None:
            import torch

            torch.manual_seed(int(s.seed))
        return {"do_sample": True, "temperature": float(s.temperature), "top_p": float(s.top_p)}

    def count_tokens(self, messages: Messages) -> int:
        """Exact prompt length for the context guard (the same template generate() renders)."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def generate(self, messages: Messages, *, max_new_tokens: int, sampling: Any = None) -> Generation:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        input_ids = ids["input_ids"].to(self.model.device)
        n_in = input_ids.shape[1]

        class _StopAfterCell(StoppingCriteria):
            def __call__(self, seq: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
                tail = tok.decode(seq[0, -4:])
                done = "`" in tail and closed_cell_end(tok.decode(seq[0, n_in:], skip_special_tokens=True)) is not None
                return torch.full((seq.shape[0],), done, dtype=torch.bool, device=seq.device)

        t0 = time.perf_counter()
        with self._lock, torch.no_grad():
            out = self.model.generate(
                input_ids,
                attention_mask=ids["attention_mask"].to(self.model.device),
                max_new_tokens=max_new_tokens,
                **self._sampling_kwargs(sampling),
                stopping_criteria=StoppingCriteriaList([_StopAfterCell()]),
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
        new = out[0, n_in:]
        text = truncate_cell(tok.decode(new, skip_special_tokens=True))
        return Generation(text, n_in, int(new.shape[0]), time.perf_counter() - t0)

    def close(self) -> None:
        del self.model


def request_sampling(sampling: Any) -> dict[str, Any]:
    """A turn's sampling as request fields over the client's defaults (controller.sampling); a depth without a
    seed sends ``seed: null`` so the root's seed does not leak into it. None: the client's defaults."""
    return {} if sampling is None else {**sampling.request(), "seed": sampling.seed}


class OpenAILM:
    """A controller behind an OpenAI-compatible server, through the worker's own client.

    The client's concurrency is the number of examples that run at once (``eval.max_samples``), so
    their turns reach the server together and batch there; prefix caching on the server reuses each
    conversation's KV cache from the previous turn.
    """

    STOP = ["\n```\n"]

    def __init__(self, sync_client: SyncWorker, name: str, *, base_url: str | None = None,
                 served_name: str | None = None, max_connections: int = 1, headers: dict[str, str] | None = None):
        """``max_connections``: the client's slots (one per concurrent example), so the side channel to the
        server (/tokenize, /v1/models) never queues behind them."""
        self.client = sync_client
        self.name = name
        self.served_name = served_name
        self.context_window: int | None = None
        self._http: Any = None
        if base_url is not None:
            import httpx

            n = max(1, max_connections)
            self._root = base_url.rstrip("/").removesuffix("/v1")
            self._http = httpx.Client(trust_env=False, timeout=60.0, headers=headers or {},  # a keyed server's
                                      limits=httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n))
            self.context_window = self._served_window()

    def _served_window(self) -> int | None:
        """The server's max_model_len, as vLLM reports it in /v1/models (None when it does not)."""
        try:
            data = self._http.get(self._root + "/v1/models").json().get("data", [])
        except Exception:  # noqa: BLE001 - an unknown window only means the config's value is used
            return None
        for m in data:
            if m.get("id") == self.served_name and m.get("max_model_len"):
                return int(m["max_model_len"])
        return None

    def count_tokens(self, messages: Messages) -> int:
        """Exact prompt tokens from the server's own chat template (vLLM's /tokenize); a high estimate
        when the server has no such endpoint."""
        from rlm_rig.controller.context import estimate_tokens

        if self._http is None:
            return estimate_tokens(messages)
        r = self._http.post(self._root + "/tokenize", json={"model": self.served_name, "messages": messages,
                                                            "add_generation_prompt": True})
        if r.status_code != 200:
            return estimate_tokens(messages)
        return int(r.json()["count"])

    def generate(self, messages: Messages, *, max_new_tokens: int, sampling: Any = None) -> Generation:
        c = self.client.chat(messages, max_tokens=max_new_tokens, stop=self.STOP, **request_sampling(sampling))
        text = c.text
        # vLLM drops the stop string: put the closing fence back if a cell was left open.
        if c.finish_reason == "stop" and closed_cell_end(text + "\n```\n") is not None and closed_cell_end(text) is None:
            text = text + "\n```"
        return Generation(truncate_cell(text), c.prompt_tokens, c.completion_tokens, c.latency_s)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
