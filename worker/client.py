"""Async client for OpenAI-compatible chat servers (vLLM), built for many concurrent sub-calls.

WHY not the `openai` package: we need per-call latency and attempt counts, our own retry policy
(connection errors and 5xx yes, 4xx never), round-robin over replicas, and a shared concurrency cap,
with as little dispatch overhead as possible. A thin httpx layer does all of that in one place.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx

from rlm_rig.worker.errors import ContextLengthError, WorkerError, WorkerRequestError, redact
from rlm_rig.worker.server import normalize_base_url
from rlm_rig.worker.settings import Sampling, WorkerSettings

__all__ = ["Completion", "WorkerClient", "validate_messages"]

_CONTEXT_HINTS = ("maximum context length", "context length", "max_model_len", "prompt is too long")
_RETRY_STATUS = {408, 409, 429}  # transient 4xx: timeout, conflict, rate limit


@dataclass
class Completion:
    """One chat completion and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float  # from getting a concurrency slot to the final answer, retries included
    finish_reason: str | None = None  # "stop" | "length" | ...
    attempts: int = 1
    url: str | None = None  # the replica that answered
    model: str | None = None
    queued_s: float = 0.0  # time spent waiting for a concurrency slot
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific details (e.g. token ids)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def validate_messages(messages: Any) -> list[dict]:
    """Reject malformed chat messages here, with a clear error, instead of as an opaque HTTP 400."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"messages must be a non-empty list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        if m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
            raise ValueError(f"messages[{i}]['role'] must be system/user/assistant/tool, got {m.get('role')!r}")
        content = m.get("content")
        if not isinstance(content, (str, list)):
            raise ValueError(f"messages[{i}]['content'] must be a string, got {type(content).__name__}")
    return messages


def _error_message(resp: httpx.Response) -> str:
    """vLLM answers {"error": {"message": ...}} (newer) or {"message": ...} (older)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:2000]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return resp.text[:2000]


_UNENCODABLE = "Out of range float values are not JSON compliant"  # vLLM's 400 for NaN/inf logprobs
_LOGPROB_KEYS = ("logprobs", "return_tokens_as_token_ids")


def _token_logprobs(choice: dict) -> dict[str, Any]:
    """{"token_ids": [...], "token_logprobs": [...]} from an OpenAI chat choice's `logprobs.content`, whose
    tokens are "token_id:N" (vLLM's `return_tokens_as_token_ids`). Empty when the server sent none or
    sent plain token strings (then the ids are unknown and nothing is recorded rather than a guess)."""
    content = (choice.get("logprobs") or {}).get("content")
    if not isinstance(content, list):
        return {}
    ids: list[int] = []
    lps: list[float] = []
    for entry in content:
        tok = str(entry.get("token", ""))
        if not tok.startswith("token_id:"):
            return {}
        try:
            ids.append(int(tok[len("token_id:"):]))
            lps.append(float(entry.get("logprob")))
        except (TypeError, ValueError):
            return {}
    return {"token_ids": ids, "token_logprobs": lps}


