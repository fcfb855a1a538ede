"""``rlm-rig view``: one static site for one or more run folders, readable from disk with no server.

Layout of ``OUT/``::

    index.html                 the run(s): spec, scores with CIs (per question_type, per length bin),
                               runs side by side, plots (the report's PNGs, in report/)
    static/                    CSS and the two small scripts (no third-party code)
    rK/samples.html            every sample of run K: sort, filter, page (data inline as JSON)
    rK/sample/<id>.html        one sample: document map, turns, sub_calls by batch, nested runs
    rK/interp/index.html       the run's interp outputs, when RUN/interp/ exists
    rK/fork.html               a fork folder (`rlm-rig fork`): every step from the fork point, original beside fork
    rK/interp/<id>__<n>.html   one studied sub_call: replay faithfulness, patching heatmaps, ...

Everything is read through the rig's own readers (metrics.load_run, the report, interp_data);
data goes into pages as JSON inside ``<script type="application/json">`` (fetch() of file:// is
blocked), and every model-written string is escaped by Jinja's autoescape.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from rlm_rig.records.trajectory import read_jsonl
from rlm_rig.experiments.analysis.metrics import RunData, add_length_buckets, group_scores, length_unit, load_run, sample_frame, summarize_frame
from rlm_rig.records.outdirs import claim, relocate, staged
from rlm_rig.records.runlog import RunFolder
from rlm_rig.experiments.view.docmap import build_docmap
from rlm_rig.experiments.view.fork_view import write_fork_page
from rlm_rig.experiments.view.interp_data import InterpData, chunk_verdict, load_interp
from rlm_rig.experiments.view.text import code_html, highlight_css, response_html

STATIC = Path(__file__).parent / "static"
SAMPLE_COLUMNS = ["id", "href", "question_type", "length", "gold", "answer", "score", "lenient_score", "stop_reason",
                  "failure", "n_sub_calls", "wall_s", "question", "replica"]
TABLE_TEXT_MAX = 300  # characters of question / answer kept in the samples table (the sample page has all)
INSTRUCTION_KEYS = ("task_instructions", "instructions")


def _env() -> Environment:
    env = Environment(loader=PackageLoader("rlm_rig.experiments.view", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["response"] = response_html
    env.filters["code"] = code_html
    env.filters["num"] = _num
    env.filters["jsonpretty"] = lambda v: json.dumps(v, indent=1, ensure_ascii=False, default=str)
    return env


def _num(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass
class SiteResult:
    out_dir: Path
    index: Path
    n_samples: int
    n_interp_pages: int
    warnings: list[str] = field(default_factory=list)


class _Writer:
    def __init__(self, out: Path, live: bool = False):
        self.out = out
        self.env = _env()
        self.live = live  # served by `view --serve`: pages poll live.json and reload when the site is rebuilt

    def page(self, rel: str, template: str, **ctx: Any) -> Path:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        root = "../" * rel.count("/")
        path.write_text(self.env.get_template(template).render(root=root, live=self.live, **ctx), encoding="utf-8")
        return path


def build_site(run_dirs: list[Path], out_dir: Path, *, report: bool = True, live: bool = False) -> SiteResult:
    """Write the site for ``run_dirs`` into ``out_dir``; return where its index is. ``live``: pages reload themselves
    when `view --serve` rebuilds the site (static/live.js)."""
    if not run_dirs:
        raise ValueError("view needs at least one run folder")
    # beside whatever else is in --out, replacing only an earlier site's own files (records.outdirs)
    dest = claim(out_dir, "view", inputs=run_dirs, replace_own=True)
    runs = [load_run(Path(d)) for d in run_dirs]
    with staged(dest, "view", replace_own=True) as tmp:
        res = _build(runs, tmp, report, live)
    return relocate(res, tmp, dest.path)


def _build(runs: list[RunData], out: Path, report: bool, live: bool = False) -> SiteResult:
    _unique(runs)
    w = _Writer(out, live)
    static = out / "static"
    static.mkdir(exist_ok=True)
    for f in STATIC.iterdir():
        if f.is_file():
            shutil.copyfile(f, static / f.name)
    (static / "highlight.css").write_text(highlight_css())
    warnings = [f"{r.label}: {x}" for r in runs for x in r.warnings]

    plots: list[str] = []
    side_by_side: list[dict[str, Any]] = []
    extra_tables: dict[str, list[dict[str, Any]]] = {}
    if report and any(r.rows for r in runs):
        plots, side_by_side, extra_tables = _report(runs, out / "report", warnings)

    run_views = []
    n_samples = n_interp = 0
    for k, run in enumerate(runs):
        rv, ns, ni = _run_pages(w, run, f"r{k}")
        run_views.append(rv)
        n_samples += ns
        n_interp += ni
    index = w.page("index.html", "index.html", title="rlm-rig view", runs=run_views, plots=plots,
                   side_by_side=side_by_side, extra_tables=extra_tables, warnings=warnings)
    return SiteResult(out, index, n_samples, n_interp, warnings)


def _unique(runs: list[RunData]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        if r.label in seen:
            seen[r.label] += 1
            r.label = f"{r.label} #{seen[r.label]}"
        else:
            seen[r.label] = 1


def _report(runs: list[RunData], rep_dir: Path, warnings: list[str]) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """The report's PNGs and its side-by-side table; any paired-comparison table it wrote is shown too."""
    import pandas as pd

    from rlm_rig.experiments.analysis.report import write_report

    try:
        rep = write_report([r.path for r in runs], rep_dir)
    except (ValueError, OSError) as e:
        warnings.append(f"report not written: {e}")
        return [], [], {}
    plots = [f"report/{Path(p).relative_to(rep_dir).as_posix()}" for p in rep["plots"].values() if Path(p).exists()]
    side: list[dict[str, Any]] = []
    comp = rep["tables"].get("comparison")
    if comp and Path(comp).exists():
        side = pd.read_csv(comp).astype(object).where(lambda d: d.notna(), None).to_dict("records")
    extra = {}
    for f in sorted(rep_dir.glob("*paired*.csv")) + sorted(rep_dir.glob("boundary-*/*.csv")):  # + ledger, calibration
        extra[f.relative_to(rep_dir).with_suffix("").as_posix().replace("_", " ")] = pd.read_csv(f).astype(object).where(lambda d: d.notna(), None).head(200).to_dict("records")
    return plots, side, extra


