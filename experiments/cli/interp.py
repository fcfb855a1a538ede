"""`rlm-rig interp capture|patch|attribute|heads|lens|probe|report RUN_DIR --config C --out DIR`.

Outputs default to RUN_DIR/interp/<command>, so `report` finds the others without options.
"""
from __future__ import annotations

import functools
import inspect
import json
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import typer

from rlm_rig.experiments.cli._common import UserError, guarded

from rlm_rig.interp.config import CAPTURE_POSITIONS, Component, CorruptionName, Direction, InterpConfigError
from rlm_rig.interp.profile import load_interp_config
from rlm_rig.records.runlog import RunFolder
from rlm_rig.interp.gpu import ReleaseError, release_worker_gpu
from rlm_rig.interp.data.selection import RunDirError, Selection, SubCallRef

interp_app = typer.Typer(help="Replay worker sub_calls in transformers+nnsight: capture, patch, probe, report.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(interp_app, name="interp")


@runtime_checkable
class HasWarnings(Protocol):
    """A job summary that carries warnings for the reader (the pair jobs' denominator warnings)."""

    warnings: list[str]


class Correctness(str, Enum):
    all = "all"
    correct = "correct"
    wrong = "wrong"


def _csv_ints(text: str | None, option: str = "--layers") -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} wants comma-separated integers, got {text!r}") from None


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _setup(config: Optional[str], overrides: dict[str, Any], run_dir: Path | None = None):
    """Profile: --config, else the run's own config.yaml (the rig saves the profile it ran with)."""
    if config is None and run_dir is not None and RunFolder(run_dir).config_path.is_file():
        config = str(RunFolder(run_dir).config_path)
    try:
        return load_interp_config(config, overrides)
    except InterpConfigError as exc:
        raise UserError(f"--config: {exc}") from exc


def _selection(question_type: list[str], correct: Correctness, sub_call: list[str], limit: Optional[int]) -> Selection:
    try:
        refs = [SubCallRef.parse(s) for s in sub_call]
    except RunDirError as exc:
        raise UserError(f"--sub-call: {exc}") from exc
    return Selection(question_types=list(question_type), refs=refs, limit=limit,
                     correct=None if correct is Correctness.all else correct is Correctness.correct)


def _release(cfg, stop_server: Optional[str], run_dir: Path, profile: dict) -> None:
    try:
        stopped = release_worker_gpu(cfg, target=stop_server, run_dir=run_dir, profile=profile)
    except ReleaseError as exc:
        raise UserError(f"--stop-server: {exc}") from exc
    if stopped:
        typer.echo(f"stopped worker server pids {stopped} to free the GPU")


def _out(out: Optional[Path], run_dir: Path, name: str, force: bool = False, reads: tuple = ()) -> Any:
    """The claimed output folder (default RUN_DIR/interp/<command>), checked before any server stops or model
    loads: never the run itself or its ancestor, never another command's or the user's files (records.outdirs).
    The claim holds the folder's lock until released."""
    from rlm_rig.interp.outputs import claim_out
    from rlm_rig.records.outdirs import OutDirError

    path = out if out is not None else run_dir / "interp" / name
    try:
        return claim_out(path, f"interp {name}", [run_dir, *reads], force=force)
    except OutDirError as exc:
        raise UserError(str(exc)) from None


RunArg = typer.Argument(..., help="an eval run folder (trajectories/*.json) or an ask folder (trajectory.json)")
ConfigOpt = typer.Option(None, "--config", "-c",
                         help="profile YAML or a profile name in configs/ (default: RUN_DIR/config.yaml)")
