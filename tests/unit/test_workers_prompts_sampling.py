"""Issue 22 parts 3, 7, 9 without a server: the workers map, prompt files, sampling per level, head+tail
truncation, the turn counter, API keys read from the environment, and their bad inputs (one line, exit 2)."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from rlm_rig.configs.load import ConfigError, load_config, validate_config
from rlm_rig.controller import prompts
from rlm_rig.controller.subcalls import Route, UnknownModel, route_for
from rlm_rig.experiments.cli import app
from rlm_rig.worker.client import WorkerClient
from rlm_rig.worker.settings import MissingSecret, Sampling, ServerSettings

runner = CliRunner()


def _tiny() -> dict:
    return load_config("cpu-tiny").model_dump(mode="json")


def _two_workers(**b) -> dict:
    d = _tiny()
    w = d.pop("worker")
    d["workers"] = {"small": {**w, "default": True}, "big": {**w, "max_tokens": 9, **b}}
    return d


def _cli(tmp_path, data: dict, *args: str):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    return runner.invoke(app, [*args, "-c", str(p)], env={"COLUMNS": "300"})


def _one_line_exit_2(r, needle: str) -> None:
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.output


# -- part 3: several sub-models -------------------------------------------------------------------------
def test_workers_map_default_is_the_worker_and_saved_configs_reload():
    cfg = validate_config(_two_workers())
    assert cfg.default_worker_name() == "small" and list(cfg.worker_map()) == ["small", "big"]
    assert cfg.worker == cfg.workers["small"] and cfg.workers["big"].max_tokens == 9
    again = validate_config(cfg.model_dump(mode="json"))  # a run folder's config.yaml holds both sections
    assert again.hash() == cfg.hash()


def test_single_worker_section_is_the_default_named_worker():
    cfg = load_config("cpu-tiny")
    assert cfg.workers == {} and list(cfg.worker_map()) == ["worker"] and cfg.default_worker_name() == "worker"


@pytest.mark.parametrize("defaults", [0, 2])
def test_workers_map_needs_exactly_one_default(tmp_path, defaults):
    d = _two_workers(default=defaults == 2)
    if defaults == 0:
        d["workers"]["small"]["default"] = False
    r = _cli(tmp_path, d, "config")
    _one_line_exit_2(r, f"exactly one entry needs `default: true`, found {defaults}")


def test_worker_and_a_different_workers_default_conflict():
    d = _two_workers()
    d["worker"] = {**d["workers"]["small"], "default": False, "max_tokens": 3}
    with pytest.raises(ConfigError, match="either a worker: section or a workers: map"):
        validate_config(d)


def test_route_for_maps_names_and_refuses_unknown_ones():
    routes = {"a": Route("a", None, 4), "b": Route("b", None, 8, sampling_by_depth={2: Sampling(seed=3)})}
    assert route_for(routes, None, "a").name == "a" and route_for(routes, "b", "a").max_tokens == 8
    assert routes["b"].sampling_at(2) == {"temperature": 0.0, "top_p": 1.0, "seed": 3} and routes["b"].sampling_at(1) == {}
    with pytest.raises(UnknownModel, match="unknown model 'c': this rig serves a, b"):
        route_for(routes, "c", "a")


# -- part 7: prompt files, prologue, turn counter, sampling, truncation ---------------------------------
def _values(dialect: str = "rig") -> dict:
    return {**prompts.DIALECT_NAMES[dialect], "doc_type": "str", "doc_chars": 12345, "doc_lines": 10, "doc_tokens": 3000,
            "chunk_budget_tokens": 1500, "chunk_budget_chars": 5000, "max_iterations": 6, "max_sub_calls": 64,
            "max_depth": 1, "models": "small, big", "default_model": "small"}


@pytest.mark.parametrize("name", ["rig", "official"])
def test_shipped_prompt_files_render_every_placeholder(name):
    text = prompts.render_prompt_file(prompts.find_prompt_file(name), _values())
    assert "{" not in text.replace("{{", "") and "12,345" in text and "small, big" in text and "sub_call" in text
    official = prompts.render_prompt_file(prompts.find_prompt_file(name), _values("official"))
    assert "llm_query" in official and "context" in official


def test_system_prompt_file_is_used_by_the_run(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("Doc in {doc_var}: {doc_chars} chars; finish with {final}; {max_iterations} turns; {{literal}}\n")
    cfg = load_config("cpu-tiny", [f"controller.system_prompt_file={f}", "controller.user_prologue=Be terse."])
    shape = prompts.describe_shape("abc\ndef", 4.0)
    text = prompts.system_for(cfg, shape, "str", chunk_budget_tokens=10, chunk_budget_chars=40, can_nest=False,
                              sub_calls_enabled=True)
    assert text == "Doc in prompt: 7 chars; finish with FINAL(answer); 6 turns; {literal}\n"
    first = prompts.first_user_message("Q?", prologue=cfg.controller.user_prologue, max_iterations=6)
    assert first.startswith("Be terse.\n\nQuestion: Q?") and first.endswith("[turn 1 of 6]")


def test_missing_prompt_file_and_unknown_placeholder_fail_in_one_line(tmp_path):
    d = _tiny()
    d["controller"]["system_prompt_file"] = str(tmp_path / "nope.txt")
    _one_line_exit_2(_cli(tmp_path, d, "config"), "no such file")
    bad = tmp_path / "bad.txt"
    bad.write_text("hello {doc_chars} {secret_key}")
    d["controller"]["system_prompt_file"] = str(bad)
    _one_line_exit_2(_cli(tmp_path, d, "config"), "unknown placeholder {secret_key}")
    bad.write_text("attribute access {doc_chars.__class__}")
    _one_line_exit_2(_cli(tmp_path, d, "config"), "unknown placeholder {doc_chars.__class__}")


def test_turn_counter_in_feedback():
    fb = prompts.cell_feedback("out", truncated_from=None, notices=[], iteration=2, max_iterations=6)
    assert "[turn 3 of 6; 4 left]" in fb


def test_head_tail_keeps_both_ends_and_states_the_true_length():
    text = "HEAD" + "x" * 10_000 + "TAIL"
    cut = prompts.head_tail(text, 300)
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and "9,708 characters left out" in cut
    assert len(cut) < 400 and prompts.head_tail("short", 300) == "short"
    fb = prompts.cell_feedback(cut, truncated_from=len(text), notices=[], iteration=1, max_iterations=6)
    assert "it was 10,008 characters" in fb


def test_sampling_per_level_loads_and_reaches_the_request_body():
    cfg = load_config("cpu-tiny", ["worker.sampling={temperature: 0.7, top_p: 0.9, seed: 11}",
                                   "controller.sampling.seed=5", "worker.sampling_by_depth={2: {seed: 1}}"])
    assert cfg.worker.sampling == Sampling(temperature=0.7, top_p=0.9, seed=11) and cfg.controller.sampling.seed == 5
    assert cfg.worker.sampling_by_depth[2].seed == 1
    s = cfg.worker.sampling
    c = WorkerClient("http://127.0.0.1:9/v1", "m", temperature=s.temperature, top_p=s.top_p, seed=s.seed)
    body = c.build_payload([{"role": "user", "content": "hi"}])
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.7, 0.9, 11)
    assert "seed" not in WorkerClient("http://127.0.0.1:9/v1", "m").build_payload([{"role": "user", "content": "x"}])
    old = load_config("cpu-tiny", ["worker.temperature=0.3"])  # the old key still loads (configs.load.RENAMED)
    assert old.worker.sampling.temperature == 0.3


def test_controller_sampling_by_depth_picks_a_runs_sampling_and_reaches_the_request_body():
    from rlm_rig.controller.backends import request_sampling

    cfg = load_config("cpu-tiny", ["controller.sampling={temperature: 0.1, seed: 5}",
                                   "controller.sampling_by_depth={1: {temperature: 0.7, seed: 3}, 2: {top_p: 0.5}}"])
    c = cfg.controller
    assert c.sampling_at(0) == c.sampling and c.sampling_at(3) == c.sampling  # absent depth: controller.sampling
    assert c.sampling_at(1) == Sampling(temperature=0.7, seed=3)
    client = WorkerClient("http://127.0.0.1:9/v1", "m", temperature=0.1, seed=5)  # the backend's own: the root's
    msgs = [{"role": "user", "content": "hi"}]
    pick = ("temperature", "top_p", "seed")
    assert [client.build_payload(msgs, **request_sampling(c.sampling_at(d)))[k] for d in (0, 1, 2) for k in pick] == [
        0.1, 1.0, 5, 0.7, 1.0, 3, 0.0, 0.5, None]  # depth 2 has no seed: the root's does not leak into it
    assert validate_config(cfg.model_dump(mode="json")).controller.sampling_by_depth == c.sampling_by_depth


@pytest.mark.parametrize("entry, needle", [({-1: {"seed": 3}}, "depth -1 is not a nested run"),
                                           ({0: {"seed": 3}}, "depth 0 is not a nested run"),
                                           ({1: {"sed": 3}}, "controller.sampling_by_depth.1.sed: unknown key")])
def test_controller_sampling_by_depth_bad_entry_is_one_line_exit_2(tmp_path, entry, needle):
    d = _tiny()
    d["controller"]["sampling_by_depth"] = entry
    _one_line_exit_2(_cli(tmp_path, d, "config"), needle)


@pytest.mark.parametrize("entry, needle", [({0: {"seed": 3}}, "depth 0 makes no worker calls"),
                                           ({-2: {"seed": 3}}, "depth -2 makes no worker calls")])
def test_worker_sampling_by_depth_key_that_is_never_read_is_one_line_exit_2(tmp_path, entry, needle):
    d = _tiny()
    d["worker"]["sampling_by_depth"] = entry
    _one_line_exit_2(_cli(tmp_path, d, "config"), needle)


def test_a_live_fork_is_greedy_at_every_depth_and_old_trajectories_load():
    from rlm_rig.experiments.runs.fork import greedy_controller
    from rlm_rig.records.trajectory import Trajectory

    d = load_config("cpu-tiny", ["controller.sampling.temperature=0.4",
                                 "controller.sampling_by_depth={1: {temperature: 0.7, seed: 3}}"]).model_dump(mode="json")
    greedy_controller(d)
    c = validate_config(d).controller
    assert c.sampling.temperature == 0.0 and c.sampling_by_depth == {1: Sampling(temperature=0.0, seed=3)}
    old = {"run_id": "r", "question": "q", "doc_chars": 0, "doc_sha256": "", "config": {}, "config_hash": "",
           "models": {}, "versions": {}, "started_at": ""}  # written before controller_sampling existed
    assert Trajectory.model_validate(old).controller_sampling is None


# -- part 9: API keys from the environment ------------------------------------------------------------
def test_api_key_comes_from_the_named_variable_only(monkeypatch):
    s = ServerSettings(url="http://h/v1", api_key_env="RLM_RIG_UNIT_KEY", headers={"X-Team": "interp"})
    monkeypatch.delenv("RLM_RIG_UNIT_KEY", raising=False)
    with pytest.raises(MissingSecret, match="RLM_RIG_UNIT_KEY"):
        s.api_key()
    monkeypatch.setenv("RLM_RIG_UNIT_KEY", "k-123")
    assert s.auth_headers() == {"X-Team": "interp", "Authorization": "Bearer k-123"}
    with pytest.raises(ValueError, match="is not an environment variable name"):
        ServerSettings(api_key_env="sk-live-abc def")
    hidden = ServerSettings(url="http://h/v1", headers_env={"api-key": "RLM_RIG_UNIT_HDR"})
    monkeypatch.delenv("RLM_RIG_UNIT_HDR", raising=False)
    with pytest.raises(MissingSecret, match="headers_env.api-key names RLM_RIG_UNIT_HDR"):
        hidden.api_key()
    monkeypatch.setenv("RLM_RIG_UNIT_HDR", "h-456")
    assert hidden.auth_headers() == {"api-key": "h-456"}


def test_unset_api_key_env_fails_in_one_line_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("RLM_RIG_UNSET_KEY", raising=False)
    d = _tiny()
    d["worker"]["server"]["api_key_env"] = "RLM_RIG_UNSET_KEY"
    doc = tmp_path / "doc.txt"
    doc.write_text("hello")
    r = _cli(tmp_path, d, "ask", "--doc", str(doc), "-q", "x", "--out", str(tmp_path / "run"))
    _one_line_exit_2(r, "RLM_RIG_UNSET_KEY")
    assert not (tmp_path / "run" / "logs").exists()  # no server was started


# -- part 3: plan and doctor cover every served model -----------------------------------------------------
def test_plan_says_whether_a_second_worker_fits_on_a4500x2():
    from rlm_rig.configs.memplan import make_plan, render

    text = "\n".join(render(make_plan(load_config("a4500x2"))))
    assert "second worker: another Qwen/Qwen2.5-7B-Instruct beside the worker on GPU 1" in text
    assert "does not fit; put it on another GPU" in text
    small = load_config("a4500x2", ["worker.model=Qwen/Qwen2.5-3B-Instruct", "worker.server.gpu_memory_utilization=0.5",
                                    "worker.server.max_model_len=4096"])
    assert ": fits" in next(n for n in make_plan(small).notes if n.startswith("second worker"))


def test_plan_and_doctor_list_every_worker_of_a_map():
    from rlm_rig.configs.memplan import make_plan, render
    from rlm_rig.experiments.runs.doctor import models, servers

    d = load_config("a4500x2").model_dump(mode="json")
    w = d.pop("worker")
    d["workers"] = {"main": {**w, "default": True},
                    "big": {**w, "server": {**w["server"], "port": 8002}}}  # a second 7B on GPU 1: too much
    cfg = validate_config(d)
    plan = make_plan(cfg)
    text = "\n".join(render(plan))
    assert "worker: weights" in text and "worker big: weights" in text and not plan.fits
    assert [r for r, _ in servers(cfg)] == ["controller", "worker", "workers.big"]
    assert [r for r, _ in models(cfg)] == ["controller", "worker", "workers.big"]


def test_builtin_system_prompt_names_the_workers_only_when_there_are_several():
    shape = prompts.describe_shape("abc", 4.0)
    kw = dict(chunk_budget_tokens=10, chunk_budget_chars=40, can_nest=False, sub_calls_enabled=True)
    several = prompts.system_for(validate_config(_two_workers()), shape, "str", **kw)
    assert "optional `model=` naming the worker model to ask: small, big (without it: small)" in several
    assert "model=" not in prompts.system_for(load_config("cpu-tiny"), shape, "str", **kw)


def test_interp_selects_only_the_default_workers_sub_calls(tmp_path):
    """interp replays the default worker's model: a sub_call another worker answered is left out, and counted."""
    from collections import Counter

    from demo_run import make_demo_run
    from rlm_rig.interp.data.selection import iter_sub_calls
    from rlm_rig.records.runlog import RunFolder
    from rlm_rig.records.trajectory import Trajectory

    run = make_demo_run(tmp_path / "run", n_samples=1, chunks_per_sample=3)
    path = next(RunFolder(run).trajectories_dir.glob("*.json"))
    t = Trajectory.load(path)
    d = validate_config(_two_workers()).model_dump(mode="json")
    t.config = d
    for sc, name in zip(t.sub_calls, ["small", "big", None]):
        sc.model = name
    t.save(path)
    tally: Counter = Counter()
    assert [it.sub_call for it in iter_sub_calls(run, tally=tally)] == [0, 2] and tally["other_worker"] == 1
