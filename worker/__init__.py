"""worker: serve a model and answer prompts (vLLM lifecycle, async client, transformers backend, tiny model)."""

from worker.tiny import build_tiny_model, ensure_tiny_model

__all__ = ["build_tiny_model", "ensure_tiny_model"]
