"""A secret (API key, secret header value) never reaches an error text, a record or the CLI."""
from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from rlm_rig.configs.load import load_config
from rlm_rig.experiments.cli import app
from rlm_rig.worker.client import WorkerClient
from rlm_rig.worker.errors import WorkerRequestError
from rlm_rig.worker.settings import MissingSecret, ServerSettings


class _Echo401(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"error": {"message": f"bad key {self.headers.get('Authorization')} "
                                                f"api-key={self.headers.get('api-key')}"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def echo_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo401)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()
    t.join()


def test_a_401_echoing_the_key_raises_an_error_without_it(echo_server):
    client = WorkerClient(echo_server, "m", api_key="sk-SECRET-123", headers={"api-key": "hdr-SECRET-456"},
                          max_retries=0)
    with pytest.raises(WorkerRequestError) as info:
        asyncio.run(client.chat([{"role": "user", "content": "hi"}]))
    err = info.value
    assert err.status == 401 and "***" in str(err)
    for secret in ("sk-SECRET-123", "hdr-SECRET-456"):
        assert secret not in str(err) and secret not in err.body


def test_a_key_pasted_as_the_variable_name_is_never_echoed(tmp_path):
    with pytest.raises(ValueError) as info:
        ServerSettings(api_key_env="sk-SECRET-123")
    assert "sk-SECRET-123" not in str(info.value) and "is not an environment variable name" in str(info.value)
    with pytest.raises(ValueError) as info:
        ServerSettings(headers_env={"api-key": "hdr-SECRET-456"})
    assert "hdr-SECRET-456" not in str(info.value)
    d = load_config("cpu-tiny").model_dump(mode="json")
    d["worker"]["server"]["api_key_env"] = "sk-SECRET-123"
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(app, ["config", "-c", str(p)], env={"COLUMNS": "300"})
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "sk-SECRET" not in r.output and "is not an environment variable name" in r.output


def test_missing_secret_names_the_variable_only(monkeypatch):
    monkeypatch.delenv("RLM_RIG_UNIT_KEY", raising=False)
    with pytest.raises(MissingSecret) as info:
        ServerSettings(url="http://h/v1", api_key_env="RLM_RIG_UNIT_KEY").api_key()
    assert "RLM_RIG_UNIT_KEY" in str(info.value)
