"""What a run's interp outputs say, per studied sub_call, for the viewer.

It reads only what ``rlm-rig interp`` wrote under ``RUN/interp/`` (file names from interp/ itself),
so any of capture / patch / probe / report may be missing. Tables the viewer does not know by name
but that carry ``sample`` and ``sub_call`` columns (per-sub_call faithfulness, attribution, heads,
logit lens, ...) are picked up generically and shown on each sub_call's interp page, filtered to it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

Key = tuple[str, int]  # (interp sample key = trajectory stem, possibly "stem/3" for nested, sub_call id)

# File names written by interp/ (capture.REPLAY_FILE, shards.INDEX_FILE, jobs.*_FILE). They are imported
# lazily: interp.methods.capture pulls in torch, which a viewer run on a laptop should not need to start.
_KNOWN = {"replay.parquet", "index.parquet", "patching.parquet", "patching_agg.parquet", "probes.parquet",
          "replay_agreement.csv", "patching_agg.csv", "probes.csv", "aggregation_by_sample.csv"}
MAX_ROWS_PER_TABLE = 400


def _file_names() -> dict[str, str]:
    from rlm_rig.interp.methods.capture import REPLAY_FILE
    from rlm_rig.interp.jobs import AGG_FILE, PATCH_FILE, PROBE_FILE
    from rlm_rig.interp.data.shards import INDEX_FILE

    return {"replay": REPLAY_FILE, "index": INDEX_FILE, "patch": PATCH_FILE, "agg": AGG_FILE, "probe": PROBE_FILE}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            return _clean(v.item())
        except (ValueError, AttributeError):
            return str(v)
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def records(df: pd.DataFrame, limit: int | None = MAX_ROWS_PER_TABLE) -> list[dict[str, Any]]:
    d = df if limit is None else df.head(limit)
    return [{str(k): _clean(v) for k, v in r.items()} for r in d.to_dict("records")]


def _read_table(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception:  # a half-written or foreign file: the viewer shows the rest
        return None


@dataclass
class Heatmap:
    """One layer x position grid of patching effects (one pair or the mean over pairs)."""

    title: str
    layers: list[int]
    positions: list[str]
    cells: list[list[float | None]]


@dataclass
class InterpData:
    root: Path
    replay: dict[Key, dict[str, Any]] = field(default_factory=dict)
    chunk: dict[Key, dict[str, Any]] = field(default_factory=dict)  # gold / worker_count / worker_correct
    pairs: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    patch_rows: dict[str, pd.DataFrame] = field(default_factory=dict)  # pair id -> rows
    extra: dict[Key, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # table name -> rows
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png)
    summary_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    replay_summary: dict[str, Any] | None = None

    @property
    def present(self) -> bool:
        return bool(self.replay or self.chunk or self.pairs or self.extra or self.images or self.summary_tables)

    def studied(self) -> list[Key]:
        keys = set(self.replay) | set(self.pairs) | set(self.extra)
        keys |= {k for k, v in self.chunk.items() if v.get("captured")}
        return sorted(keys, key=lambda k: (k[0], k[1]))

    def heatmaps(self, key: Key) -> list[Heatmap]:
        out = []
        for p in self.pairs.get(key, []):
            df = self.patch_rows.get(str(p.get("pair")))
            if df is None or df.empty:
                continue
            for (comp, direction), g in df.groupby(["component", "direction"]):
                layers = sorted(int(x) for x in g["layer"].unique())
                positions = sorted(str(x) for x in g["position"].unique())
                try:
                    from rlm_rig.interp.report.plots import POSITION_ORDER

                    positions.sort(key=lambda s: POSITION_ORDER.index(s) if s in POSITION_ORDER else len(POSITION_ORDER))
                except ImportError:
                    pass
                grid: list[list[float | None]] = [[None] * len(layers) for _ in positions]
                means = g.groupby(["position", "layer"])["normalized"].mean()
                for (pos, layer), v in means.items():
                    grid[positions.index(str(pos))][layers.index(int(layer))] = _clean(float(v))
                out.append(Heatmap(f"pair {p.get('pair')} ({p.get('corruption')}): {comp}, {direction}",
                                   layers, positions, grid))
        return out


def _key(sample: Any, sub_call: Any) -> Key | None:
    try:
        return (str(sample), int(sub_call))
    except (TypeError, ValueError):
        return None


def load_interp(run_dir: str | Path) -> InterpData:
    root = Path(run_dir) / "interp"
    data = InterpData(root)
    if not root.is_dir():
        return data
    names = _file_names()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        _read_folder(folder, names, data)
    return data


# long: one reader per interp output file, tolerant of the ones a run does not have
def _read_folder(folder: Path, names: dict[str, str], data: InterpData) -> None:
    rep = folder / names["replay"]
    if rep.exists() and (df := _read_table(rep)) is not None and not df.empty:
        for r in records(df, None):
            if (k := _key(r.get("sample"), r.get("sub_call"))) is not None:
                data.replay[k] = r
        n = len(df)
        data.replay_summary = {"n": n, "exact_match_rate": float(df["exact_match"].mean()) if n else None,
                               "prefix_match_rate": float(df["prefix_match"].mean()) if "prefix_match" in df and n else None}
    idx = folder / names["index"]
    if idx.exists():
        try:
            import pyarrow.parquet as pq

            cols = ["sample", "sub_call", "gold", "gold_source", "worker_answer", "worker_count", "worker_correct"]
            t = pq.read_table(str(idx), columns=cols).to_pandas().drop_duplicates(["sample", "sub_call"])
            for r in records(t, None):
                if (k := _key(r.pop("sample"), r.pop("sub_call"))) is not None:
                    data.chunk.setdefault(k, {}).update({kk: v for kk, v in r.items() if v is not None}, captured=True)
        except Exception:
            pass
    agg_sub = folder / "aggregation_by_sub_call.csv"
    if agg_sub.exists() and (df := _read_table(agg_sub)) is not None:
        for r in records(df, None):
            if (k := _key(r.get("sample"), r.get("sub_call"))) is not None:
                cur = data.chunk.setdefault(k, {})
                for f in ("gold", "gold_source", "worker_count", "worker_correct"):
                    if r.get(f) is not None and f not in cur:
                        cur[f] = r[f]
    pairs = folder / "pairs.jsonl"
    if pairs.exists():
        from rlm_rig.records.trajectory import read_jsonl

        tag = folder.name
        for p in read_jsonl(pairs):
            p = {**p, "pair": f"{tag}:{p.get('pair')}"}
            if (k := _key(p.get("sample"), p.get("sub_call"))) is not None:
                data.pairs.setdefault(k, []).append(p)
        pr = folder / names["patch"]
        if pr.exists() and (df := _read_table(pr)) is not None and "pair" in df:
            df = df.assign(pair=tag + ":" + df["pair"].astype(str))
            for pid, g in df.groupby("pair"):
                data.patch_rows[str(pid)] = g
    for png in sorted(folder.glob("*.png")):
        if folder.name != "report":  # the report copies the same figures
            data.images.append((f"{folder.name}: {png.stem.replace('_', ' ')}", png))
    agg = folder / names["agg"]
    if agg.exists() and (df := _read_table(agg)) is not None:
        data.summary_tables[f"{folder.name}: patching, mean over pairs (top 40 by effect)"] = records(
            df.sort_values("mean", ascending=False), 40)
    probe = folder / names["probe"]
    if probe.exists() and (df := _read_table(probe)) is not None:
        data.summary_tables[f"{folder.name}: probes per layer"] = records(df)
    _controller_tables(folder, data)
    agg_sample = folder / "aggregation_by_sample.csv"
    if agg_sample.exists() and (df := _read_table(agg_sample)) is not None:
        data.summary_tables[f"{folder.name}: controller aggregation by sample"] = records(df)
    known = _KNOWN | set(names.values()) | {"aggregation_by_sub_call.csv"}
    for f in sorted([*folder.glob("*.parquet"), *folder.glob("*.csv")]):
        if f.name in known:
            continue
        df = _read_table(f)
        if df is None or not {"sample", "sub_call"} <= set(df.columns):
            continue
        name = f"{folder.name}/{f.name}"
        for (s, sc), g in df.groupby(["sample", "sub_call"]):
            if (k := _key(s, sc)) is not None:
                data.extra.setdefault(k, {})[name] = records(g.drop(columns=["sample", "sub_call"]))


def chunk_verdict(info: dict[str, Any] | None) -> str | None:
    """'right' / 'wrong' when the chunk's gold and the worker's count are both known, else None."""
    if not info or info.get("gold") is None:
        return None
    if info.get("worker_correct") is not None:
        return "right" if bool(info["worker_correct"]) else "wrong"
    if info.get("worker_count") is None:
        return "wrong"
    return "right" if int(info["worker_count"]) == int(info["gold"]) else "wrong"


def as_json(v: Any) -> str:
    return json.dumps(_clean(v), default=str)


def _controller_tables(folder: Path, data: InterpData) -> None:
    """An `interp controller` folder (controller.json): its comparison with exact patching, where the answer's
    attribution sits by token group, the whole-cell exact patches and each turn's faithfulness, as summary tables
    (its probes come in as every folder's probes.parquet)."""
    meta = folder / "controller.json"
    if not meta.is_file():
        return
    try:
        s = json.loads(meta.read_text()).get("summary", {})
    except (ValueError, OSError):
        return
    name = folder.name
    data.summary_tables[f"{name}: attribution vs exact patching (medians)"] = [
        {"scope/component": k, **v} for k, v in (s.get("comparison") or {}).items()]
    data.summary_tables[f"{name}: mean share of |attribution| (resid) by token group"] = [
        {"group": k, "abs_share": v} for k, v in (s.get("cells") or {}).items()]
    for f, title in (("cell_exact.parquet", "whole cell output patched exactly vs summed attribution"),
                     ("faithfulness.parquet", "faithfulness of each teacher-forced turn")):
        if (df := _read_table(folder / f)) is not None:
            data.summary_tables[f"{name}: {title}"] = records(df)
