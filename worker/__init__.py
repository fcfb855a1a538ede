"""worker: serve a model and answer prompts.

vLLM server lifecycle (VLLMServer), async OpenAI-compatible client (WorkerClient), a blocking facade
for sync callers (SyncWorker), an in-process transformers backend (TransformersWorker), token counting,
and the tiny random Qwen2 used by the tests. Imports nothing of the rig; torch loads only on use.
"""

from worker.client import Completion, WorkerClient, validate_messages
from worker.errors import ContextLengthError, ServerStartError, WorkerError, WorkerRequestError
from worker.server import ServerSpec, VLLMServer, find_free_port, list_models, normalize_base_url
from worker.smollm2 import SmolLM2Error, ensure_smollm2
from worker.sync import AsyncChatWorker, SyncWorker
from worker.tiny import build_tiny_model, ensure_tiny_model
from worker.tokens import count_chat_tokens, count_tokens, load_fast_tokenizer, load_tokenizer
from worker.watch import WorkerDeadError, WorkerWatch, failure_kind


def __getattr__(name: str):
    # TransformersWorker pulls in torch/transformers; load it only when asked for.
    if name == "TransformersWorker":
        from worker.hf import TransformersWorker

        return TransformersWorker
    raise AttributeError(f"module 'worker' has no attribute {name!r}")


__all__ = [
    "WorkerDeadError",
    "WorkerWatch",
    "failure_kind",
    "AsyncChatWorker",
    "Completion",
    "ContextLengthError",
    "ServerSpec",
    "ServerStartError",
    "SmolLM2Error",
    "SyncWorker",
    "TransformersWorker",
    "VLLMServer",
    "WorkerClient",
    "WorkerError",
    "WorkerRequestError",
    "build_tiny_model",
    "count_chat_tokens",
    "count_tokens",
    "ensure_smollm2",
    "ensure_tiny_model",
    "find_free_port",
    "list_models",
    "load_fast_tokenizer",
    "load_tokenizer",
    "normalize_base_url",
    "validate_messages",
]
