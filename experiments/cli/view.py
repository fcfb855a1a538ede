"""``rlm-rig view RUN [RUN ...] [--out DIR] [--serve] [--open]``: the static site of experiments/view."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from experiments.cli._common import UserError, err, guarded


def register(app: typer.Typer) -> None:
    app.command("view")(guarded(view_cmd))


def view_cmd(
    runs: list[Path] = typer.Argument(..., help="run folder(s); several are shown side by side"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="site folder (default: RUN/view for the first run)"),
    serve: bool = typer.Option(False, "--serve", help="serve the site on 127.0.0.1 until Ctrl-C"),
    port: int = typer.Option(0, "--port", help="port for --serve (0: any free port)"),
    open_browser: bool = typer.Option(False, "--open", help="open the site in a browser"),
    report: bool = typer.Option(True, "--report/--no-report", help="include the report's tables and plots"),
) -> None:
    """Write a static site (opens from disk, no server) for one or more run folders."""
    from experiments.view import build_site
    from records.runlog import RunFolder


    for r in runs:
        if not r.is_dir():
            raise UserError(f"{str(r)!r} is not a folder")
        if not RunFolder(r).is_run():
            raise UserError(f"{str(r)!r} is not a run folder (no samples.jsonl, config.yaml or trajectory.json)")
    out = out_dir or runs[0] / "view"
    try:
        res = build_site(list(runs), out, report=report)
    except ValueError as e:
        raise UserError(str(e)) from None
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    err.print(f"{res.n_samples} sample pages, {res.n_interp_pages} interp pages")
    print(f"site: {res.index}")
    url = res.index.resolve().as_uri()
    if serve:
        _serve(res.out_dir, port, open_browser)
    elif open_browser:
        import webbrowser

        webbrowser.open(url)


def _serve(folder: Path, port: int, open_browser: bool) -> None:
    """A loopback-only static server: for big runs, where some browsers are slow on file:// pages."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
        print(f"serving: {url}  (Ctrl-C stops it)", flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
