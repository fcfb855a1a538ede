"""worker: serve a model and answer prompts.

vLLM server lifecycle (VLLMServer), async OpenAI-compatible client (WorkerClient), a blocking facade
for sync callers (SyncWorker), an in-process transformers backend (TransformersWorker), token counting,
and the tiny random Qwen2 used by the tests. Imports nothing of the rig; torch loads only on use.
"""