def _group_rows(df: Any, by: str) -> list[dict[str, Any]]:
    g = group_scores(df, by)
    return g.astype(object).where(g.notna(), None).to_dict("records")


def _spec(run: RunData) -> dict[str, Any]:
    cfg = run.config
    spec = {}
    p = RunFolder(run.path).spec_path  # read raw: a viewer shows fields newer than EvalSpec too
    if p.exists():
        try:
            spec = json.loads(p.read_text())
        except json.JSONDecodeError:
            spec = {}
    ctrl = cfg.get("controller") or {}
    wk = cfg.get("worker") or {}
    return {
        "profile": cfg.get("name"),
        "controller": f"{ctrl.get('backend', '?')}: {ctrl.get('model') or Path(str(ctrl.get('replay_file') or '?')).name}",
        "worker": f"{wk.get('backend', '?')}: {wk.get('model', '?')} ({wk.get('dtype', '?')})",
        "max_depth": (cfg.get("rlm") or {}).get("max_depth"),
        "dataset": spec.get("dataset"),
        "source": spec.get("source"),
        "split": spec.get("split"),
        "method": spec.get("method") or run.method,
        "filters": {k: v for k, v in spec.items() if k in ("question_types", "min_episodes", "max_episodes",
                                                            "max_context_chars", "max_context_tokens", "limit",
                                                            "sample", "seed", "shard") and v is not None},
        "status": run.status,
        "config_yaml": yaml.safe_dump(cfg, sort_keys=False) if cfg else "",
        "env": _environment(run.path),
        "replicas": _replicas(run.path),
    }


