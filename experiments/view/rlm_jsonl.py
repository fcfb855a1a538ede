"""Our trajectories in the official RLM logger's JSONL format, so its visualizer opens our runs.

One file per trajectory: a ``metadata`` line, then one ``iteration`` line per controller turn
(field names as the official ``RLMLogger`` writes them; see the README's Interoperability note).
Mapping from our records:

* iteration ``prompt``: the full message list the controller had seen at that turn (the
  concatenation of ``messages_in`` up to it); ``response``: the turn's reply.
* ``code_blocks``: the cells run for that turn, each with a REPL result: stdout, stderr (plus the
  cell's error and notices, which the official record has no field for), ``execution_time``,
  and ``rlm_calls``: the cell's sub_calls as chat completions with per-call usage.
* ``final_answer`` on the last turn when the run ended with one; ``iteration_time``: the turn's
  model latency plus its cells' run time. ``locals`` stays empty: we never record REPL variables.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from rlm_rig.records.outdirs import claim, relocate, staged
from rlm_rig.records.trajectory import CellRecord, SubCallRecord, Trajectory

ENVIRONMENT_TYPE = "rlm-rig-sandbox"


def _ts(iso: str | None) -> str:
    return iso or datetime.now().isoformat()


def _completion(sc: SubCallRecord, worker_model: str) -> dict[str, Any]:
    prompt: Any = sc.messages if sc.messages else sc.instruction
    out: dict[str, Any] = {
        "root_model": worker_model,
        "prompt": prompt,
        "response": sc.response if sc.response is not None else "",
        "usage_summary": {"model_usage_summaries": {worker_model: {
            "total_calls": 1, "total_input_tokens": sc.prompt_tokens, "total_output_tokens": sc.completion_tokens}}},
        "execution_time": sc.latency_s,
    }
    if sc.error:
        out["error"] = sc.error
        out["error_type"] = "nested_rlm_error" if sc.nested_trajectory is not None else "worker_error"
    return out


def _code_block(cell: CellRecord, subs: list[SubCallRecord], worker_model: str) -> dict[str, Any]:
    stderr = "\n".join(x for x in [cell.stderr, cell.error or "", *cell.notices] if x)
    return {"code": cell.code, "result": {
        "stdout": cell.stdout, "stderr": stderr, "locals": {}, "execution_time": cell.duration_s,
        "rlm_calls": [_completion(s, worker_model) for s in subs if s.cell == cell.index]}}


def iterations(traj: Trajectory) -> Iterator[dict[str, Any]]:
    worker_model = traj.models.get("worker", "worker")
    history: list[dict[str, str]] = []
    last = len(traj.turns) - 1
    for turn in traj.turns:
        history = history + list(turn.messages_in)
        cells = [c for c in traj.cells if c.turn == turn.index]
        yield {
            "type": "iteration",
            "iteration": turn.index + 1,
            "timestamp": _ts(traj.started_at),
            "prompt": history,
            "response": turn.response,
            "code_blocks": [_code_block(c, traj.sub_calls, worker_model) for c in cells],
            "final_answer": traj.final_answer if turn.index == last and traj.stop_reason != "error" else None,
            "iteration_time": turn.latency_s + sum(c.duration_s for c in cells),
        }
        history = history + [{"role": "assistant", "content": turn.response}]


def cell_timeout_s(cfg: dict[str, Any]) -> Any:
    """The cell time limit a trajectory ran with: ``sandbox.cell_timeout_s``, or ``rlm.cell_timeout_s`` as
    trajectories written before the key moved record it (configs.load.RENAMED)."""
    return (cfg.get("sandbox") or {}).get("cell_timeout_s", (cfg.get("rlm") or {}).get("cell_timeout_s"))


def metadata(traj: Trajectory) -> dict[str, Any]:
    cfg = traj.config or {}
    ctrl, rlm, wk = cfg.get("controller") or {}, cfg.get("rlm") or {}, cfg.get("worker") or {}
    return {
        "type": "metadata",
        "timestamp": _ts(traj.started_at),
        "root_model": traj.models.get("controller", ctrl.get("model") or "controller"),
        "max_depth": int(rlm.get("max_depth", 1)),
        "max_iterations": int(rlm.get("max_iterations", len(traj.turns))),
        "backend": str(ctrl.get("backend", "unknown")),
        "backend_kwargs": {k: v for k, v in ctrl.items() if k != "backend" and isinstance(v, (str, int, float, bool))},
        "environment_type": ENVIRONMENT_TYPE,
        "environment_kwargs": {"cell_timeout_s": cell_timeout_s(cfg), "doc_chars": traj.doc_chars},
        "other_backends": [traj.models.get("worker", wk.get("model") or "worker")],
    }


def file_name(name: str, traj: Trajectory) -> str:
    """``{name}_{YYYY-MM-DD_HH-MM-SS}_{8 hex}.jsonl``, as the official logger names its files."""
    try:
        stamp = datetime.fromisoformat(traj.started_at).strftime("%Y-%m-%d_%H-%M-%S")
    except ValueError:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    rid = hashlib.sha256(traj.run_id.encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe}_{stamp}_{rid}.jsonl"


def write_rlm_jsonl(traj: Trajectory, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rec in [metadata(traj), *iterations(traj)]:
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    return path


def export_run(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Every trajectory of a run folder (or the trajectory.json of an `ask` folder) into ``out_dir``."""
    from rlm_rig.records.runlog import RunFolder
    from rlm_rig.records.trajectory import read_jsonl

    run = Path(run_dir)
    claim(out_dir, "export", inputs=[run], replace_own=True)  # a bad --out fails before any reading
    folder = RunFolder(run)
    rows = read_jsonl(folder.samples_path)
    sources: list[tuple[str, Path]] = []
    if rows:
        seen: set[str] = set()
        for r in rows:
            if r["id"] in seen or not r.get("trajectory"):
                continue
            seen.add(r["id"])
            sources.append((str(r["id"]), run / r["trajectory"]))
    elif folder.ask_trajectory_path.exists():
        sources.append(("rlm", folder.ask_trajectory_path))
    if not sources:
        raise FileNotFoundError(f"{run} has no trajectories to export (no samples.jsonl rows, no trajectory.json)")
    out = []
    with staged(out_dir, "export", replace_own=True, inputs=[run]) as tmp:
        for name, p in sources:
            if not p.exists():
                continue
            traj = Trajectory.load(p)
            out.append(write_rlm_jsonl(traj, tmp / file_name(name, traj)))
    return relocate(out, tmp, Path(out_dir))