OutOpt = typer.Option(None, "--out", "-o", help="output folder (default RUN_DIR/interp/<command>)")
ForceOpt = typer.Option(False, "--force", help="replace this command's own earlier outputs in --out (only them)")
QuestionTypeOpt = typer.Option([], "--question-type", help="keep samples of this question_type")
CorrectOpt = typer.Option(Correctness.all, help="keep samples whose final answer was right/wrong")
SubCallOpt = typer.Option([], "--sub-call", help="SAMPLE:SUBCALL ids (repeatable)")
LimitOpt = typer.Option(None, help="at most this many sub_calls")
NPairsOpt = typer.Option(None, help="clean/corrupt pairs to build")
CorruptionsOpt = typer.Option(None, help=",".join(typing.get_args(CorruptionName)))
LayersOpt = typer.Option(None, help="comma-separated layers (negatives from the end)")
ComponentsOpt = typer.Option(None, help=",".join(typing.get_args(Component)))
DirectionsOpt = typer.Option(None, help=",".join(typing.get_args(Direction)))
BatchOpt = typer.Option(None, help="patched copies per forward")
SeedOpt = typer.Option(None, help="pair-sampling seed (run twice to check reproducibility)")
DeviceOpt = typer.Option(None, help="torch device (default: the profile's interp.device)")
StopOpt = typer.Option(None, help="stop the vLLM worker at this URL or PID first")
GoldOpt = typer.Option(None, help="JSONL of per-chunk gold {sample, sub_call, gold}")
RayOpt = typer.Option(None, "--ray", help="sweep the pairs as Ray tasks: HOST:PORT of a running head, auto, or local")


@dataclass
class Study:
    """The options every study command shares: which run, which profile, where to write, which sub_calls,
    on which device, and which worker server to stop first."""

    run_dir: Path
    config: Optional[str]
    out: Optional[Path]
    selection: Selection
    device: Optional[str]
    stop_server: Optional[str]
    force: bool = False
    ray: Optional[str] = None  # pair commands only: sweep the pairs as Ray tasks
    pairs: dict[str, Any] = field(default_factory=dict)  # the pair options' overrides (pair commands only)

    def setup(self, overrides: dict[str, Any]) -> tuple:
        return _setup(self.config, {**self.pairs, **overrides, "device": self.device}, self.run_dir)

    def run(self, job: Any, name: str, overrides: dict[str, Any], **kw: Any) -> None:
        _run_job(job, name, self.run_dir, self.out, self.setup(overrides), self.stop_server, self.selection,
                 force=self.force, ray=self.ray, **kw)


# (name, type, typer option) of the shared options, appended to each study command's own (inspect_ai's
# common_options idea): one definition of each flag instead of a copy per command.
_STUDY_OPTIONS = [
    ("config", Optional[str], ConfigOpt), ("out", Optional[Path], OutOpt), ("force", bool, ForceOpt),
    ("question_type", list[str], QuestionTypeOpt), ("correct", Correctness, CorrectOpt),
    ("sub_call", list[str], SubCallOpt), ("limit", Optional[int], LimitOpt),
    ("device", Optional[str], DeviceOpt), ("stop_server", Optional[str], StopOpt),
]


# ... and of the commands that build clean/corrupt pairs (patch, attribute, heads)
_PAIR_OPTIONS = [
    ("n_pairs", Optional[int], NPairsOpt), ("corruptions", Optional[str], CorruptionsOpt),
    ("directions", Optional[str], DirectionsOpt), ("batch_size", Optional[int], BatchOpt),
    ("seed", Optional[int], SeedOpt), ("ray", Optional[str], RayOpt),
]


