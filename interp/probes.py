"""Linear probes per layer: does the worker's activation encode the chunk's count?

Train/test split is by chunk (one sub_call = one group), so a probe cannot memorise a chunk
from one position and read it back at another. The control task (Hewitt & Liang style) trains
the same probe on labels shuffled across chunks: accuracy above control is what the
representation adds, not what the probe can memorise.

"Represented but not verbalized" = the probe decodes the right count while the worker's text
answer is wrong, on test chunks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .shards import load_rows, read_index


@dataclass
class ProbeResult:
    layer: int
    n_train: int
    n_test: int
    n_classes: int
    probe_acc: float
    control_acc: float
    selectivity: float
    majority_acc: float
    worker_acc: float
    rnv_rate: float  # P(probe right and worker wrong) on test chunks
    rnv_given_worker_wrong: float  # P(probe right | worker wrong)
    n_worker_wrong: int
    vnr_rate: float  # P(worker right and probe wrong): verbalized, not (linearly) represented


def _fit_predict(xtr, ytr, xte, c: float, seed: int) -> np.ndarray:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    clf.fit(xtr, ytr)
    return clf.predict(xte)


def shuffle_by_group(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Control labels: each chunk gets another chunk's label (all its rows the same one)."""
    uniq, first = np.unique(groups, return_index=True)
    labels = y[first].copy()
    rng.shuffle(labels)
    lut = dict(zip(uniq.tolist(), labels.tolist()))
    return np.array([lut[g] for g in groups.tolist()])


def probe_layer(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    worker: np.ndarray | None = None,
    *,
    layer: int = 0,
    test_size: float = 0.3,
    c: float = 1.0,
    seed: int = 0,
) -> ProbeResult:
    """Fit one probe; `worker` holds the worker's parsed answer per row (NaN/None = no number)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 4:
        raise ValueError(f"need at least 4 chunks to split train/test by chunk, got {len(np.unique(groups))}")
    split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    tr, te = next(split.split(x, y, groups))
    nan = float("nan")
    if len(np.unique(y[tr])) < 2:
        pred = np.full(len(te), y[tr][0])
    else:
        pred = _fit_predict(x[tr], y[tr], x[te], c, seed)
    y_ctrl = shuffle_by_group(y, groups, np.random.default_rng(seed + 1))
    if len(np.unique(y_ctrl[tr])) < 2:
        pred_c = np.full(len(te), y_ctrl[tr][0])
    else:
        pred_c = _fit_predict(x[tr], y_ctrl[tr], x[te], c, seed)
    vals, counts = np.unique(y[tr], return_counts=True)
    majority = vals[np.argmax(counts)]
    probe_ok = pred == y[te]
    if worker is not None:
        w = np.asarray(worker, dtype=float)[te]
        worker_ok = np.isfinite(w) & (w == y[te].astype(float))
        wrong = ~worker_ok
        worker_acc = float(worker_ok.mean())
        rnv = float((probe_ok & wrong).mean())
        rnv_c = float(probe_ok[wrong].mean()) if wrong.any() else nan
        vnr = float((~probe_ok & worker_ok).mean())
        n_wrong = int(wrong.sum())
    else:
        worker_acc = rnv = rnv_c = vnr = nan
        n_wrong = 0
    acc = float(probe_ok.mean())
    ctrl = float((pred_c == y_ctrl[te]).mean())
    return ProbeResult(
        layer=layer, n_train=len(tr), n_test=len(te), n_classes=int(len(vals)), probe_acc=acc, control_acc=ctrl,
        selectivity=acc - ctrl, majority_acc=float((y[te] == majority).mean()), worker_acc=worker_acc,
        rnv_rate=rnv, rnv_given_worker_wrong=rnv_c, n_worker_wrong=n_wrong, vnr_rate=vnr,
    )


def run_probes(
    capture_dir: str | Path,
    *,
    component: str = "resid",
    position: str = "last",
    test_size: float = 0.3,
    c: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """One probe per captured layer on rows with a known gold; returns the per-layer table."""
    idx = read_index(capture_dir)
    idx = idx[(idx["component"] == component) & (idx["position"] == position) & idx["gold"].notna()]
    if idx.empty:
        raise ValueError(
            f"no captured rows with gold for component={component!r}, position={position!r} in {capture_dir}; "
            "capture that position, and give chunk gold (roll-count instructions or --gold FILE)"
        )
    out = []
    for layer, grp in idx.groupby("layer"):
        grp = grp.reset_index(drop=True)
        x = load_rows(capture_dir, grp)
        groups = (grp["sample"].astype(str) + ":" + grp["sub_call"].astype(str)).to_numpy()
        worker = grp["worker_count"].astype("float64").to_numpy()
        res = probe_layer(x, grp["gold"].astype(int).to_numpy(), groups, worker, layer=int(layer),
                          test_size=test_size, c=c, seed=seed)
        out.append(asdict(res))
    return pd.DataFrame(out)
