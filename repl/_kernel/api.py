"""The names model code sees besides the document, per dialect.

rig: `prompt`, sub_call, sub_call_batch (one-shot worker calls), rlm_query, rlm_query_batched (child RLMs),
FINAL, FINAL_VAR, SubCallError (and the `answer` dict).
official (the names of the `rlms` package): `context`, llm_query, llm_query_batched, rlm_query,
rlm_query_batched, SHOW_VARS and the `answer` dict. Custom tools are stubs whose calls go to the parent.

sub_call travels to the parent over the protocol pipe (never the network); calls from several
threads are serialised by one lock, so concurrency comes from sub_call_batch, which the
parent's handler runs in parallel.
"""
from __future__ import annotations

import threading
from typing import Callable

from .wire import KIND_JSON, FrameReader, decode_json, encode_json, encode_with_blobs, write_all


class SubCallError(RuntimeError):
    """A sub_call failed in the parent (worker error, cap reached, ...).

    For sub_call_batch, `results` holds the texts that did succeed (None where failed) and
    `errors` maps batch index -> error message.
    """

    def __init__(self, message: str, *, results: list | None = None, errors: dict | None = None) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors or {}


class KernelLink:
    """The kernel end of the protocol pipes; one lock guards every exchange."""

    def __init__(self, fd_in: int, fd_out: int, max_request_chars: int, max_batch: int = 1024,
                 max_tool_chars: int = 1_000_000) -> None:
        self.fd_in = fd_in
        self.reader = FrameReader(fd_in)
        self.fd_out = fd_out
        self.max_request_chars = max_request_chars
        self.max_batch = max_batch
        self.max_tool_chars = max_tool_chars
        self.lock = threading.RLock()
        self._next_id = 0
        self.sub_calls = 0
        # The running cell's nonce (from the parent's "run" message); None between cells. Every
        # frame of a cell carries it, and a thread that outlives its cell gets a SubCallError
        # instead of reading (and swallowing) the next cell's messages.
        self.nonce: str | None = None

    def send(self, obj: dict) -> None:
        with self.lock:
            write_all(self.fd_out, encode_json(obj))

    def send_blobs(self, obj: dict, blobs: list[str]) -> None:
        with self.lock:
            write_all(self.fd_out, encode_with_blobs(obj, blobs))

    def finish_cell(self, obj: dict, blobs: list[str]) -> None:
        """Send the cell's reply and close the cell, under one hold of the lock: a thread's sub_call
        either reaches the parent before this reply or fails as outside any cell."""
        with self.lock:
            data = encode_with_blobs(dict(obj, n=self.nonce), blobs)  # a MemoryError here keeps the cell open
            self.nonce = None
            write_all(self.fd_out, data)

    def receive(self) -> dict:
        with self.lock:
            return self._receive()

    def _receive(self) -> dict:
        while True:
            kind, payload = self.reader.read_frame()
            if kind == KIND_JSON:
                return decode_json(payload)

    def next_cell(self) -> dict:
        """Wait for the parent's next message between cells, WITHOUT the lock: a thread's sub_call
        must fail at once (no cell is running), not wait for the next cell. No other thread reads
        the pipe then, since request() refuses while no nonce is set."""
        msg = self._receive()
        with self.lock:
            self.nonce = msg.get("n") if msg.get("t") == "run" and isinstance(msg.get("n"), str) else None
        return msg

    def request(self, reqs: list[dict], kind: str = "llm", model: str | None = None) -> list[dict]:
        # The parent counts again on what it receives; these early refusals only save a round trip.
        if len(reqs) > self.max_batch:
            raise SubCallError(f"sub_call_batch of {len(reqs)} requests exceeds the sandbox cap of "
                               f"{self.max_batch} per batch; split it into smaller batches")
        total = sum(str.__len__(r["chunk"]) + str.__len__(r["instruction"]) for r in reqs)
        if total > self.max_request_chars:
            raise SubCallError(
                f"sub_call payload of {total} chars exceeds the sandbox cap of {self.max_request_chars}; "
                "send smaller chunks")
        with self.lock:
            if self.nonce is None:
                raise SubCallError("sub_call was called outside a running cell (by a thread that outlived the "
                                   "cell that started it); call sub_call from the cell itself, or wait for "
                                   "your threads before the cell ends")
            self._next_id += 1
            call_id = self._next_id
            blobs = []
            for r in reqs:
                blobs += [r["chunk"], r["instruction"]]
            self.send_blobs({"t": "sub", "id": call_id, "n": self.nonce, "kind": kind, "model": model,
                             "reqs": [{"index": r["index"]} for r in reqs]}, blobs)
            while True:
                msg = self.receive()
                if msg.get("t") == "subr" and msg.get("id") == call_id:
                    break
        if isinstance(msg.get("refused"), str):
            raise SubCallError(msg["refused"])
        self.sub_calls += len(reqs)
        replies = msg.get("replies")
        if not isinstance(replies, list) or len(replies) != len(reqs):
            raise SubCallError("the parent sent a malformed sub_call reply")
        return replies


    def call_tool(self, name: str, payload: str) -> str:
        """One custom tool call: the JSON of its arguments out, the JSON of its result back."""
        if str.__len__(payload) > self.max_tool_chars:
            raise ToolError(f"{name}: arguments of {str.__len__(payload)} JSON characters exceed the sandbox cap "
                            f"of {self.max_tool_chars}")
        with self.lock:
            if self.nonce is None:
                raise ToolError(f"{name} was called outside a running cell (by a thread that outlived its cell)")
            self._next_id += 1
            call_id = self._next_id
            self.send_blobs({"t": "tool", "id": call_id, "n": self.nonce, "name": name}, [payload])
            while True:
                msg = self.receive()
                if msg.get("t") == "toolr" and msg.get("id") == call_id:
                    break
        if isinstance(msg.get("error"), str):
            raise ToolError(msg["error"])
        if not isinstance(msg.get("result"), str):
            raise ToolError(f"{name}: the parent sent a malformed tool reply")
        return msg["result"]