def study_command(fn: Callable[..., None] | None = None, *, pairs: bool = False) -> Any:
    """``fn(study: Study, **own_options)`` becomes a typer command taking RUN_DIR, its own options and the
    shared ones (`_STUDY_OPTIONS`, and `_PAIR_OPTIONS` with ``pairs=True``); the wrapper folds the shared
    ones into a `Study`."""
    if fn is None:
        return functools.partial(study_command, pairs=pairs)
    hints = typing.get_type_hints(fn)
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values() if p.name != "study"]
    kw_only = inspect.Parameter.KEYWORD_ONLY
    run_arg = inspect.Parameter("run_dir", kw_only, default=RunArg, annotation=Path)
    groups = _STUDY_OPTIONS + (_PAIR_OPTIONS if pairs else [])
    shared = [inspect.Parameter(n, kw_only, default=opt, annotation=t) for n, t, opt in groups]

    @functools.wraps(fn)
    def command(**kw: Any) -> None:
        study = Study(run_dir=kw.pop("run_dir"), config=kw.pop("config"), out=kw.pop("out"), device=kw.pop("device"),
                      stop_server=kw.pop("stop_server"), force=kw.pop("force"),
                      selection=_selection(kw.pop("question_type"), kw.pop("correct"), kw.pop("sub_call"),
                                           kw.pop("limit")))
        if pairs:
            study.pairs = dict(n_pairs=kw.pop("n_pairs"), corruptions=_csv(kw.pop("corruptions")),
                               directions=_csv(kw.pop("directions")), batch_size=kw.pop("batch_size"),
                               seed=kw.pop("seed"))
            study.ray = kw.pop("ray")
        fn(study, **kw)

    params = [run_arg] + [p.replace(kind=kw_only) for p in own] + shared
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer reads __signature__, not fn's own
    return command