def replica_label(replica: dict[str, Any] | None) -> str | None:
    """'1 @ node-a' for a row a cluster replica ran (eval --ray); None on one box."""
    if not replica:
        return None
    return f"{replica.get('id')} @ {replica.get('host') or '?'}"


def _environment(path: Path) -> dict[str, Any] | None:
    """env.json as key/value lines: git revision (and whether the tree was dirty), host, GPUs, versions."""
    try:
        env = RunFolder(path).read_env()
    except ValueError:
        return None
    if env is None:
        return None
    git = env.git or {}
    sha = git.get("sha")
    return {"git revision": f"{sha}{' (dirty tree)' if git.get('dirty') else ''}" if sha else None,
            "host": env.host or None, "platform": env.platform or None, "CPUs": env.cpu_count,
            "GPUs": ", ".join(env.gpus) if env.gpus else "none", "config hash": env.config_hash,
            "versions": ", ".join(f"{k} {v}" for k, v in env.versions.items()) or None,
            "cluster": (f"Ray at {env.server_flags['ray']}, {env.server_flags.get('replicas')} replica(s)"
                        if env.server_flags.get("ray") else None)}


def _replicas(path: Path) -> list[dict[str, Any]]:
    """The replicas of the run's last cluster session (results.json), one row each."""
    res = RunFolder(path).read_results()
    runs = getattr(res, "cluster_runs", None) or []
    if not runs:
        return []
    return [{"replica": r.get("id"), "host": r.get("host"), "status": r.get("status"), "examples": r.get("examples"),
             "GPUs": ",".join(r.get("gpus") or []) or None, "resources": json.dumps(r.get("resources") or {}),
             "wall s": r.get("wall_s"), "busy s": r.get("busy_s")} for r in runs[-1].get("replicas", [])]


def _seen_by_models(run: RunData) -> dict[str, Any]:
    """The first recorded controller messages and worker messages: what each model was shown."""
    for t in run.trajectories.values():
        if t is None or not t.turns:
            continue
        worker = next((s.messages for s in t.sub_calls if s.messages), None)
        return {"controller": t.turns[0].messages_in, "worker": worker}
    return {}


def _page_names(run: RunData) -> dict[str, str]:
    """Sample id -> page stem: the trajectory file's stem (interp keys sub_calls by it), unique."""
    folder = RunFolder(run.path)
    names: dict[str, str] = {}
    used: set[str] = set()
    for row in run.rows:
        stem = Path(row.trajectory).stem if row.trajectory else folder.trajectory_path(row.id).stem
        name, i = stem, 1
        while name in used:
            i += 1
            name = f"{stem}~{i}"
        used.add(name)
        names[row.id] = name
    return names


