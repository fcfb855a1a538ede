"""Frame format on the dedicated protocol pipes (shared by parent and kernel; stdlib only).

A frame is 1 kind byte + 4-byte big-endian length + payload. Kind b"J" carries UTF-8 JSON
(never unpickle what untrusted code wrote), kind b"B" carries raw bytes (the prompt, sent once,
without JSON escaping cost).

From the kernel, every large string (output, error, final answer, sub_call chunks and
instructions) travels as a B frame *attached* to the J frame before it ("n_blobs": k), and the J
frame itself must stay small. Why: decoding JSON can cost ~20 bytes of parent memory per byte
(`[[],[],...]`), while decoding a string costs about one; so the parent's memory and decode time
stay proportional to bounded byte counts whatever the kernel forges.
"""
from __future__ import annotations

import json
import os
import struct

HEADER = struct.Struct(">cI")
KIND_JSON = b"J"
KIND_BYTES = b"B"
MAX_FRAME = 0xFFFFFFFF


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame."""


# Built once: json.dumps with keyword arguments builds a new encoder per call, and json.loads goes
# through a class attribute (JSONDecoder.decode) that code in the kernel could patch; a bound method
# taken at import keeps the function it was made with. Both sit on every message's path.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_DECODE = json.JSONDecoder().decode


def encode_json(obj: object) -> bytes:
    payload = _ENCODE(obj).encode("utf-8", "surrogatepass")
    return HEADER.pack(KIND_JSON, len(payload)) + payload


def encode_bytes(data: bytes) -> bytes:
    return HEADER.pack(KIND_BYTES, len(data)) + data


def encode_with_blobs(obj: dict, blobs: list[str]) -> bytes:
    """One J frame announcing len(blobs) B frames, then the strings as UTF-8 (lone surrogates kept)."""
    obj = dict(obj, n_blobs=len(blobs))
    parts = [encode_json(obj)]
    for text in blobs:
        parts.append(encode_bytes(str.encode(text, "utf-8", "surrogatepass")))  # a str subclass cannot lie here
    return b"".join(parts)


def decode_json(payload: bytes) -> dict:
    try:
        obj = _DECODE(payload.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: '[' nested 300k deep
        raise ProtocolError(f"bad JSON frame: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise ProtocolError("frame is not an object with a string 't' field")
    return obj


class FrameDecoder:
    """Incremental decoder for a non-blocking reader; refuses frames above `max_frame` bytes."""

    def __init__(self, max_frame: int, max_json: int | None = None) -> None:
        self.max_frame = max_frame
        self.max_json = max_frame if max_json is None else max_json
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes read but not yet returned as frames."""
        return len(self._buf)

    def next_frame(self) -> tuple[bytes, bytes] | None:
        if len(self._buf) < HEADER.size:
            return None
        kind, length = HEADER.unpack_from(self._buf)
        if kind not in (KIND_JSON, KIND_BYTES):
            raise ProtocolError(f"unknown frame kind {kind!r}")
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_frame}-byte cap")
        if kind == KIND_JSON and length > self.max_json:
            raise ProtocolError(f"JSON frame of {length} bytes exceeds the {self.max_json}-byte cap")
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER.size:end])
        del self._buf[:end]
        return kind, payload


def read_exact(fd: int, n: int) -> bytes:
    """Blocking read of exactly n bytes (kernel side); EOFError when the parent is gone."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("protocol pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class FrameReader:
    """Blocking frame reads through one buffer (kernel side): a small message costs one read(2)
    instead of two (header, then payload); every system call passes the seccomp filter."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()

    def read_frame(self) -> tuple[bytes, bytes]:
        buf = self.buf
        while len(buf) < HEADER.size:
            self._fill(HEADER.size - len(buf))
        kind, length = HEADER.unpack_from(buf)
        end = HEADER.size + length
        while len(buf) < end:
            self._fill(end - len(buf))
        payload = bytes(buf[HEADER.size:end])
        del buf[:end]
        return kind, payload

    def _fill(self, need: int) -> None:
        chunk = os.read(self.fd, min(max(need, 1 << 16), 1 << 20))
        if not chunk:
            raise EOFError("protocol pipe closed")
        self.buf += chunk


def read_frame(fd: int) -> tuple[bytes, bytes]:
    kind, length = HEADER.unpack(read_exact(fd, HEADER.size))
    return kind, read_exact(fd, length)


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all bytes (kernel side)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
