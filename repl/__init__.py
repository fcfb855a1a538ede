"""Sandboxed Python REPL for model-written code: one confined kernel process per run.

See docs/SANDBOX.md for what is isolated and what is not.
"""
