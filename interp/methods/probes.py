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
from threadpoolctl import threadpool_limits

from rlm_rig.interp.data.shards import load_rows, read_index


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
    # One BLAS thread: these fits are small, and beside a running model on a shared CPU a thread pool
    # oversubscribes the cores (measured: 5-split probes over 30 layers took > 8 CPU-min, < 45 s with one thread).
    with threadpool_limits(limits=1):
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
    n_splits: int = 1,
) -> ProbeResult:
    """Fit one probe; `worker` holds the worker's parsed answer per row (NaN/None = no number).

    With `n_splits` > 1 the figures are means over that many random by-chunk splits: on a few
    hundred chunks one test split is too small to tell a probe from its control."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    groups = np.asarray(groups)
    if len(np.unique(groups)) < 4:
        raise ValueError(f"need at least 4 chunks to split train/test by chunk, got {len(np.unique(groups))}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    split = GroupShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    y_ctrl = shuffle_by_group(y, groups, np.random.default_rng(seed + 1))
    w_all = None if worker is None else np.asarray(worker, dtype=float)
    results = [_one_split(x, y, y_ctrl, w_all, tr, te, c, seed) for tr, te in split.split(x, y, groups)]
    mean = {k: float(np.nanmean([r[k] for r in results])) if any(np.isfinite(r[k]) for r in results)
            else float("nan") for k in results[0]}
    return ProbeResult(
        layer=layer, n_train=int(round(mean["n_train"])), n_test=int(round(mean["n_test"])),
        n_classes=int(round(mean["n_classes"])), probe_acc=mean["probe_acc"], control_acc=mean["control_acc"],
        selectivity=mean["probe_acc"] - mean["control_acc"], majority_acc=mean["majority_acc"],
        worker_acc=mean["worker_acc"], rnv_rate=mean["rnv_rate"], rnv_given_worker_wrong=mean["rnv_given_worker_wrong"],
        n_worker_wrong=int(round(mean["n_worker_wrong"])), vnr_rate=mean["vnr_rate"],
    )


def _one_split(x, y, y_ctrl, worker, tr, te, c: float, seed: int) -> dict[str, float]:
    nan = float("nan")
    pred = np.full(len(te), y[tr][0]) if len(np.unique(y[tr])) < 2 else _fit_predict(x[tr], y[tr], x[te], c, seed)
    if len(np.unique(y_ctrl[tr])) < 2:
        pred_c = np.full(len(te), y_ctrl[tr][0])
    else:
        pred_c = _fit_predict(x[tr], y_ctrl[tr], x[te], c, seed)
    vals, counts = np.unique(y[tr], return_counts=True)
    majority = vals[np.argmax(counts)]
    probe_ok = pred == y[te]
    if worker is not None:
        w = worker[te]
        worker_ok = np.isfinite(w) & (w == y[te].astype(float))
        wrong = ~worker_ok
        worker_acc, n_wrong = float(worker_ok.mean()), float(wrong.sum())
        rnv = float((probe_ok & wrong).mean())
        rnv_c = float(probe_ok[wrong].mean()) if wrong.any() else nan
        vnr = float((~probe_ok & worker_ok).mean())
    else:
        worker_acc = rnv = rnv_c = vnr = nan
        n_wrong = 0.0
    return dict(n_train=float(len(tr)), n_test=float(len(te)), n_classes=float(len(vals)),
                probe_acc=float(probe_ok.mean()), control_acc=float((pred_c == y_ctrl[te]).mean()),
                majority_acc=float((y[te] == majority).mean()), worker_acc=worker_acc, rnv_rate=rnv,
                rnv_given_worker_wrong=rnv_c, n_worker_wrong=n_wrong, vnr_rate=vnr)


def run_probes(
    capture_dir: str | Path,
    *,
    component: str = "resid",
    position: str = "last",
    test_size: float = 0.3,
    c: float = 1.0,
    seed: int = 0,
    n_splits: int = 1,
    faithful_only: bool = False,
) -> pd.DataFrame:
    """One probe per captured layer on rows with a known gold; returns the per-layer table, with how
    many probed sub_calls were faithful to what vLLM generated (and, with `faithful_only`, only those)."""
    from rlm_rig.interp.methods.faithfulness import faithfulness_flags, flag_faithful

    idx = read_index(capture_dir)
    idx = idx[(idx["component"] == component) & (idx["position"] == position) & idx["gold"].notna()]
    idx = flag_faithful(idx, faithfulness_flags(capture_dir))
    if faithful_only:
        idx = idx[idx["faithful"] != False]  # noqa: E712  (None: unknown, kept)
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
                          test_size=test_size, c=c, seed=seed, n_splits=n_splits)
        subs = grp.drop_duplicates(["sample", "sub_call"])
        out.append({**asdict(res), "n_faithful": int((subs["faithful"] == True).sum()),  # noqa: E712
                    "n_unfaithful": int((subs["faithful"] == False).sum())})  # noqa: E712
    return pd.DataFrame(out)


def heldout_predictions(capture_dir: str | Path, *, layer: int, component: str = "resid", position: str = "last",
                        c: float = 1.0, seed: int = 0, n_folds: int = 5) -> pd.DataFrame:
    """A held-out probe prediction for every captured sub_call with gold at one layer: columns sample,
    sub_call, gold, probe_pred. Folds split by chunk (GroupKFold), so each prediction comes from a probe
    that never saw that chunk. WHY: the loss ledger (experiments/analysis/ledger.py) asks, chunk by chunk,
    whether the right value was decodable where the worker's reply was wrong; `run_probes` gives rates only."""
    from sklearn.model_selection import GroupKFold

    idx = read_index(capture_dir)
    idx = idx[(idx["component"] == component) & (idx["position"] == position) & idx["gold"].notna()
              & (idx["layer"] == layer)].reset_index(drop=True)
    groups = (idx["sample"].astype(str) + ":" + idx["sub_call"].astype(str)).to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"need at least 2 captured chunks with gold at layer {layer} in {capture_dir}, got {n_groups}")
    x, y = load_rows(capture_dir, idx), idx["gold"].astype(int).to_numpy()
    pred = np.empty(len(y), dtype=int)
    for tr, te in GroupKFold(n_splits=min(n_folds, n_groups)).split(x, y, groups):
        pred[te] = np.full(len(te), y[tr][0]) if len(np.unique(y[tr])) < 2 else _fit_predict(x[tr], y[tr], x[te], c, seed)
    out = idx[["sample", "sub_call"]].assign(gold=y, probe_pred=pred)
    return out.drop_duplicates(["sample", "sub_call"]).reset_index(drop=True)
