"""The CLI reads its lists from the registries and shares its option groups (issue 19, part 6)."""
from __future__ import annotations

import typing

import typer
from typer.main import get_command
from typer.testing import CliRunner

from rlm_rig.configs.schema import METHOD_NAMES
from rlm_rig.experiments.cli import app
from rlm_rig.experiments.cli.interp import _PAIR_OPTIONS, _STUDY_OPTIONS, interp_app
from rlm_rig.experiments.datasets.registry import names
from rlm_rig.experiments.runs.methods import METHODS
from rlm_rig.interp.config import Component, CorruptionName

runner = CliRunner()


def _help(*args: str) -> str:
    r = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert r.exit_code == 0, r.output
    return " ".join(r.output.split())


def test_eval_help_lists_every_registered_dataset_and_method():
    text = _help("eval")
    assert all(n in text for n in names()) and all(m in text for m in METHOD_NAMES)
    assert METHODS == METHOD_NAMES  # one list of method names


def test_interp_help_reads_the_settings_literals():
    text = _help("interp", "patch")
    assert ",".join(typing.get_args(CorruptionName)) in text and ",".join(typing.get_args(Component)) in text


def _options(command: str) -> set[str]:
    group = get_command(interp_app)
    return {p.name for p in group.commands[command].params}  # type: ignore[attr-defined]


def test_study_commands_share_one_option_group():
    shared = {n for n, _, _ in _STUDY_OPTIONS} | {"run_dir"}
    pairs = {n for n, _, _ in _PAIR_OPTIONS}
    for cmd in ("capture", "patch", "attribute", "heads", "lens"):
        assert shared <= _options(cmd), cmd
    for cmd in ("patch", "attribute", "heads"):
        assert pairs <= _options(cmd), cmd
    assert not pairs & _options("lens")
    assert isinstance(interp_app, typer.Typer)
