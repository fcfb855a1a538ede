"""`rlm-rig interp capture|patch|attribute|heads|lens|probe|report RUN_DIR --config C --out DIR`.

Outputs default to RUN_DIR/interp/<command>, so `report` finds the others without options.
"""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from experiments.cli._common import UserError, guarded

from interp.config import InterpConfigError, load_interp_config
from interp.gpu import ReleaseError, release_worker_gpu
from interp.selection import RunDirError, Selection, SubCallRef

interp_app = typer.Typer(help="Replay worker sub_calls in transformers+nnsight: capture, patch, probe, report.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(interp_app, name="interp")


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
    if config is None and run_dir is not None and (run_dir / "config.yaml").is_file():
        config = str(run_dir / "config.yaml")
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
    loads: never the run itself or its ancestor, never another command's or the user's files (controller.outdirs)."""
    from controller.outdirs import OutDirError
    from interp.outputs import claim_out

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
CorruptionsOpt = typer.Option(None, help="remove,add,alter,line_remove,line_add")
LayersOpt = typer.Option(None, help="comma-separated layers (negatives from the end)")
ComponentsOpt = typer.Option(None, help="resid,attn,mlp")
DirectionsOpt = typer.Option(None, help="denoise,noise")
BatchOpt = typer.Option(None, help="patched copies per forward")
SeedOpt = typer.Option(None, help="pair-sampling seed (run twice to check reproducibility)")
DeviceOpt = typer.Option(None, help="torch device (default: the profile's interp.device)")
StopOpt = typer.Option(None, help="stop the vLLM worker at this URL or PID first")
GoldOpt = typer.Option(None, help="JSONL of per-chunk gold {sample, sub_call, gold}")


def _run_job(job: Any, name: str, run_dir: Path, out: Optional[Path], setup: tuple, stop_server: Optional[str],
             selection: Selection, force: bool = False, **kw: Any) -> None:
    """Free the worker's GPU, run one interp job into its folder, print its summary; a run with
    nothing to study or a bad option is one line and exit 2 (the CLI's contract)."""
    from interp.jobs import summary_dict

    cfg, spec, profile = setup
    ray = kw.pop("ray", None)
    target = _out(out, run_dir, name, force)  # before the worker is stopped or a model loads
    _release(cfg, stop_server, run_dir, profile)
    try:
        if ray:
            s = _on_ray(ray, job, run_dir, target, cfg, spec, selection, kw)
        else:
            s = job(run_dir, target, cfg, spec, selection=selection, **kw)
    except (RunDirError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    typer.echo(json.dumps(summary_dict(s), indent=1))
    for line in getattr(s, "warnings", None) or []:
        typer.echo(f"warning: {line}", err=True)


def _on_ray(address: str, job: Any, run_dir: Path, target: Any, cfg, spec, selection: Selection, kw: dict) -> Any:
    """The job with its pairs' sweeps as Ray tasks (experiments/runs/cluster_interp.py); cluster failures are one
    line, exit 2."""
    from experiments.runs.cluster import ClusterError
    from experiments.runs.cluster_interp import RayPairMapper, ray_session

    try:
        with ray_session(address):
            return job(run_dir, target, cfg, spec, selection=selection, mapper=RayPairMapper(cfg, spec, address), **kw)
    except ClusterError as exc:
        raise UserError(str(exc)) from None


RayOpt = typer.Option(None, "--ray", help="sweep the pairs as Ray tasks: HOST:PORT of a running head, auto, or local")


def _pair_overrides(n_pairs, corruptions, layers, directions, batch_size, seed, device, **more) -> dict:
    return dict(n_pairs=n_pairs, corruptions=_csv(corruptions), layers=_csv_ints(layers), directions=_csv(directions),
                batch_size=batch_size, seed=seed, device=device, **more)


@interp_app.command()
@guarded
def capture(
    run_dir: Path = RunArg, config: Optional[str] = ConfigOpt, out: Optional[Path] = OutOpt, force: bool = ForceOpt,
    question_type: list[str] = QuestionTypeOpt, correct: Correctness = CorrectOpt, sub_call: list[str] = SubCallOpt,
    limit: Optional[int] = LimitOpt, layers: Optional[str] = LayersOpt, components: Optional[str] = ComponentsOpt,
    positions: Optional[str] = typer.Option(None, help="last,answer,number"), device: Optional[str] = DeviceOpt,
    gold: Optional[Path] = GoldOpt,
    replay: Optional[bool] = typer.Option(None, "--replay/--no-replay", help="greedy replay agreement check"),
    stop_server: Optional[str] = StopOpt,
) -> None:
    """Save activations of the selected sub_calls (safetensors shards + Parquet index) and replay faithfulness."""
    from interp.jobs import capture_job

    setup = _setup(config, dict(layers=_csv_ints(layers), components=_csv(components),
                                capture_positions=_csv(positions), device=device, replay=replay), run_dir)
    _run_job(capture_job, "capture", run_dir, out, setup, stop_server,
             _selection(question_type, correct, sub_call, limit), force=force, gold_file=gold)


@interp_app.command()
@guarded
def patch(
    run_dir: Path = RunArg, config: Optional[str] = ConfigOpt, out: Optional[Path] = OutOpt, force: bool = ForceOpt,
    question_type: list[str] = QuestionTypeOpt, correct: Correctness = CorrectOpt, sub_call: list[str] = SubCallOpt,
    limit: Optional[int] = LimitOpt, n_pairs: Optional[int] = NPairsOpt, corruptions: Optional[str] = CorruptionsOpt,
    layers: Optional[str] = LayersOpt, components: Optional[str] = ComponentsOpt,
    directions: Optional[str] = DirectionsOpt, batch_size: Optional[int] = BatchOpt, seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt, stop_server: Optional[str] = StopOpt, ray: Optional[str] = RayOpt,
) -> None:
    """Build counting pairs from the run's sub_calls and sweep activation patching; writes Parquet + heatmaps."""
    from interp.jobs import patch_job
    from interp.progress import PairProgress

    setup = _setup(config, _pair_overrides(n_pairs, corruptions, layers, directions, batch_size, seed, device,
                                           components=_csv(components)), run_dir)
    with PairProgress() as progress:
        _run_job(patch_job, "patch", run_dir, out, setup, stop_server,
                 _selection(question_type, correct, sub_call, limit), force=force, progress=progress, ray=ray)


@interp_app.command()
@guarded
def attribute(
    run_dir: Path = RunArg, config: Optional[str] = ConfigOpt, out: Optional[Path] = OutOpt, force: bool = ForceOpt,
    question_type: list[str] = QuestionTypeOpt, correct: Correctness = CorrectOpt, sub_call: list[str] = SubCallOpt,
    limit: Optional[int] = LimitOpt, n_pairs: Optional[int] = NPairsOpt, corruptions: Optional[str] = CorruptionsOpt,
    components: Optional[str] = ComponentsOpt, directions: Optional[str] = DirectionsOpt,
    top_k: Optional[int] = typer.Option(None, help="sites per layer re-checked by exact patching"),
    validate_max_tokens: Optional[int] = typer.Option(None, help="exact-patch EVERY site of pairs up to this length"),
    validate_layers: Optional[str] = typer.Option(None, help="layers of that every-site check, e.g. 0,15 (default all)"),
    batch_size: Optional[int] = BatchOpt, seed: Optional[int] = SeedOpt, device: Optional[str] = DeviceOpt,
    stop_server: Optional[str] = StopOpt, ray: Optional[str] = RayOpt,
) -> None:
    """Attribution patching (gradient x difference): token x layer maps for resid/attn/MLP, then exact patching
    of the top-k sites, and the rank correlation / sign agreement of the two."""
    from interp.jobs_maps import attribute_job

    setup = _setup(config, _pair_overrides(n_pairs, corruptions, None, directions, batch_size, seed, device,
                                           attr_components=_csv(components), attr_top_k=top_k,
                                           attr_validate_max_tokens=validate_max_tokens,
                                           attr_validate_layers=_csv_ints(validate_layers, "--validate-layers")), run_dir)
    _run_job(attribute_job, "attribute", run_dir, out, setup, stop_server,
             _selection(question_type, correct, sub_call, limit), force=force,
             progress=lambda k, n: typer.echo(f"pair {k}/{n}", err=True), ray=ray)


@interp_app.command()
@guarded
def heads(
    run_dir: Path = RunArg, config: Optional[str] = ConfigOpt, out: Optional[Path] = OutOpt, force: bool = ForceOpt,
    question_type: list[str] = QuestionTypeOpt, correct: Correctness = CorrectOpt, sub_call: list[str] = SubCallOpt,
    limit: Optional[int] = LimitOpt, n_pairs: Optional[int] = NPairsOpt, corruptions: Optional[str] = CorruptionsOpt,
    layers: Optional[str] = LayersOpt, positions: Optional[str] = typer.Option(None, help="position groups, e.g. last,edit"),
    directions: Optional[str] = DirectionsOpt, batch_size: Optional[int] = BatchOpt, seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt, stop_server: Optional[str] = StopOpt, ray: Optional[str] = RayOpt,
) -> None:
    """Per-head patching of attention head outputs (layer x head) at chosen positions, with heatmaps."""
    from interp.jobs_maps import heads_job

    setup = _setup(config, _pair_overrides(n_pairs, corruptions, layers, directions, batch_size, seed, device,
                                           head_positions=_csv(positions)), run_dir)
    _run_job(heads_job, "heads", run_dir, out, setup, stop_server, _selection(question_type, correct, sub_call, limit),
             force=force, progress=lambda k, n: typer.echo(f"pair {k}/{n}", err=True), ray=ray)


@interp_app.command()
@guarded
def lens(
    run_dir: Path = RunArg, config: Optional[str] = ConfigOpt, out: Optional[Path] = OutOpt, force: bool = ForceOpt,
    question_type: list[str] = QuestionTypeOpt, correct: Correctness = CorrectOpt, sub_call: list[str] = SubCallOpt,
    limit: Optional[int] = LimitOpt, gold: Optional[Path] = GoldOpt, device: Optional[str] = DeviceOpt,
    stop_server: Optional[str] = StopOpt,
) -> None:
    """Logit lens at the answer position: rank and probability of the gold count token and the worker's own
    token, per layer."""
    from interp.jobs_maps import lens_job
    from interp.selection import load_gold_file

    _run_job(lens_job, "lens", run_dir, out, _setup(config, dict(device=device), run_dir), stop_server,
             _selection(question_type, correct, sub_call, limit), force=force, gold_map=load_gold_file(gold) if gold else None)


@interp_app.command()
@guarded
def probe(
    run_dir: Path = RunArg,
    config: Optional[str] = ConfigOpt,
    out: Optional[Path] = OutOpt,
    force: bool = ForceOpt,
    capture_dir: Optional[Path] = typer.Option(None, "--capture", help="capture folder (default RUN_DIR/interp/capture)"),
    position: Optional[str] = typer.Option(None, help="captured position to probe (last, number, answer)"),
    component: Optional[str] = typer.Option(None, help="resid, attn or mlp"),
) -> None:
    """Linear probes per layer for the chunk's count, with a shuffled-label control."""
    from interp.jobs import probe_job

    cfg, _, _ = _setup(config, dict(probe_position=position, probe_component=component), run_dir)
    cap = capture_dir or run_dir / "interp" / "capture"
    try:
        table = probe_job(cap, _out(out, run_dir, "probe", force, (cap,)), cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
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
    gold: Optional[Path] = typer.Option(None, help="JSONL of per-chunk gold {sample, sub_call, gold}"),
) -> None:
    """Tables and plots: heatmaps, probe accuracy vs worker accuracy, replay agreement, aggregation check,
    attribution maps (and their agreement with exact patching), head heatmaps, the logit lens. Each input
    folder defaults to RUN_DIR/interp/<step>; a missing one is a section that says so."""
    from interp.report import build_report

    _setup(config, {}, run_dir)  # validates the profile even though the report needs no model
    base = run_dir / "interp"
    reads = tuple(d for d in (capture_dir, patch_dir, probe_dir, attribute_dir, heads_dir, lens_dir) if d)
    try:
        path = build_report(run_dir, _out(out, run_dir, "report", force, reads), capture_dir=capture_dir or base / "capture",
                            patch_dir=patch_dir or base / "patch", probe_dir=probe_dir or base / "probe",
                            gold_file=gold, attribute_dir=attribute_dir or base / "attribute",
                            heads_dir=heads_dir or base / "heads", lens_dir=lens_dir or base / "lens")
    except RunDirError as exc:
        raise UserError(str(exc)) from exc
    typer.echo(str(path))


