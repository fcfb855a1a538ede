"""In-process transformers backend with the same async `chat` as WorkerClient.

WHY: interpretability replays and CPU-only runs need the worker's model inside this process (hooks,
activations), with no server. Generation is blocking, so it runs in a thread under a lock: the event
loop stays responsive and one model is never driven by two threads at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from rlm_rig.worker.client import Completion, validate_messages
from rlm_rig.worker.settings import Sampling, WorkerSettings

__all__ = ["TransformersWorker"]

_DTYPES = ("float32", "float16", "bfloat16", "auto")


class TransformersWorker:
    """Greedy (or sampled) chat with a Hugging Face causal LM loaded by hub id or local path."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = WorkerSettings.device,
        dtype: str = WorkerSettings.dtype,
        max_tokens: int = WorkerSettings.max_tokens,
        temperature: float = Sampling.temperature,
        seed: int | None = Sampling.seed,
        top_p: float = Sampling.top_p,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from rlm_rig.worker.tokens import load_tokenizer

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        name = str(model)
        local = name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()
        if local:
            path = Path(name).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"model path {path} does not exist")
            name = str(path.resolve())
        self.model_name = name
        self.device = device
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed  # None: sampled replies are not repeatable (as with vLLM without a seed)
        self.top_p = top_p
        self.tokenizer = load_tokenizer(name)
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        kwargs = {"dtype": torch_dtype, "local_files_only": local, **(model_kwargs or {})}
        self.model = AutoModelForCausalLM.from_pretrained(name, **kwargs).to(device).eval()
        self._lock = threading.Lock()
        self._in_flight = 0
        self.calls = 0
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self._eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos_ids[0]

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Prompt ids exactly as the chat template renders them (what vLLM would feed the model)."""
        out = self.tokenizer.apply_chat_template(
            validate_messages(messages), tokenize=True, add_generation_prompt=True
        )
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def generate_ids(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> tuple[list[int], str, str, int]:
        """Blocking generation -> (new token ids without eos, text, finish_reason, tokens generated
        including eos, which is how vLLM counts completion_tokens)."""
        import torch

        max_new = int(max_tokens or self.max_tokens)
        temp = self.temperature if temperature is None else float(temperature)
        kw: dict[str, Any] = {
            "max_new_tokens": max_new,
            "eos_token_id": self._eos_ids,
            "pad_token_id": self._pad_id,
            # neutral knobs: never inherit a checkpoint's repetition_penalty/top_k (vLLM is started
            # with --generation-config vllm for the same reason)
            "repetition_penalty": 1.0,
            "top_k": None,
            "top_p": None,
        }
        if temp > 0:
            kw.update(do_sample=True, temperature=temp, top_p=self.top_p)
        else:
            kw.update(do_sample=False, temperature=None)
        if stop:
            kw.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        ids = torch.tensor([prompt_ids], device=self.device)
        with self._lock, torch.inference_mode():
            if temp > 0 and self.seed is not None:
                torch.manual_seed(self.seed)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        new = out[0, len(prompt_ids) :].tolist()
        n_generated = len(new)
        finish = "length"
        if new and new[-1] in self._eos_ids:
            new, finish = new[:-1], "stop"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if stop:
            cut = [i for i in (text.find(s) for s in stop) if i >= 0]
            if cut:  # OpenAI semantics: the stop string is not part of the answer
                text, finish = text[: min(cut)], "stop"
        return new, text, finish, n_generated

    async def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int | None = None,
        stop: list[str] | str | None = None,
        temperature: float | None = None,
        **_: Any,
    ) -> Completion:
        """Same contract as WorkerClient.chat; token counts follow vLLM (eos counts as generated)."""
        prompt_ids = self.encode_chat(messages)
        stops = [stop] if isinstance(stop, str) else stop
        self._in_flight += 1
        t0 = time.perf_counter()
        try:
            new, text, finish, n_generated = await asyncio.to_thread(
                self.generate_ids, prompt_ids, max_tokens=max_tokens, temperature=temperature, stop=stops
            )
        finally:
            self._in_flight -= 1
        self.calls += 1
        return Completion(
            text=text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=n_generated,
            latency_s=time.perf_counter() - t0,
            finish_reason=finish,
            model=self.model_name,
            extra={"token_ids": new},
        )

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"TransformersWorker(model={self.model_name!r}, device={self.device!r})"
