"""The official RLM logger's JSONL format: the one writer (our trajectories, so its visualizer opens our runs) and
the one reader (its logs, or our exports, back into trajectories: ``rlm-rig import``; see the end of this module).

One file per trajectory: a ``metadata`` line, then one ``iteration`` line per controller turn
(field names as the official ``RLMLogger`` writes them; see the README's Interoperability note).
Mapping from our records:

* iteration ``prompt``: the full message list the controller had seen at that turn (the
  concatenation of ``messages_in`` up to it); ``response``: the turn's reply.
* ``code_blocks``: the cells run for that turn, each with a REPL result: stdout, stderr (plus the
  cell's error and notices, which the official record has no field for), ``execution_time``,
  ``final_answer``, and ``rlm_calls``: the cell's sub_calls as chat completions with per-call usage (a nested
  run as the call's ``metadata``: ``{run_metadata, iterations}``, as the official logger nests a child RLM).
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
from rlm_rig.records.trajectory import CellRecord, ControllerTurn, SubCallRecord, Trajectory

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
    if sc.nested_trajectory is not None:  # as the official logger nests a child RLM's trajectory
        out["metadata"] = {"run_metadata": metadata(sc.nested_trajectory),
                           "iterations": list(iterations(sc.nested_trajectory))}
    if sc.error:
        out["error"] = sc.error
        out["error_type"] = "nested_rlm_error" if sc.nested_trajectory is not None else "worker_error"
    return out


def _code_block(cell: CellRecord, subs: list[SubCallRecord], worker_model: str) -> dict[str, Any]:
    stderr = "\n".join(x for x in [cell.stderr, cell.error or "", *cell.notices] if x)
    return {"code": cell.code, "result": {
        "stdout": cell.stdout, "stderr": stderr, "locals": {}, "execution_time": cell.duration_s,
        "rlm_calls": [_completion(s, worker_model) for s in subs if s.cell == cell.index
                      and getattr(s, "kind", "llm") != "tool"],  # a custom tool (issue 22) is no model call
        "final_answer": cell.final_answer}}


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


# -- reading: an official log (or our export) back into trajectories --------------------------------------------
# The reader is the writer's mirror. What the official log has no field for stays at its default: per-turn
# controller tokens, chunk spans in the document, the question (unless given), the document's length and hash.


class LogFormatError(ValueError):
    """The file is not an official RLM log (one line names what is wrong)."""


def read_log(path: str | Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(metadata, iterations) per completion in the file. The official logger writes the metadata once per
    RLM object and restarts the iteration count at 1 for each ``completion()``, so one file may hold several runs."""
    p = Path(path)
    meta: dict[str, Any] = {}
    runs: list[list[dict[str, Any]]] = []
    for n, rec in enumerate(_records(p), 1):
        kind = rec.get("type")
        if kind == "metadata":
            if runs:
                raise LogFormatError(f"{p}: line {n}: a metadata line after iterations")
            meta = rec
        elif kind == "iteration":
            _check_iteration(p, n, rec)
            if not runs or rec.get("iteration") == 1:
                runs.append([])
            runs[-1].append(rec)
        else:
            raise LogFormatError(f"{p}: line {n}: type {kind!r} is neither 'metadata' nor 'iteration'")
    if not runs:
        raise LogFormatError(f"{p}: no iteration lines: not an official RLM log")
    return [(meta, its) for its in runs]


