"""The records room is the one door to a run folder (issue 19, part 1).

Only `records/` spells a run folder's file names; every other module asks `RunFolder` for a path.
The check reads string literals from the source (docstrings and comments are prose and may name files).
"""
from __future__ import annotations

import ast
from pathlib import Path

from rlm_rig.records.runlog import RunFolder

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("configs", "worker", "repl", "controller", "interp", "experiments", "bench")
# every file name RunFolder owns, as its properties return them
FOLDER = RunFolder("RUN")
OWNED = {p.name for p in (FOLDER.samples_path, FOLDER.results_path, FOLDER.config_path, FOLDER.spec_path,
                           FOLDER.env_path, FOLDER.trajectories_dir, FOLDER.rig_log_path, FOLDER.worker_pid_path,
                           FOLDER.gold_path, FOLDER.ask_trajectory_path, FOLDER.tape_path,
                           FOLDER.fork_path, FOLDER.fork_study_path, FOLDER.fork_study_summary_path)}


def literals(path: Path) -> list[tuple[int, str]]:
    """String constants that are not docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def spelled(path: Path) -> list[str]:
    out = []
    for line, text in literals(path):
        if any(c.isspace() for c in text):
            continue  # prose: a help text or a message that names a file for the reader
        for name in OWNED:
            if name == text or f"/{name}" in text or text.startswith(f"{name}/") or f"'{name}'" in text:
                out.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    return out


def test_no_module_outside_the_records_room_spells_a_run_folder_file():
    bad = [hit for room in ROOMS for p in sorted((ROOT / room).rglob("*.py")) for hit in spelled(p)]
    assert bad == []


def test_the_check_sees_a_spelled_name(tmp_path):
    p = ROOT / "tests" / "unit" / "_spelled_probe.py"
    p.write_text('"""samples.jsonl in a docstring is prose."""\nx = run / "samples.jsonl"\ny = f"{run}/trajectories/a.json"\n')
    try:
        assert [h.split(": ", 1)[1] for h in spelled(p)] == ["'samples.jsonl'", "'/trajectories/a.json'"] or \
            len(spelled(p)) == 2
    finally:
        p.unlink()


def test_owned_names_are_the_layout():
    assert {"samples.jsonl", "results.json", "config.yaml", "eval.json", "env.json", "trajectories",
            "worker-server.pid", "trajectory.json"} <= OWNED
