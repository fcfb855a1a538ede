"""``rlm-rig import --format rlm-jsonl``: official RLM logs -> one rig run folder (view, report, score, interp).

Each completion in a log becomes a trajectory and a sample row. The reader is the exporter's mirror
(experiments/view/rlm_jsonl.py). Gold answers come from an optional JSONL file (``{"id", "gold"}`` rows, and
``answer_type`` for oolong-synth), scored with the dataset's official rules; without them a row's score is NaN.
Everything is read and checked before the folder is claimed, so a bad log leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from rlm_rig.experiments.view.rlm_jsonl import LogFormatError, read_log, trajectory_from_log
from rlm_rig.records.runlog import EvalSpec, RunFolder, trajectory_row
from rlm_rig.records.trajectory import SampleRow, Trajectory, read_jsonl

FORMATS = ("rlm-jsonl",)
_LOGGER_NAME = re.compile(r"(.+)_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_([0-9a-f]{8})")


def log_files(paths: list[Path]) -> list[Path]:
    """The files to read: each path itself, or a folder's ``*.jsonl`` files in name order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"{p} holds no .jsonl files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{str(p)!r} is neither a file nor a folder")
    return out


def _base_id(path: Path) -> tuple[str, str]:
    """(id, tie-breaker) from the logger's ``{name}_{date}_{time}_{8 hex}.jsonl`` (our export names the sample)."""
    m = _LOGGER_NAME.fullmatch(path.stem)
    return (m.group(1), m.group(2)) if m else (path.stem, "")


def read_runs(files: list[Path], question: str = "") -> list[tuple[str, Trajectory]]:
    """(sample id, trajectory) for every completion in every file; ids are unique."""
    out: list[tuple[str, Trajectory]] = []
    used: set[str] = set()
    for f in files:
        runs = read_log(f)
        base, tie = _base_id(f)
        for k, (meta, its) in enumerate(runs):
            sid = base if len(runs) == 1 else f"{base}-{k + 1}"
            if sid in used:
                sid = f"{sid}_{tie}" if tie and f"{sid}_{tie}" not in used else f"{sid}_{len(used)}"
            used.add(sid)
            out.append((sid, trajectory_from_log(meta, its, run_id=sid, question=question)))
    return out


def read_gold(path: Path | None, dataset: str | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    if dataset is None:
        raise ValueError("--gold needs --dataset (the rules to score with)")
    from rlm_rig.experiments.datasets.scoring import canonical_dataset

    canonical_dataset(dataset)
    gold: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row, dict) or "id" not in row or "gold" not in row:
            raise ValueError(f"{path}: line {i} needs 'id' and 'gold'")
        gold[str(row["id"])] = row
    return gold


def _row(sid: str, t: Trajectory, rel: str, dataset: str | None, gold: dict[str, Any] | None) -> SampleRow:
    if gold is None or dataset is None:
        return trajectory_row(t, id=sid, dataset=dataset or "rlm-jsonl", trajectory=rel)
    from rlm_rig.experiments.datasets.scoring import score_output, score_output_lenient

    kw = {"answer_type": gold.get("answer_type")}
    off = score_output(dataset, t.final_answer, gold["gold"], **kw)
    lenient = score_output_lenient(dataset, t.final_answer, gold["gold"], **kw)
    return trajectory_row(t, id=sid, dataset=dataset, trajectory=rel, gold=str(gold["gold"]), score=off.score,
                          parsed=off.parsed_json(), lenient_score=lenient.score)


def with_document(runs: list[tuple[str, Trajectory]], doc: Path | None) -> None:
    """The document the runs read (the official log records neither its length nor its hash)."""
    if doc is None:
        return
    if not doc.is_file():
        raise FileNotFoundError(f"--doc {str(doc)!r} is not a file")
    text = doc.read_text(errors="replace")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    for _, t in runs:
        t.doc_chars, t.doc_sha256 = len(text), digest


def import_logs(paths: list[Path], out_dir: Path, *, fmt: str = "rlm-jsonl", dataset: str | None = None,
                gold_file: Path | None = None, question: str = "", doc: Path | None = None) -> dict[str, Any]:
    """Read every log, then write one run folder; returns its summary."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not known; formats: {', '.join(FORMATS)}")
    runs = read_runs(log_files(paths), question)
    with_document(runs, doc)
    gold = read_gold(gold_file, dataset)
    missing = [sid for sid, _ in runs if gold and sid not in gold]
    if missing:
        raise ValueError(f"{gold_file} has no gold for {missing[0]!r} ({len(missing)} run(s) without one)")
    folder = RunFolder(out_dir)
    held = folder.claim("import")
    try:
        for sid, t in runs:
            path = folder.trajectory_path(sid)
            t.save(path)
            folder.append(_row(sid, t, folder.relative(path), dataset, gold.get(sid)))  # a NaN score stays NaN
        folder.write_spec(EvalSpec(dataset=dataset or "rlm-jsonl", source=fmt, method="rlm",
                                   loader_options={"imported": [str(p) for p in paths]}))
        from rlm_rig.experiments.runs.evaluate import summarize

        summary = summarize(folder)
        folder.write_results({**summary, "status": "complete", "method": "rlm", "dataset": dataset or "rlm-jsonl"})
    finally:
        held.release()
    return summary


__all__ = ["LogFormatError", "import_logs", "read_runs", "log_files"]
