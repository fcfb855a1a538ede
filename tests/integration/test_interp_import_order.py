"""nnsight imported first must not break the worker's async HTTP client in the same process."""
import subprocess
import sys
from pathlib import Path

CODE = """
import asyncio
import rlm_rig.interp.methods.capture, rlm_rig.interp.methods.patching  # nnsight first, through interp
from rlm_rig.worker.client import WorkerClient
from rlm_rig.worker.errors import WorkerError

async def main():
    c = WorkerClient("http://127.0.0.1:9/v1", "m", max_tokens=1, max_retries=0)
    try:
        await c.chat([{"role": "user", "content": "hi"}])
    except WorkerError as e:  # a refused connection: the client itself worked
        print("WorkerError", "Connect" in str(e))

asyncio.run(main())
"""


def test_interp_then_worker_client_in_one_process():
    r = subprocess.run([sys.executable, "-c", CODE], cwd=Path(__file__).resolve().parents[2],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "WorkerError True", r.stdout + r.stderr[-1000:]