def _check_limits(*, concurrency: int, timeout_s: float, max_retries: int, max_tokens: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")


class WorkerClient:
    """Chat with one model over one or more replicas, at most `concurrency` requests at a time.

    One client is meant to be shared by everything that talks to the worker (see SyncWorker), so the
    cap is global. Calls from different event loops each get their own connection pool and cap.
    """

    def __init__(
        self,
        base_urls: str | list[str],
        model: str,
        *,
        concurrency: int = WorkerSettings.max_connections,
        timeout_s: float = WorkerSettings.timeout_s,
        max_retries: int = WorkerSettings.max_retries,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        temperature: float = Sampling.temperature,
        max_tokens: int = WorkerSettings.max_tokens,
        api_key: str | None = None,
        top_p: float = Sampling.top_p,
        seed: int | None = Sampling.seed,
        headers: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
        trust_env: bool = False,
        replica_cooldown_s: float = 10.0,
        token_logprobs: bool = False,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls or [])
        if not urls:
            raise ValueError("WorkerClient needs at least one base url")
        self.base_urls = [normalize_base_url(u) for u in urls]
        if not model:
            raise ValueError("WorkerClient.model must name the served model")
        _check_limits(concurrency=concurrency, timeout_s=timeout_s, max_retries=max_retries, max_tokens=max_tokens)
        self.model = model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        # Ask the server for the generated token ids and their logprobs (vLLM: `logprobs` plus
        # `return_tokens_as_token_ids`, so a token comes back as "token_id:N", exact even for byte tokens).
        # They land in Completion.extra["token_ids"] / ["token_logprobs"]; interp teacher-forces them.
        self.token_logprobs = token_logprobs
        # extra headers (a hosted server's), then the key: never logged, never in a record (see __repr__)
        self._headers = {**(headers or {}), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        # every value a server could echo back in an error body: masked in every message and body we raise
        self._secrets = [api_key, *self._headers.values()]
        self._trust_env = trust_env
        self._rr = itertools.cycle(range(len(self.base_urls)))
        self.replica_cooldown_s = replica_cooldown_s
        self._down_until: dict[str, float] = {}
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._in_flight = 0
        self.peak_in_flight = 0
        self.calls = 0  # successful chats
        self.failures = 0  # chats that raised
        self.http_attempts = 0  # every POST sent, retries included
        self.prompt_tokens = 0
        self.completion_tokens = 0

    # -- state ---------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests holding a concurrency slot right now (for progress displays)."""
        return self._in_flight

    def _loop_state(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(loop)
        if state is None:
            limits = httpx.Limits(max_connections=self.concurrency * 2, max_keepalive_connections=self.concurrency * 2)
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                limits=limits,
                headers=self._headers,
                trust_env=self._trust_env,
            )
            state = (client, asyncio.Semaphore(self.concurrency))
            self._per_loop[loop] = state
        return state

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        return base * (1.0 + 0.1 * random.random())

    # -- calls ---------------------------------------------------------------------------------------
    def build_payload(
        self,
        messages: list[dict],
        *,
        max_tokens: int | None = None,
        stop: list[str] | str | None = None,
        temperature: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": validate_messages(messages),
            "max_tokens": int(max_tokens if max_tokens is not None else self.max_tokens),
            "temperature": float(self.temperature if temperature is None else temperature),
            "top_p": float(self.top_p),
        }
        if self.seed is not None:
            payload["seed"] = int(self.seed)
        if stop:
            payload["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if self.token_logprobs:
            payload["logprobs"] = True
            payload["return_tokens_as_token_ids"] = True
        payload.update(self.extra_body)
        payload.update(extra)
        return payload

    async def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int | None = None,
        stop: list[str] | str | None = None,
        temperature: float | None = None,
        **extra: Any,
    ) -> Completion:
        """One chat completion. Retries connection errors, timeouts and 5xx with exponential back-off,
        moving to the next replica each time; 4xx raise WorkerRequestError (ContextLengthError when the
        prompt does not fit) at once. `extra` goes into the request body (e.g. seed, top_p)."""
        payload = self.build_payload(messages, max_tokens=max_tokens, stop=stop, temperature=temperature, **extra)
        client, sem = self._loop_state()
        t_wait = time.perf_counter()
        async with sem:
            t0 = time.perf_counter()
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            try:
                comp = await self._post_with_retries(client, payload)
            except Exception:  # a cancelled call (timeout, Ctrl-C) is not a worker failure
                self.failures += 1
                raise
            finally:
                self._in_flight -= 1
        comp.queued_s = t0 - t_wait
        comp.latency_s = time.perf_counter() - t0
        self.calls += 1
        self.prompt_tokens += comp.prompt_tokens
        self.completion_tokens += comp.completion_tokens
        return comp

    def _replica_order(self) -> list[str]:
        """Round-robin start, then the rest in turn; replicas that just failed to connect go last
        (for `replica_cooldown_s`) so one dead replica does not cost every request a retry."""
        n = len(self.base_urls)
        start = next(self._rr)
        order = [self.base_urls[(start + i) % n] for i in range(n)]
        if n > 1 and self._down_until:
            now = time.monotonic()
            order.sort(key=lambda u: self._down_until.get(u, 0.0) > now)  # stable: keeps round robin
        return order

    async def _post_with_retries(self, client: httpx.AsyncClient, payload: dict) -> Completion:
        errors: list[str] = []
        order = self._replica_order()
        for attempt in range(self.max_retries + 1):
            url = order[attempt % len(order)]  # each retry of this request moves to the next replica
            self.http_attempts += 1
            try:
                resp = await client.post(url + "/chat/completions", json=payload)
            except httpx.TransportError as exc:  # refused, reset, timed out, protocol error
                self._down_until[url] = time.monotonic() + self.replica_cooldown_s
                errors.append(redact(f"{url}: {type(exc).__name__}: {exc}", self._secrets).rstrip(": "))
            else:
                if resp.status_code == 200:
                    return self._parse(resp, url, attempt + 1)
                msg = redact(_error_message(resp), self._secrets)
                if resp.status_code == 400 and "logprobs" in payload and _UNENCODABLE in msg:
                    # vLLM could not JSON-encode the logprobs it computed (NaN/inf: a model gone numerically
                    # bad, e.g. a random tiny model past its trained positions); the completion itself is
                    # fine, so ask once more without logprobs (interp then has no recorded tokens for it).
                    payload = {k: v for k, v in payload.items() if k not in _LOGPROB_KEYS}
                    resp = await client.post(url + "/chat/completions", json=payload)
                    if resp.status_code == 200:
                        return self._parse(resp, url, attempt + 1)
                    msg = redact(_error_message(resp), self._secrets)
                if resp.status_code >= 500 or resp.status_code in _RETRY_STATUS:
                    errors.append(f"{url}: HTTP {resp.status_code}: {msg[:300]}")
                else:
                    cls = ContextLengthError if any(h in msg.lower() for h in _CONTEXT_HINTS) else WorkerRequestError
                    raise cls(
                        f"{url} rejected the request (HTTP {resp.status_code}): {msg}",
                        url=url,
                        status=resp.status_code,
                        body=redact(resp.text, self._secrets)[:4000],
                    )
            if attempt < self.max_retries:
                await asyncio.sleep(self._backoff(attempt))
        where = ", ".join(dict.fromkeys(e.split(": ", 1)[0] for e in errors))
        raise WorkerError(
            f"worker at {where} failed after {self.max_retries + 1} attempt(s); last error: {errors[-1]}",
            url=where,
        )

    def _parse(self, resp: httpx.Response, url: str, attempts: int) -> Completion:
        try:
            body = resp.json()
            choice = body["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise WorkerError(f"{url} returned an unreadable completion: {redact(resp.text, self._secrets)[:500]}", url=url) from exc
        usage = body.get("usage") or {}
        extra: dict[str, Any] = {}
        if self.token_logprobs:
            extra = _token_logprobs(choice)
        return Completion(
            text=(choice.get("message") or {}).get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=0.0,
            finish_reason=choice.get("finish_reason"),
            attempts=attempts,
            url=url,
            model=body.get("model"),
            extra=extra,
        )

    async def aclose(self) -> None:
        """Close the connection pool of the current loop (the one SyncWorker runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        state = self._per_loop.pop(loop, None)
        if state is not None:
            await state[0].aclose()

    async def __aenter__(self) -> "WorkerClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"WorkerClient(model={self.model!r}, urls={self.base_urls}, concurrency={self.concurrency})"
