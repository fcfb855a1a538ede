"""``rlm-rig view RUN [RUN ...] [--out DIR] [--serve] [--open]``: the static site of experiments/view."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rlm_rig.experiments.cli._common import UserError, err, guarded


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
    from rlm_rig.experiments.view.site import build_site
    from rlm_rig.records.runlog import RunFolder


    for r in runs:
        if not r.is_dir():
            raise UserError(f"{str(r)!r} is not a folder")
        if not RunFolder(r).is_run():
            raise UserError(f"{str(r)!r} is not a run folder (no samples.jsonl, config.yaml or trajectory.json)")
    out = out_dir or runs[0] / "view"
    try:
        res = build_site(list(runs), out, report=report, live=serve)
    except ValueError as e:
        raise UserError(str(e)) from None
    for w in res.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    err.print(f"{res.n_samples} sample pages, {res.n_interp_pages} interp pages")
    print(f"site: {res.index}")
    url = res.index.resolve().as_uri()
    if serve:
        watcher = LiveSite(list(runs), out, report=report)
        watcher.start()
        try:
            _serve(res.out_dir, port, open_browser)
        finally:
            watcher.stop()
    elif open_browser:
        import webbrowser

        webbrowser.open(url)


class LiveSite:
    """For `--serve`: rebuild the site when a run's samples.jsonl or results.json changes (a running eval), and bump
    RUN/view/live.json, which each served page polls (static/live.js) to reload itself. Polls while any run's status
    is "running"; a finished run's site is built once."""

    def __init__(self, runs: list[Path], out: Path, *, report: bool, every_s: float = 2.0):
        import threading

        self.runs, self.out, self.report, self.every_s = runs, out, report, every_s
        self.version = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="view-live", daemon=True)
        self._last = self._stamp()
        self._write()

    def _stamp(self) -> tuple:
        from rlm_rig.records.runlog import RunFolder

        out = []
        for r in self.runs:
            for p in (RunFolder(r).samples_path, RunFolder(r).results_path):
                st = p.stat() if p.exists() else None
                out.append((st.st_size, st.st_mtime_ns) if st else None)
        return tuple(out)

    def running(self) -> bool:
        from rlm_rig.records.runlog import RunFolder

        return any(getattr(RunFolder(r).read_results(), "status", None) == "running" for r in self.runs)

    def _write(self) -> None:
        import json

        from rlm_rig.records.trajectory import atomic_write_text

        atomic_write_text(self.out / "live.json", json.dumps({"version": self.version, "running": self.running()}))

    def _loop(self) -> None:
        from rlm_rig.experiments.view.site import build_site

        while not self._stop.wait(self.every_s):
            now = self._stamp()
            if now == self._last:
                continue
            self._last = now
            try:
                build_site(self.runs, self.out, report=self.report, live=True)
            except Exception as e:  # noqa: BLE001 - a half-written run must not end the server; the next change retries
                err.print(f"[yellow]view: rebuild failed ({type(e).__name__}: {e}); retrying on the next change[/]")
                continue
            self.version += 1
            self._write()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


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