class ToolError(RuntimeError):
    """A custom tool failed in the parent (its own exception, a timeout, a cap, a non-JSON result)."""


class AnswerDict(dict):
    """`answer`: a dict whose `answer["ready"] = <truthy>` ends the run with `answer["content"]`.

    The content is taken at that moment (as in the official package); the kernel also checks the
    dict once the cell ends, for `answer.update(ready=True)` or a plain dict bound to `answer`."""

    def __init__(self, on_ready: Callable[["AnswerDict"], None]) -> None:
        dict.__init__(self, content="", ready=False)
        self._on_ready = on_ready

    def __setitem__(self, key, value) -> None:
        dict.__setitem__(self, key, value)
        if key == "ready" and value:
            self._on_ready(self)


def _check_text(value: object, what: str, fn: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{fn}: {what} must be a str, got {type(value).__name__}")
    return value


# long: the REPL's API as closures over private references (sub_call, FINAL_VAR), so model code cannot rebind them
def make_api(link: KernelLink, namespace: dict, on_final: Callable[[str, "str | None"], None]) -> dict:
    """Build the functions bound to this kernel's link and namespace."""

    def one(chunk: str, instruction: str, model: "str | None", kind: str, fn: str) -> str:
        _check_text(chunk, "chunk", fn)
        _check_text(instruction, "instruction", fn)
        if model is not None:
            _check_text(model, "model", fn)
        reply = link.request([{"chunk": chunk, "instruction": instruction, "index": None}], kind=kind,
                             model=model)[0]
        if reply.get("error") is not None or not isinstance(reply.get("text"), str):
            raise SubCallError(str(reply.get("error") or f"{fn} returned no text"))
        return reply["text"]

    def sub_call(chunk: str, instruction: str, model: str | None = None) -> str:
        """Ask the worker LM `instruction` about `chunk` once (the worker named `model`, else the default);
        returns its text or raises SubCallError."""
        return one(chunk, instruction, model, "llm", "sub_call")

    def rlm_query(chunk: str, instruction: str, model: str | None = None) -> str:
        """A child RLM whose `prompt` is `chunk` and whose question is `instruction`, with its own REPL (a
        plain worker call at rlm.max_depth); returns its answer or raises SubCallError."""
        return one(chunk, instruction, model, "rlm", "rlm_query")

    def sub_call_batch(chunks, instruction: str | None = None, model: str | None = None) -> list[str]:
        """Run many sub_calls concurrently: (chunks, instruction) or ([(chunk, instruction), ...]); `model`
        names the worker for all of them."""
        return batch(chunks, instruction, model, "llm", "sub_call_batch")

    def rlm_query_batched(chunks, instruction: str | None = None, model: str | None = None) -> list[str]:
        """Several child RLMs at once, as sub_call_batch takes its arguments; answers in order."""
        return batch(chunks, instruction, model, "rlm", "rlm_query_batched")

    def batch(chunks, instruction: "str | None", model: "str | None", kind: str, fn: str) -> list[str]:
        if model is not None:
            _check_text(model, "model", fn)
        if isinstance(chunks, (str, bytes)) or not hasattr(chunks, "__iter__"):
            raise TypeError(f"{fn}: pass a list of chunks (and one instruction) or a list of "
                            "(chunk, instruction) pairs")
        items = list(chunks)
        reqs = []
        for i, item in enumerate(items):
            if instruction is None:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise TypeError(f"{fn}: item {i} must be a (chunk, instruction) pair when no "
                                    "instruction is given")
                chunk, instr = item
            else:
                chunk, instr = item, instruction
            _check_text(chunk, f"chunk {i}", fn)
            _check_text(instr, f"instruction {i}", fn)
            reqs.append({"chunk": chunk, "instruction": instr, "index": i})
        if not reqs:
            return []
        replies = link.request(reqs, kind=kind, model=model)
        results: list[str | None] = []
        errors: dict[int, str] = {}
        for i, reply in enumerate(replies):
            text = reply.get("text") if isinstance(reply, dict) else None
            err = reply.get("error") if isinstance(reply, dict) else "malformed reply"
            if err is not None or not isinstance(text, str):
                errors[i] = str(err or "sub_call returned no text")
                results.append(None)
            else:
                results.append(text)
        if errors:
            first = min(errors)
            raise SubCallError(
                f"{len(errors)} of {len(reqs)} calls of {fn} failed (indices {sorted(errors)[:20]}); "
                f"first error: {errors[first]}. Successful texts are in the exception's .results.",
                results=results, errors=errors)
        return results  # type: ignore[return-value]

    def FINAL(answer) -> None:  # noqa: N802 - the name the RLM prompt teaches
        """Set the final answer of this run (the cell still runs to its end)."""
        on_final(answer if isinstance(answer, str) else str(answer), None)

    def FINAL_VAR(name: str) -> None:  # noqa: N802
        """Set the final answer to the value of the variable called `name`."""
        if not isinstance(name, str):
            raise TypeError(f"FINAL_VAR expects the variable's name as a str, got {type(name).__name__}")
        key = name.strip()
        if key not in namespace:
            raise NameError(f"FINAL_VAR: no variable named {key!r} exists in the REPL; assign it first "
                            f"or call FINAL(value)", name=key)
        value = namespace[key]
        if type(value) is AnswerDict:  # the kernel's own `answer` dict is not a variable the model made
            if not dict.get(value, "ready"):
                raise NameError(f"FINAL_VAR: {key!r} is still the REPL's empty answer dict; assign it first "
                                f"or call FINAL(value)", name=key)
            value = dict.get(value, "content", "")
        on_final(value if isinstance(value, str) else str(value), key)

    return {"sub_call": sub_call, "sub_call_batch": sub_call_batch, "rlm_query": rlm_query,
            "rlm_query_batched": rlm_query_batched, "FINAL": FINAL, "FINAL_VAR": FINAL_VAR,
            "SubCallError": SubCallError}


def _check_model(model: object, fn: str) -> "str | None":
    if model is not None and (not isinstance(model, str) or len(model) > 200):
        raise TypeError(f"{fn}: model must be None or a model name (a str of at most 200 characters)")
    return model


def _prompts(prompts: object, fn: str) -> list:
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
        raise TypeError(f"{fn}: pass a list of prompt strings")
    items = list(prompts)
    for i, p in enumerate(items):
        _check_text(p, f"prompt {i}", fn)
    return items


# long: the official dialect's names as closures over the link, like make_api's; each is a few lines
def make_official_api(link: KernelLink, namespace: dict, hidden: "Callable[[], set]") -> dict:
    """llm_query / rlm_query (and their batched forms) return the reply text, or a string that starts with
    "Error: " when the call failed (the official package's convention: they never raise for a failed call)."""

    def ask(prompts: list, kind: str, model: "str | None") -> list:
        reqs = [{"chunk": p, "instruction": "", "index": i} for i, p in enumerate(prompts)]
        try:
            replies = link.request(reqs, kind=kind, model=model)
        except SubCallError as exc:
            return [f"Error: {exc}"] * len(prompts)
        out = []
        for reply in replies:
            text = reply.get("text") if isinstance(reply, dict) else None
            err = reply.get("error") if isinstance(reply, dict) else "malformed reply"
            out.append(text if err is None and isinstance(text, str) else f"Error: {err or 'no text'}")
        return out

    def llm_query(prompt: str, model: "str | None" = None) -> str:
        """One plain call to the worker model with `prompt`; returns its reply (or "Error: ...")."""
        return ask([_check_text(prompt, "prompt", "llm_query")], "llm", _check_model(model, "llm_query"))[0]

    def llm_query_batched(prompts: list, model: "str | None" = None) -> list:
        """Many plain worker calls at once; replies in the order of `prompts`."""
        items = _prompts(prompts, "llm_query_batched")
        return ask(items, "llm", _check_model(model, "llm_query_batched")) if items else []

    def rlm_query(prompt: str, model: "str | None" = None) -> str:
        """A child RLM whose `context` is `prompt`, with its own REPL; returns its answer (or "Error: ...")."""
        return ask([_check_text(prompt, "prompt", "rlm_query")], "rlm", _check_model(model, "rlm_query"))[0]

    def rlm_query_batched(prompts: list, model: "str | None" = None) -> list:
        """Several child RLMs, run concurrently; answers in the order of `prompts`."""
        items = _prompts(prompts, "rlm_query_batched")
        return ask(items, "rlm", _check_model(model, "rlm_query_batched")) if items else []

    def SHOW_VARS() -> str:  # noqa: N802 - the official name
        """The REPL's variables and their types (the kernel's own functions and `answer` left out)."""
        skip = hidden()
        names = {k: type(v).__name__ for k, v in list(namespace.items())
                 if isinstance(k, str) and not k.startswith("_") and k != "answer" and k not in skip}
        if not names:
            return "The REPL holds no variables of yours yet; create some in a ```repl block."
        return f"Variables in the REPL: {names}"

    return {"llm_query": llm_query, "llm_query_batched": llm_query_batched, "rlm_query": rlm_query,
            "rlm_query_batched": rlm_query_batched, "SHOW_VARS": SHOW_VARS}


def make_tools(link: KernelLink, tools: dict) -> dict:
    """One stub per custom tool: JSON arguments to the parent, the JSON result back as Python values."""
    import json

    def stub_for(name: str, doc: str):
        def tool(*args, **kwargs):
            try:
                payload = json.dumps({"args": list(args), "kwargs": kwargs}, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name}: arguments must be JSON-serialisable ({exc})") from None
            return json.loads(link.call_tool(name, payload))

        tool.__name__ = tool.__qualname__ = name
        tool.__doc__ = doc
        return tool

    return {name: stub_for(name, doc if isinstance(doc, str) else "") for name, doc in tools.items()
            if isinstance(name, str) and name.isidentifier()}
