"""Errors raised by the worker package; one base class so callers can catch every worker failure."""

from __future__ import annotations

__all__ = ["ContextLengthError", "ServerStartError", "WorkerError", "WorkerRequestError", "redact"]


def redact(text: str, secrets) -> str:
    """`text` with every secret value (an API key, a secret header's value) replaced by ``***``: a server that
    echoes a request's headers in its error body must not put the key into an error, a record or the CLI.
    Values under 4 characters are left alone (no secret is that short; replacing them would garble text)."""
    for value in sorted({str(v) for v in secrets if v and len(str(v)) >= 4}, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


class WorkerError(RuntimeError):
    """A worker call or server operation failed. `url` names the endpoint involved, when there is one."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class WorkerRequestError(WorkerError):
    """The server rejected the request (HTTP 4xx). Not retried: the same request would fail again."""

    def __init__(self, message: str, *, url: str | None = None, status: int, body: str = "") -> None:
        super().__init__(message, url=url)
        self.status = status
        self.body = body


class ContextLengthError(WorkerRequestError):
    """The prompt plus max_tokens does not fit the served model's context window.

    Split out so a controller can react (shorter chunk, smaller max_tokens) instead of failing the run."""


class ServerStartError(WorkerError):
    """A vLLM server did not become healthy. The message carries the tail of its log."""

    def __init__(self, message: str, *, url: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, url=url)
        self.log_tail = log_tail
