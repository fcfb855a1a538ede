"""The controller's side on a real model (`-m smollm`): SmolLM2-135M-Instruct teacher-forced (float32) on
chunk-count replay conversations (the weights are real, the text was written by hand). The figures of
docs/BOUNDARY.md come from a real cpu-small run; this is the same job on a small handwritten run that fits the
acceptance tier: attribution vs exact patching, whole-cell patches, probes and faithfulness all come back."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from controller_run import make_controller_run

pytestmark = [pytest.mark.smollm, pytest.mark.slow]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from rlm_rig.interp.config import InterpConfig
    from rlm_rig.interp.controller_job import ControllerModelSpec, controller_job

    root = tmp_path_factory.mktemp("ctl-smollm2")
    run = make_controller_run(root / "run", n_samples=4, n_chunks=4, seed=1)
    cfg = InterpConfig(n_pairs=2, directions=["denoise"], attr_components=["resid"], attr_top_k=2,
                       attr_validate_max_tokens=4000, attr_validate_layers=[0], layers=[0, 15, 29], batch_size=16)
    s = controller_job(run, root / "out", cfg, ControllerModelSpec(model="smollm2", dtype="float32"))
    return s, root / "out"


def test_controller_attribution_ranks_like_exact_patching_on_smollm2(result):
    s, out = result
    cmp = pd.read_parquet(out / "attribution_vs_exact.parquet")
    every = cmp[cmp["scope"] == "all_sites"]
    print(every.to_string())
    print(json.dumps(s.comparison, indent=1))
    assert len(every) == 2 and every["spearman_after_edit"].notna().all()
    assert float(every["spearman_after_edit"].median()) > 0.5  # a wrong index or sign gives ~0 or < 0


def test_controller_faithfulness_and_probes_on_smollm2(result):
    s, out = result
    faith = pd.read_parquet(out / "faithfulness.parquet")
    assert len(faith) == 12 and faith["replayed"].all() and (faith["mean_logprob"] < 0).all()
    assert 0.0 < faith["argmax_agreement"].mean() < 1.0  # handwritten text: partly what SmolLM2 would say
    probes = pd.read_parquet(out / "probes.parquet")
    assert set(probes["position"]) == {"value", "next"} and set(probes["layer"]) == {0, 15, 29}
    print(probes[["layer", "position", "probe_acc", "control_acc", "majority_acc"]].to_string())