def _run_job(job: Any, name: str, run_dir: Path, out: Optional[Path], setup: tuple, stop_server: Optional[str],
             selection: Selection, force: bool = False, ray: Optional[str] = None, **kw: Any) -> None:
    """Free the worker's GPU, run one interp job into its folder, print its summary; a run with
    nothing to study or a bad option is one line and exit 2 (the CLI's contract)."""
    from rlm_rig.interp.jobs import summary_dict

    cfg, spec, profile = setup
    target = _out(out, run_dir, name, force)  # before the worker is stopped or a model loads
    try:
        _release(cfg, stop_server, run_dir, profile)
        if ray:
            s = _on_ray(ray, job, run_dir, target, cfg, spec, selection, kw)
        else:
            s = job(run_dir, target, cfg, spec, selection=selection, **kw)
    except (RunDirError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    finally:
        target.release()  # the folder's lock (and the folder itself, if the job left it empty)
    typer.echo(json.dumps(summary_dict(s), indent=1))
    for line in s.warnings if isinstance(s, HasWarnings) else []:
        typer.echo(f"warning: {line}", err=True)


def _on_ray(address: str, job: Any, run_dir: Path, target: Any, cfg, spec, selection: Selection, kw: dict) -> Any:
    """The job with its pairs' sweeps as Ray tasks (experiments/runs/cluster_interp.py); cluster failures are one
    line, exit 2."""
    from rlm_rig.experiments.runs.cluster import ClusterError
    from rlm_rig.experiments.runs.cluster_interp import RayPairMapper, ray_session

    try:
        with ray_session(address):
            return job(run_dir, target, cfg, spec, selection=selection, mapper=RayPairMapper(cfg, spec, address), **kw)
    except ClusterError as exc:
        raise UserError(str(exc)) from None


@interp_app.command()
@guarded
@study_command
def capture(
    study: Study, layers: Optional[str] = LayersOpt, components: Optional[str] = ComponentsOpt,
    positions: Optional[str] = typer.Option(None, help=",".join(CAPTURE_POSITIONS)),
    gold: Optional[Path] = GoldOpt,
    replay: Optional[bool] = typer.Option(None, "--replay/--no-replay", help="greedy replay agreement check"),
) -> None:
    """Save activations of the selected sub_calls (safetensors shards + Parquet index) and replay faithfulness."""
    from rlm_rig.interp.jobs import capture_job

    study.run(capture_job, "capture", dict(layers=_csv_ints(layers), components=_csv(components),
                                           capture_positions=_csv(positions), replay=replay), gold_file=gold)


@interp_app.command()
@guarded
@study_command(pairs=True)
def patch(study: Study, layers: Optional[str] = LayersOpt, components: Optional[str] = ComponentsOpt) -> None:
    """Build counting pairs from the run's sub_calls and sweep activation patching; writes Parquet + heatmaps."""
    from rlm_rig.interp.jobs import patch_job
    from rlm_rig.interp.progress import PairProgress

    with PairProgress() as progress:
        study.run(patch_job, "patch", dict(layers=_csv_ints(layers), components=_csv(components)), progress=progress)


@interp_app.command()
@guarded
@study_command(pairs=True)
def attribute(
    study: Study, components: Optional[str] = ComponentsOpt,
    top_k: Optional[int] = typer.Option(None, help="sites per layer re-checked by exact patching"),
    validate_max_tokens: Optional[int] = typer.Option(None, help="exact-patch EVERY site of pairs up to this length"),
    validate_layers: Optional[str] = typer.Option(None, help="layers of that every-site check, e.g. 0,15 (default all)"),
) -> None:
    """Attribution patching (gradient x difference): token x layer maps for resid/attn/MLP, then exact patching
    of the top-k sites, and the rank correlation / sign agreement of the two."""
    from rlm_rig.interp.jobs import attribute_job

    study.run(attribute_job, "attribute", dict(
        attr_components=_csv(components), attr_top_k=top_k, attr_validate_max_tokens=validate_max_tokens,
        attr_validate_layers=_csv_ints(validate_layers, "--validate-layers")), progress=_echo_pairs)


@interp_app.command()
@guarded
@study_command(pairs=True)
def heads(
    study: Study, layers: Optional[str] = LayersOpt,
    positions: Optional[str] = typer.Option(None, help="position groups, e.g. last,edit"),
) -> None:
    """Per-head patching of attention head outputs (layer x head) at chosen positions, with heatmaps."""
    from rlm_rig.interp.jobs import heads_job

    study.run(heads_job, "heads", dict(layers=_csv_ints(layers), head_positions=_csv(positions)), progress=_echo_pairs)


@interp_app.command()
@guarded
@study_command
def lens(study: Study, gold: Optional[Path] = GoldOpt) -> None:
    """Logit lens at the answer position: rank and probability of the gold count token and the worker's own
    token, per layer."""
    from rlm_rig.interp.jobs import lens_job
    from rlm_rig.interp.data.selection import load_gold_file

    study.run(lens_job, "lens", {}, gold_map=load_gold_file(gold) if gold else None)


def _echo_pairs(k: int, n: int) -> None:
    typer.echo(f"pair {k}/{n}", err=True)


@interp_app.command()
@guarded
def probe(
    run_dir: Path = RunArg,
    config: Optional[str] = ConfigOpt,
    out: Optional[Path] = OutOpt,
    force: bool = ForceOpt,
    capture_dir: Optional[Path] = typer.Option(None, "--capture", help="capture folder (default RUN_DIR/interp/capture)"),
    position: Optional[str] = typer.Option(None, help=f"captured position to probe ({', '.join(CAPTURE_POSITIONS)})"),
    component: Optional[str] = typer.Option(None, help=", ".join(typing.get_args(Component))),
) -> None:
    """Linear probes per layer for the chunk's count, with a shuffled-label control."""
    from rlm_rig.interp.jobs import probe_job

    cfg, _, _ = _setup(config, dict(probe_position=position, probe_component=component), run_dir)
    cap = capture_dir or run_dir / "interp" / "capture"
    target = _out(out, run_dir, "probe", force, (cap,))
    try:
        table = probe_job(cap, target, cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    finally:
        target.release()
    typer.echo(table.to_string(index=False))


@interp_app.command()
@guarded
def report(
    run_dir: Path = RunArg,
    config: Optional[str] = ConfigOpt,
    out: Optional[Path] = OutOpt,
    force: bool = ForceOpt,
    capture_dir: Optional[Path] = typer.Option(None, "--capture"),
    patch_dir: Optional[Path] = typer.Option(None, "--patch"),
    probe_dir: Optional[Path] = typer.Option(None, "--probe"),
    attribute_dir: Optional[Path] = typer.Option(None, "--attribute"),
    heads_dir: Optional[Path] = typer.Option(None, "--heads"),
    lens_dir: Optional[Path] = typer.Option(None, "--lens"),
    controller_dir: Optional[Path] = typer.Option(None, "--controller", help="`interp controller` folder"),
    gold: Optional[Path] = typer.Option(None, help="JSONL of per-chunk gold {sample, sub_call, gold}"),
) -> None:
    """Tables and plots: heatmaps, probe accuracy vs worker accuracy, replay agreement, aggregation check,
    attribution maps (and their agreement with exact patching), head heatmaps, the logit lens. Each input
    folder defaults to RUN_DIR/interp/<step>; a missing one is a section that says so."""
    from rlm_rig.interp.report.build import build_report

    _setup(config, {}, run_dir)  # validates the profile even though the report needs no model
    base = run_dir / "interp"
    reads = tuple(d for d in (capture_dir, patch_dir, probe_dir, attribute_dir, heads_dir, lens_dir, controller_dir)
                  if d)
    target = _out(out, run_dir, "report", force, reads)
    try:
        path = build_report(run_dir, target, capture_dir=capture_dir or base / "capture",
                            patch_dir=patch_dir or base / "patch", probe_dir=probe_dir or base / "probe",
                            gold_file=gold, attribute_dir=attribute_dir or base / "attribute",
                            heads_dir=heads_dir or base / "heads", lens_dir=lens_dir or base / "lens",
                            controller_dir=controller_dir or base / "controller")
    except RunDirError as exc:
        raise UserError(str(exc)) from exc
    finally:
        target.release()
    typer.echo(str(path))




@interp_app.command()
@guarded
@study_command
def controller(
    study: Study,
    model: Optional[str] = typer.Option(None, help="weights to teacher-force (default: the profile's controller; "
                                        "required for a replay controller, e.g. smollm2)"),
    dtype: Optional[str] = typer.Option(None, help="replay dtype (default: the controller's; --model: interp.dtype "
                                        "or float32)"),
    layers: Optional[str] = LayersOpt,
    components: Optional[str] = ComponentsOpt,
    corruptions: Optional[str] = typer.Option(None, help="chunk_value,total (default both)"),
    n_pairs: Optional[int] = NPairsOpt, directions: Optional[str] = DirectionsOpt, batch_size: Optional[int] = BatchOpt,
    seed: Optional[int] = SeedOpt,
    top_k: Optional[int] = typer.Option(None, help="sites per layer re-checked by exact patching"),
    validate_max_tokens: Optional[int] = typer.Option(None, help="exact-patch EVERY site of pairs up to this length"),
    validate_layers: Optional[str] = typer.Option(None, help="layers of that every-site check and of the whole-cell "
                                                  "patches, e.g. 0,15 (default all)"),
) -> None:
    """The controller's side: teacher-force the recorded conversation through the controller's weights; attribute
    the final answer to the tokens of each cell output (checked against exact patching), probe the told per-chunk
    values, and record each turn's faithfulness."""
    from rlm_rig.interp.controller_job import controller_job, controller_target

    ov = dict(layers=_csv_ints(layers), attr_components=_csv(components), n_pairs=n_pairs,
              directions=_csv(directions), batch_size=batch_size, seed=seed, attr_top_k=top_k,
              attr_validate_max_tokens=validate_max_tokens,
              attr_validate_layers=_csv_ints(validate_layers, "--validate-layers"))
    cfg, _, profile = study.setup(ov)
    try:
        spec = controller_target(profile, cfg, model=model, dtype=dtype, device=study.device)
    except InterpConfigError as exc:
        raise UserError(str(exc)) from exc
    kinds = _csv(corruptions)
    bad = [k for k in kinds or [] if k not in ("chunk_value", "total")]
    if bad:
        raise UserError(f"--corruptions: unknown {bad}; choose chunk_value, total")
    _run_job(controller_job, "controller", study.run_dir, study.out, (cfg, spec, profile), None, study.selection,
             force=study.force, corruptions=kinds, progress=_echo_pairs)