def _run_pages(w: _Writer, run: RunData, base: str) -> tuple[dict[str, Any], int, int]:
    frame = sample_frame(run)
    unit = length_unit(frame) if len(frame) else "chars"
    frame = add_length_buckets(frame, unit)
    by_id = {r["id"]: r for r in frame.astype(object).where(frame.notna(), None).to_dict("records")}
    names = _page_names(run)
    raw_rows: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(RunFolder(run.path).samples_path):  # as written: fields newer than SampleRow are kept
        raw_rows.setdefault(str(r.get("id")), r)
    interp = load_interp(run.path)
    summary = summarize_frame(frame) if len(frame) else {}
    rv = {
        "label": run.label, "path": str(run.path), "base": base, "spec": _spec(run), "summary": summary,
        "by_question_type": _group_rows(frame, "question_type") if len(frame) else [],
        "by_length": _group_rows(frame, "length_bucket") if len(frame) else [], "length_unit": unit,
        "seen": _seen_by_models(run), "has_interp": interp.present,
        "failures": frame[frame["score"] < 1]["failure"].value_counts().to_dict() if len(frame) else {},
    }
    rv["fork_href"] = write_fork_page(w, run.path, rv)  # a fork folder: the fork beside its original
    table = []
    for row in run.rows:
        f = by_id.get(row.id, {})
        length = row.context_tokens if row.context_tokens is not None else row.context_chars
        table.append([row.id, f"sample/{names[row.id]}.html", row.question_type, length, row.gold,
                      None if row.answer is None else row.answer[:TABLE_TEXT_MAX], row.score, row.lenient_score,
                      row.stop_reason, _failure(raw_rows.get(row.id, {}), f), row.n_sub_calls, round(row.wall_s, 2),
                      row.question[:TABLE_TEXT_MAX], replica_label(row.replica)])
    classes = sorted({r[9] for r in table if r[9]})
    w.page(f"{base}/samples.html", "samples.html", title=f"samples: {run.label}", run=rv,
           data={"columns": SAMPLE_COLUMNS, "rows": table, "length_unit": unit,
                 "has_replica": any(r[-1] for r in table)}, classes=classes)
    for row in run.rows:
        traj = run.trajectories.get(row.id)
        tdict = _raw_trajectory(run, row, traj)
        stem = names[row.id]
        view = _traj_view(tdict, [], stem, interp) if tdict else None
        f = by_id.get(row.id, {})
        w.page(f"{base}/sample/{stem}.html", "sample.html", title=f"sample {row.id}", run=rv,
               row={**row.model_dump(mode="json"), **raw_rows.get(row.id, {})}, derived=f,
               failure=_failure(raw_rows.get(row.id, {}), f), instructions=_instructions(raw_rows.get(row.id, {}), tdict),
               traj=tdict, view=view)
    n_interp = 0
    if interp.present:
        n_interp = _interp_pages(w, run, rv, interp, names)
    return rv, len(run.rows), n_interp


def _raw_trajectory(run: RunData, row: Any, traj: Any) -> dict[str, Any] | None:
    """The trajectory as written, validated by load_run already: fields newer than this reader's
    Trajectory model (token ids, logprobs, ...) are kept, so the page shows them."""
    if traj is None:
        return None
    p = Path(row.trajectory)
    p = p if p.is_absolute() else run.path / p
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError):
        raw = None
    return raw if isinstance(raw, dict) else traj.model_dump(mode="json")


def _failure(row: dict[str, Any], derived: dict[str, Any]) -> str | None:
    """A failure class recorded on the row wins over the one the report's taxonomy derives."""
    for key in ("failure_class", "failure"):
        v = row.get(key) or (row.get("extra") or {}).get(key)
        if v:
            return str(v)
    return derived.get("failure") or None


def _instructions(row: dict[str, Any], traj: dict[str, Any] | None) -> str | None:
    for key in INSTRUCTION_KEYS:
        for src in (row, row.get("extra") or {}, traj or {}):
            if src.get(key):
                return str(src[key])
    return None


