"""Sandboxed Python REPL for model-written code: one confined kernel process per run.

See docs/SANDBOX.md for what is isolated and what is not.
"""
from ._kernel.api import SubCallError
from .sandbox import PreparedKernel, Sandbox
from .types import (CellResult, IsolationReport, SandboxError, SandboxLimits, SubCallHandler, SubCallReply,
                    SubCallRequest)

__all__ = ["PreparedKernel", "Sandbox", "SandboxLimits", "CellResult", "SubCallRequest", "SubCallReply", "SubCallHandler",
           "SandboxError", "IsolationReport", "SubCallError"]