def _records(p: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise LogFormatError(f"{p}: not UTF-8 text: not an official RLM log") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise LogFormatError(f"{p}: line {n} is not JSON: not an official RLM log") from None
        if not isinstance(rec, dict):
            raise LogFormatError(f"{p}: line {n} is a JSON {type(rec).__name__}, not an object")
        yield rec


def _check_iteration(p: Path, n: int, rec: dict[str, Any]) -> None:
    if not isinstance(rec.get("response"), str) or not isinstance(rec.get("code_blocks", []), list):
        raise LogFormatError(f"{p}: line {n}: an iteration needs a string 'response' and a list 'code_blocks'")
    for cb in rec.get("code_blocks", []):
        if not isinstance(cb, dict) or not isinstance(cb.get("code"), str) or not isinstance(cb.get("result", {}), dict):
            raise LogFormatError(f"{p}: line {n}: a code block needs a string 'code' and a 'result' object")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _messages(prompt: Any) -> list[dict[str, str]]:
    """A prompt as chat messages: the official client sends a string as one user message."""
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return [{"role": str(m.get("role", "user")), "content": _text(m.get("content", ""))} for m in prompt]
    if prompt is None:
        return []
    return [{"role": "user", "content": _text(prompt)}]


def _new_messages(seen: list[dict[str, str]], prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """What a turn's prompt adds to the conversation so far (all of it after a compaction rewrote the history)."""
    k = 0
    while k < min(len(seen), len(prompt)) and seen[k] == prompt[k]:
        k += 1
    return prompt[k:]


def _usage(call: dict[str, Any]) -> tuple[int, int]:
    per_model = ((call.get("usage_summary") or {}).get("model_usage_summaries") or {}).values()
    return (sum(int(u.get("total_input_tokens") or 0) for u in per_model if isinstance(u, dict)),
            sum(int(u.get("total_output_tokens") or 0) for u in per_model if isinstance(u, dict)))


_ERROR_KINDS = {"worker_error": "worker", "nested_rlm_error": "nested"}


def _sub_call(call: dict[str, Any], sid: int, cell: int, depth: int, run_id: str) -> SubCallRecord:
    msgs = _messages(call.get("prompt"))
    users = [m["content"] for m in msgs if m["role"] == "user"]
    instruction = users[-1] if users else ""
    p_in, p_out = _usage(call)
    nested = call.get("metadata")
    child = None
    if isinstance(nested, dict) and isinstance(nested.get("iterations"), list) and nested["iterations"]:
        child = trajectory_from_log(nested.get("run_metadata") or {}, nested["iterations"],
                                    run_id=f"{run_id}.{sid}", depth=depth + 1)
    error = call.get("error")
    return SubCallRecord(
        id=sid, cell=cell, depth=depth + 1, chunk_chars=len(instruction), instruction=instruction,
        response=_text(call.get("response") or ""), error=error if isinstance(error, str) else None,
        error_kind=(_ERROR_KINDS.get(str(call.get("error_type")), "other") if error else None),
        prompt_tokens=p_in, completion_tokens=p_out, latency_s=float(call.get("execution_time") or 0.0),
        messages=msgs or None, nested_trajectory=child, **_kind(child is not None))


def _kind(nested: bool) -> dict[str, Any]:
    """A call that ran a child RLM is kind ``rlm`` where the record has kinds (SubCallRecord.kind, issue 22)."""
    return {"kind": "rlm" if nested else "llm"} if "kind" in SubCallRecord.model_fields else {}


def _cells(it: dict[str, Any], turn: int, first_cell: int, first_sub: int, depth: int, run_id: str
           ) -> tuple[list[CellRecord], list[SubCallRecord]]:
    cells: list[CellRecord] = []
    subs: list[SubCallRecord] = []
    for j, cb in enumerate(it.get("code_blocks") or []):
        res = cb.get("result") or {}
        calls = [c for c in (res.get("rlm_calls") or []) if isinstance(c, dict)]
        idx = first_cell + j
        subs += [_sub_call(c, first_sub + len(subs) + k, idx, depth, run_id) for k, c in enumerate(calls)]
        fa = res.get("final_answer")
        cells.append(CellRecord(
            index=idx, turn=turn, code=cb["code"], stdout=_text(res.get("stdout") or ""),
            stderr=_text(res.get("stderr") or ""), duration_s=float(res.get("execution_time") or 0.0),
            sub_calls=len(calls), final_answer=None if fa is None else _text(fa)))
    return cells, subs


def _config(meta: dict[str, Any], worker: str) -> dict[str, Any]:
    """The official run's settings, shaped like the rig's config where a key has a rig meaning (export reads them)."""
    kw = meta.get("backend_kwargs") if isinstance(meta.get("backend_kwargs"), dict) else {}
    env = meta.get("environment_kwargs") if isinstance(meta.get("environment_kwargs"), dict) else {}
    return {
        "controller": {"backend": str(meta.get("backend", "unknown")), **kw},
        "worker": {"model": worker},
        "rlm": {k: meta[k] for k in ("max_depth", "max_iterations") if isinstance(meta.get(k), int)},
        "sandbox": {"cell_timeout_s": env["cell_timeout_s"]} if "cell_timeout_s" in env else {},
        "imported": {"format": "rlm-jsonl", **{k: meta.get(k) for k in (
            "root_model", "environment_type", "environment_kwargs", "other_backends")}},
    }


def _worker_model(meta: dict[str, Any], iterations: list[dict[str, Any]]) -> str:
    for it in iterations:
        for cb in it.get("code_blocks") or []:
            for call in (cb.get("result") or {}).get("rlm_calls") or []:
                if isinstance(call, dict) and call.get("root_model"):
                    return str(call["root_model"])
    others = meta.get("other_backends") or []
    return str(others[0]) if others else str(meta.get("root_model") or "worker")


def _turns(iterations: list[dict[str, Any]], depth: int, run_id: str
           ) -> tuple[list[ControllerTurn], list[CellRecord], list[SubCallRecord]]:
    turns: list[ControllerTurn] = []
    cells: list[CellRecord] = []
    subs: list[SubCallRecord] = []
    seen: list[dict[str, str]] = []
    for i, it in enumerate(iterations):
        prompt = _messages(it.get("prompt"))
        new_cells, new_subs = _cells(it, i, len(cells), len(subs), depth, run_id)
        spent = sum(c.duration_s for c in new_cells)
        # the official run out of iterations asks once more, its prompt ending on its own assistant line
        forced = (not it.get("code_blocks") and it.get("final_answer") is not None and i == len(iterations) - 1
                  and bool(prompt) and prompt[-1]["role"] == "assistant")
        turns.append(ControllerTurn(index=i, messages_in=_new_messages(seen, prompt), response=it["response"],
                                    latency_s=max(0.0, float(it.get("iteration_time") or 0.0) - spent),
                                    forced_final=forced))
        cells += new_cells
        subs += new_subs
        seen = prompt + [{"role": "assistant", "content": it["response"]}]
    return turns, cells, subs


def trajectory_from_log(meta: dict[str, Any], iterations: list[dict[str, Any]], *, run_id: str,
                        question: str = "", depth: int = 0) -> Trajectory:
    """One completion of an official log as a rig trajectory (nested runs from each call's ``metadata``)."""
    turns, cells, subs = _turns(iterations, depth, run_id)
    final = next((it["final_answer"] for it in reversed(iterations) if it.get("final_answer") is not None), None)
    worker = _worker_model(meta, iterations)
    cfg = _config(meta, worker)
    env = cfg["imported"].get("environment_kwargs") or {}
    started = str(meta.get("timestamp") or iterations[0].get("timestamp") or datetime.now().isoformat())
    stop = ("max_iterations" if turns[-1].forced_final else "final") if final is not None else "error"
    return Trajectory(
        run_id=run_id, question=question, doc_chars=int(env.get("doc_chars") or 0) if isinstance(env, dict) else 0,
        doc_sha256="", config=cfg, config_hash=hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str)
                                                               .encode()).hexdigest()[:16],
        models={"controller": str(meta.get("root_model") or "controller"), "worker": worker},
        versions={"imported_from": "rlm-jsonl"}, depth=depth, started_at=started,
        wall_s=sum(float(it.get("iteration_time") or 0.0) for it in iterations),
        model_wall_s=sum(t.latency_s for t in turns), turns=turns, cells=cells, sub_calls=subs,
        final_answer=None if final is None else _text(final), stop_reason=stop,
        error=None if final is not None else "the log ends without a final answer (a run cut short?)")