def _traj_view(t: dict[str, Any], path: list[int], sample_key: str, interp: InterpData) -> dict[str, Any]:
    """Everything a trajectory template needs, nested runs included (recursively)."""
    from rlm_rig.interp.data.selection import locate_chunk

    ikey = "/".join([sample_key, *map(str, path)])
    anchor = lambda i: "sc-" + "-".join(map(str, [*path, i]))  # noqa: E731
    verdict = lambda i: chunk_verdict(interp.chunk.get((ikey, i)))  # noqa: E731
    studied = set(interp.studied())
    subs = []
    for sc in t.get("sub_calls") or []:
        msgs = sc.get("messages") or []
        loc = locate_chunk(msgs, sc.get("instruction") or "", int(sc.get("chunk_chars") or 0)) if msgs else None
        chunk = msgs[loc.message]["content"][loc.start:loc.end] if loc else None
        nested = sc.get("nested_trajectory")
        key = (ikey, sc["id"])
        subs.append({
            "sc": sc, "anchor": anchor(sc["id"]), "chunk": chunk, "verdict": verdict(sc["id"]),
            "chunk_info": interp.chunk.get(key),
            "interp_href": f"../interp/{_safe(ikey)}__{sc['id']}.html" if key in studied else None,
            "nested": _traj_view(nested, [*path, sc["id"]], sample_key, interp) if isinstance(nested, dict) else None,
        })
    groups: list[dict[str, Any]] = []
    for s in subs:
        sc = s["sc"]
        gk = (sc.get("cell"), sc.get("batch"))
        if sc.get("batch") is not None and groups and groups[-1]["key"] == gk:
            groups[-1]["calls"].append(s)
        else:
            groups.append({"key": gk, "cell": sc.get("cell"), "batch": sc.get("batch"), "calls": [s]})
    turns = []
    cells = t.get("cells") or []
    caps = t.get("caps_hit") or []
    for turn in t.get("turns") or []:
        i = turn.get("index")
        turns.append({"turn": turn, "cells": [c for c in cells if c.get("turn") == i],
                      "caps": [c for c in caps if c.get("turn") == i]})
    late_caps = [c for c in caps if c.get("turn") not in {tt.get("index") for tt in t.get("turns") or []}]
    return {"t": t, "path": path, "docmap": build_docmap(t, anchor, verdict), "turns": turns, "late_caps": late_caps,
            "groups": groups, "sub_calls": subs, "ikey": ikey}


def _interp_pages(w: _Writer, run: RunData, rv: dict[str, Any], interp: InterpData, names: dict[str, str]) -> int:
    img_dir = f"{rv['base']}/interp/img"
    images = []
    for k, (caption, png) in enumerate(interp.images):
        dst = w.out / img_dir / f"{k:02d}-{png.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dst)
        images.append((caption, f"img/{dst.name}"))
    stems = set(names.values())
    trajs = {names[r.id]: run.trajectories.get(r.id) for r in run.rows}
    entries = []
    for key in interp.studied():
        ikey, sc_id = key
        parts = ikey.split("/")
        stem, path = parts[0], [int(x) for x in parts[1:] if x.lstrip("-").isdigit()]
        sc = _find_sub_call(trajs.get(stem), path, sc_id)
        back = (f"../sample/{stem}.html#sc-" + "-".join(map(str, [*path, sc_id]))) if stem in stems else None
        page = f"{_safe(ikey)}__{sc_id}.html"
        entry = {"key": f"{ikey}:{sc_id}", "page": page, "back": back, "sc": sc,
                 "replay": interp.replay.get(key), "chunk": interp.chunk.get(key),
                 "verdict": chunk_verdict(interp.chunk.get(key)), "pairs": interp.pairs.get(key, []),
                 "extra": interp.extra.get(key, {})}
        entries.append(entry)
        w.page(f"{rv['base']}/interp/{page}", "interp_sub_call.html", title=f"interp {entry['key']}", run=rv,
               e=entry, heatmaps=interp.heatmaps(key))
    w.page(f"{rv['base']}/interp/index.html", "interp_index.html", title=f"interp: {run.label}", run=rv,
           entries=entries, images=images, tables=interp.summary_tables, replay_summary=interp.replay_summary)
    return len(entries)


def _find_sub_call(traj: Any, path: list[int], sc_id: int) -> dict[str, Any] | None:
    t = traj.model_dump(mode="json") if traj is not None else None
    for p in path:
        if t is None:
            return None
        parent = next((s for s in t.get("sub_calls") or [] if s.get("id") == p), None)
        t = parent.get("nested_trajectory") if parent else None
    if t is None:
        return None
    return next((s for s in t.get("sub_calls") or [] if s.get("id") == sc_id), None)
