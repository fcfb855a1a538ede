"""The two OpenAI-compatible servers every harness in the peer benchmark talks to, on 127.0.0.1.

- The **controller** is scripted: it writes the same two-turn program in each harness's dialect
  (the served model name picks the dialect: ``rig``, ``rlms`` or ``dspy``). Turn 1 splits the
  document into K chunks (K is read from the question, ``[K=16]``), sends all K in one batched call,
  sums the replies and prints ``TOTAL=<n>``; once that line is in the conversation, turn 2 answers.
- The **worker** answers ``1`` to every request, after ``--delay`` seconds (0: at once). It counts
  requests and the most it had in flight at once; ``GET /stats`` reads and resets the counters.

Standard library only, so it runs under any of the benchmark's interpreters.

    python bench/peers/stubs.py --controller-port 0 --worker-port 0 [--delay 0.25]

prints ``READY <controller port> <worker port>`` once both listen.
"""
from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTRUCTION = "How many chunks is this? Reply with a number."

def program(dialect: str, k: int) -> str:
    """Turn 1 in each dialect: split into k chunks, one batched call of k, sum one per reply (the stub
    worker replies "1"; a real random tiny model's reply is no count), so the answer is k either way."""
    doc = "prompt" if dialect == "rig" else "context"
    call = (f"sub_call_batch(chunks, {INSTRUCTION!r})" if dialect == "rig"
            else f"llm_query_batched([c + '\\n\\n' + {INSTRUCTION!r} for c in chunks])")
    return (f"step = -(-len({doc}) // {k})\n"
            f"chunks = [{doc}[i * step:(i + 1) * step] for i in range({k})]\n"
            f"replies = {call}\n"
            "total = sum(1 for r in replies if r is not None)\n"
            "print('TOTAL=' + str(total))\n")


ANSWER = {  # turn 2, once TOTAL=<n> is in the conversation
    "rig": "FINAL_VAR(total)",
    "rlms": "```repl\nanswer['content'] = str(total)\nanswer['ready'] = True\n```",
    "dspy": "SUBMIT(answer=str(total))",
}


def controller_reply(dialect: str, messages: list[dict]) -> str:
    text = "\n".join(str(m.get("content", "")) for m in messages)
    k = int(m.group(1)) if (m := re.search(r"\[K=(\d+)\]", text)) else 16
    if re.search(r"TOTAL=\d+", text):
        body = ANSWER[dialect]
    else:
        body = f"```{'python' if dialect == 'dspy' else 'repl'}\n{program(dialect, k)}```"
    if dialect == "dspy":  # DSPy's ChatAdapter: one section per output field
        code = body if body.startswith("```") else f"```python\n{body}\n```"
        return f"[[ ## reasoning ## ]]\nScripted.\n\n[[ ## code ## ]]\n{code}\n\n[[ ## completed ## ]]"
    return body


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.in_flight = self.max_in_flight = 0

    def enter(self) -> None:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def read_and_reset(self) -> dict:
        with self.lock:
            out = {"requests": self.requests, "max_in_flight": self.max_in_flight}
            self.requests = self.max_in_flight = 0
            return out


def make_handler(role: str, delay: float, counters: Counters) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real servers do
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, obj: dict, status: int = 200) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send({})
            elif self.path.endswith("/models"):
                self._send({"object": "list", "data": [{"id": n, "object": "model", "max_model_len": 10**7}
                                                       for n in ("rig", "rlms", "dspy", "worker")]})
            elif self.path == "/stats":
                self._send(counters.read_and_reset())
            else:
                self._send({"error": "not found"}, 404)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path == "/tokenize":  # vLLM's endpoint, which the rig's context guard asks
                text = body.get("prompt") or "".join(str(m.get("content", "")) for m in body.get("messages") or [])
                self._send({"count": len(text) // 4})
                return
            if not self.path.endswith("/chat/completions"):
                self._send({"error": "not found"}, 404)
                return
            model = str(body.get("model", "")).split("/")[-1]
            messages = body.get("messages") or []
            counters.enter()
            try:
                if role == "worker":
                    if delay:
                        time.sleep(delay)
                    text = "1"
                else:
                    text = controller_reply(model if model in ANSWER else "rig", messages)
            finally:
                counters.leave()
            prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
            self._send({
                "id": "stub", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": 1,
                          "total_tokens": prompt_chars // 4 + 1},
            })

    return Handler


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # a batch of 128 connects at once


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--controller-port", type=int, default=0)
    ap.add_argument("--worker-port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds the worker takes per request")
    args = ap.parse_args()
    servers = []
    for role, port in (("controller", args.controller_port), ("worker", args.worker_port)):
        srv = StubServer(("127.0.0.1", port), make_handler(role, args.delay, Counters()))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    print("READY", servers[0].server_address[1], servers[1].server_address[1], flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
