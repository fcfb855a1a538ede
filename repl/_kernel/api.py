"""The names model code sees besides `prompt`: sub_call, sub_call_batch, FINAL, FINAL_VAR, SubCallError.

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

    def __init__(self, fd_in: int, fd_out: int, max_request_chars: int, max_batch: int = 1024) -> None:
        self.fd_in = fd_in
        self.reader = FrameReader(fd_in)
        self.fd_out = fd_out
        self.max_request_chars = max_request_chars
        self.max_batch = max_batch
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

    def request(self, reqs: list[dict]) -> list[dict]:
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
            self.send_blobs({"t": "sub", "id": call_id, "n": self.nonce,
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


def _check_text(value: object, what: str, fn: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{fn}: {what} must be a str, got {type(value).__name__}")
    return value


# long: the REPL's API as closures over private references (sub_call, FINAL_VAR), so model code cannot rebind them
def make_api(link: KernelLink, namespace: dict, on_final: Callable[[str, "str | None"], None]) -> dict:
    """Build the functions bound to this kernel's link and namespace."""

    def sub_call(chunk: str, instruction: str) -> str:
        """Ask the worker LM `instruction` about `chunk`; returns its text or raises SubCallError."""
        _check_text(chunk, "chunk", "sub_call")
        _check_text(instruction, "instruction", "sub_call")
        reply = link.request([{"chunk": chunk, "instruction": instruction, "index": None}])[0]
        if reply.get("error") is not None or not isinstance(reply.get("text"), str):
            raise SubCallError(str(reply.get("error") or "sub_call returned no text"))
        return reply["text"]

    def sub_call_batch(chunks, instruction: str | None = None) -> list[str]:
        """Run many sub_calls concurrently: (chunks, instruction) or ([(chunk, instruction), ...])."""
        if isinstance(chunks, (str, bytes)) or not hasattr(chunks, "__iter__"):
            raise TypeError("sub_call_batch: pass a list of chunks (and one instruction) or a list of "
                            "(chunk, instruction) pairs")
        items = list(chunks)
        reqs = []
        for i, item in enumerate(items):
            if instruction is None:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise TypeError(f"sub_call_batch: item {i} must be a (chunk, instruction) pair when no "
                                    "instruction is given")
                chunk, instr = item
            else:
                chunk, instr = item, instruction
            _check_text(chunk, f"chunk {i}", "sub_call_batch")
            _check_text(instr, f"instruction {i}", "sub_call_batch")
            reqs.append({"chunk": chunk, "instruction": instr, "index": i})
        if not reqs:
            return []
        replies = link.request(reqs)
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
                f"{len(errors)} of {len(reqs)} sub_calls failed (indices {sorted(errors)[:20]}); "
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
        on_final(value if isinstance(value, str) else str(value), key)

    return {"sub_call": sub_call, "sub_call_batch": sub_call_batch, "FINAL": FINAL,
            "FINAL_VAR": FINAL_VAR, "SubCallError": SubCallError}
