"""A recording HTTP proxy in front of a real vLLM server: what a harness really sent, read at the wire.

Every request goes on to the server and the server's answer comes back. ``script`` may put a scripted text in a
chat reply's message (the server still answered that very request): a tiny random model writes no REPL code, so
a test that needs a served controller to call rlm_query scripts its words while the server checks the request.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


def key(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True)


class Recorder:
    """An HTTP proxy in front of a vLLM server that keeps every chat request (its messages, and its whole body)."""

    def __init__(self, upstream: str, script: Callable[[dict], str | None] | None = None):
        """``script``: request body -> the reply text to put in the server's answer (None: the server's own)."""
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.script = script
        self.chats: list[list[dict]] = []
        self.bodies: list[dict] = []  # every chat request body, in arrival order
        self.prompt_tokens: dict[str, int] = {}  # the server's own count per prompt (key's key)
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=600, trust_env=False)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def take(self) -> list[list[dict]]:
        with self.lock:
            out, self.chats = self.chats, []
        return out

    def keep(self, body: bytes, r: httpx.Response) -> bytes:
        """Record one chat request; the answer's bytes, with the scripted text when there is one."""
        request = json.loads(body)
        with self.lock:
            self.chats.append(request["messages"])
            self.bodies.append(request)
            if r.status_code == 200:
                self.prompt_tokens[key(request["messages"])] = r.json()["usage"]["prompt_tokens"]
        text = self.script(request) if self.script is not None and r.status_code == 200 else None
        if text is None:
            return r.content
        answer = r.json()
        answer["choices"][0]["message"]["content"] = text
        answer["choices"][0]["finish_reason"] = "stop"
        return json.dumps(answer).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
                r = rec.client.request(method, rec.upstream + self.path, content=body,
                                       headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                chat = method == "POST" and self.path.endswith("/chat/completions")
                content = rec.keep(body or b"{}", r) if chat else r.content
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.client.close()
