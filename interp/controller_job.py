"""`rlm-rig interp controller`: the controller's side of a run, as one job (the worker's jobs are interp/jobs.py).

Select the samples' conversations, load the controller's weights (or any model for a replay controller,
whose text no tokenizer produced), check the tokenizer against the recorded prompt lengths, then: per-turn
faithfulness, controller pairs, attribution patching with its exact checks, the per-cell-output table and the
whole-cell exact patches, and the told-value probes. Written into a staged folder (nothing appears unless
finished); a run without controller turns is refused before any model loads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from rlm_rig.interp.config import InterpConfig, InterpConfigError
from rlm_rig.interp.data.controller_turns import ControllerItem, collect_controller_items
from rlm_rig.interp.data.selection import NothingToStudyError, Selection
from rlm_rig.interp.jobs import ATTR_CMP_FILE, ATTR_FILE, ATTR_TOPK_FILE, _cmp_summary, attribute_pair_all, dtype_name
from rlm_rig.interp.methods import controller as ctl
from rlm_rig.interp.methods.prefix_exact import exact_sites_prefix
from rlm_rig.interp.methods.faithfulness import FAITHFULNESS_FILE, summary as faith_summary
from rlm_rig.interp.model import ReplayModel
from rlm_rig.interp.outputs import claim_out, staged_dir
from rlm_rig.interp.provenance import model_provenance
from rlm_rig.interp.report.plots import attribution_map

COMMAND = "interp controller"
CELL_FILE = "attribution_by_cell.parquet"
CELL_EXACT_FILE = "cell_exact.parquet"
PROBE_FILE = "probes.parquet"
SUMMARY_FILE = "controller.json"


class ControllerModelSpec(BaseModel):
    """The controller weights to teacher-force, and how the rig loaded them."""

    model: str
    dtype: str = "bfloat16"
    quantization: str = "none"
    device: str = "cpu"


def controller_target(profile: dict, cfg: InterpConfig, *, model: str | None = None, dtype: str | None = None,
                      device: str | None = None) -> ControllerModelSpec:
    """`--model` (any model: a replay controller's text was written by hand) or the profile's transformers/openai
    controller, in its own quantization, dtype and device (a4500x2-hf: NF4 on cuda:0)."""
    from rlm_rig.worker.models import check_model_ref

    from types import SimpleNamespace

    from rlm_rig.configs.memplan import controller_quantization

    c = profile.get("controller") or {}
    if model is None and c.get("backend") in ("transformers", "openai") and c.get("model"):
        srv = c.get("server")
        q = controller_quantization(SimpleNamespace(backend=c["backend"], quantization=c.get("quantization", "none"),
                                                    server=SimpleNamespace(**srv) if isinstance(srv, dict) else None))
        dev = device or (c.get("device") if c.get("backend") == "transformers" else cfg.device)
        return ControllerModelSpec(model=str(c["model"]), dtype=dtype or str(c.get("dtype") or "bfloat16"),
                                   quantization=q or "none", device=dev or "cpu")
    if model is None:
        raise InterpConfigError("the profile's controller is a replay (no weights): give --model, e.g. --model smollm2 "
                                "to teacher-force its text through SmolLM2")
    try:
        model = check_model_ref(model)
    except ValueError as exc:
        raise InterpConfigError(f"--model: {exc}") from None
    return ControllerModelSpec(model=model, dtype=dtype or cfg.dtype or "float32", device=device or cfg.device)


def load_controller(spec: ControllerModelSpec) -> ReplayModel:
    return ReplayModel(spec.model, dtype=spec.dtype, device=spec.device, quantization=spec.quantization)


@dataclass
class ControllerSummary:
    out_dir: str
    n_samples: int
    n_pairs: int
    faithfulness: dict
    comparison: dict
    probes: dict
    cells: dict
    warnings: list[str] = field(default_factory=list)


def controller_job(run_dir, out_dir, cfg: InterpConfig, spec: ControllerModelSpec, *,
                   selection: Selection | None = None, model: ReplayModel | None = None,
                   corruptions: list[str] | None = None, progress=None) -> ControllerSummary:
    out_dir = claim_out(out_dir, COMMAND, [run_dir])  # before any model loads
    items = collect_controller_items(run_dir, selection)  # refuses a run without controller turns
    model = model or load_controller(spec)
    items = _short_enough(model, items, cfg, run_dir)
    ctl.check_tokenizer(model, items)
    kinds = list(corruptions or ctl.CORRUPTIONS)
    faith = [r for it in items for r in ctl.turn_faithfulness(model, it, max_dlogprob=cfg.faithful_max_dlogprob)]
    pairs, failed = ctl.build_pairs(model, items, n_pairs=cfg.n_pairs, corruptions=kinds, seed=cfg.seed)
    if not pairs:
        raise NothingToStudyError("controller pairs", run_dir, {"no_told_value": len(items)})
    tables = _attribute(model, pairs, cfg, progress)
    probes = ctl.probe_told_values(model, items, model.resolve_layers(cfg.layers), test_size=cfg.probe_test_size,
                                   c=cfg.probe_c, seed=cfg.seed, n_splits=cfg.probe_splits)
    warn = _warnings(items, tables["cmp_rows"], cfg)
    summ = ControllerSummary(str(getattr(out_dir, "path", out_dir)), len(items), len(pairs), faith_summary(faith),
                             _cmp_summary(tables["cmp"]), _probe_summary(probes), _cell_summary(tables["cells"]), warn)
    _write(out_dir, model, items, pairs, faith, tables, probes, summ, cfg, failed)
    return summ


def _short_enough(model: ReplayModel, items: list[ControllerItem], cfg: InterpConfig, run_dir) -> list[ControllerItem]:
    """The conversations within `controller_max_tokens` (what `plan` sized the GPU for)."""
    if not cfg.controller_max_tokens:
        return items
    kept = [it for it in items if len(model.render(it.messages).ids) <= cfg.controller_max_tokens]
    if not kept:
        raise NothingToStudyError("controller turns to replay", run_dir, {"too_long": len(items)})
    return kept


def _attribute(model: ReplayModel, pairs, cfg: InterpConfig, progress) -> dict:
    """attribute_pair_all per pair (the worker's attribution with its top-k and every-site exact checks), plus the
    per-cell rows and whole-cell exact patches."""
    vlayers = model.resolve_layers(cfg.attr_validate_layers)
    frames, topk, cmp, cells, cell_exact, figs = [], [], [], [], [], []
    for n, pair in enumerate(pairs):
        for direction, fr, small, tk, cm, res in attribute_pair_all(model, pair, cfg=cfg, vlayers=vlayers,
                                                                    exact_fn=exact_sites_prefix):
            fr["small_denominator"] = small
            frames.append(fr)
            topk += tk
            cmp += cm
            cells += ctl.cell_rows(res)
            cell_exact += ctl.cell_exact_rows(model, res, vlayers, batch_size=cfg.batch_size)
            if n < 2:
                figs.append((n, direction, res))
        if progress:
            progress(n + 1, len(pairs))
    return dict(attr=pd.concat(frames, ignore_index=True), topk=pd.DataFrame(topk), cmp=pd.DataFrame(cmp),
                cmp_rows=cmp, cells=pd.DataFrame(cells), cell_exact=pd.DataFrame(cell_exact), figs=figs)


def _warnings(items: list[ControllerItem], cmp_rows: list[dict], cfg: InterpConfig) -> list[str]:
    out = []
    if any(it.replayed for it in items):
        out.append("replay controller: the teacher-forced text was written by hand, not generated by these weights "
                   "(see faithfulness: mean_logprob, argmax_agreement)")
    small = sum(bool(r.get("small_denominator")) for r in cmp_rows)
    if cmp_rows and small * 2 >= len(cmp_rows):
        out.append(f"{small} of {len(cmp_rows)} comparisons come from pairs whose |LD_clean - LD_corrupt| is under "
                   f"{cfg.min_denominator}: the edit barely moves the answer")
    return out


def _probe_summary(probes: pd.DataFrame) -> dict:
    if probes.empty:
        return {}
    out = {}
    for pos, g in probes.groupby("position"):
        best = g.loc[g["selectivity"].idxmax()]
        out[str(pos)] = dict(best_layer=int(best["layer"]), probe_acc=float(best["probe_acc"]),
                             control_acc=float(best["control_acc"]), majority_acc=float(best["majority_acc"]),
                             selectivity=float(best["selectivity"]), mean_probe_acc=float(g["probe_acc"].mean()))
    return out


def _cell_summary(cells: pd.DataFrame) -> dict:
    """Mean share of |attribution| (resid, all layers) on each kind of token group: told values, printed totals,
    the rest of the cell outputs, everything outside them."""
    if cells.empty:
        return {}
    g = cells[cells["component"] == "resid"]
    return {k: float(v) for k, v in g.groupby("kind")["abs_share"].mean().items()}


def _write(out_dir, model, items, pairs, faith, t: dict, probes, summ: ControllerSummary, cfg: InterpConfig,
           failed: int) -> None:
    prov = model_provenance(model)
    with staged_dir(out_dir, COMMAND) as out:
        pd.DataFrame(faith).to_parquet(out / FAITHFULNESS_FILE, index=False)
        t["attr"].to_parquet(out / ATTR_FILE, index=False)
        t["topk"].to_parquet(out / ATTR_TOPK_FILE, index=False)
        t["cmp"].to_parquet(out / ATTR_CMP_FILE, index=False)
        t["cmp"].to_csv(out / "attribution_vs_exact.csv", index=False)
        t["cells"].to_parquet(out / CELL_FILE, index=False)
        t["cell_exact"].to_parquet(out / CELL_EXACT_FILE, index=False)
        probes.to_parquet(out / PROBE_FILE, index=False)
        probes.to_csv(out / "probes.csv", index=False)
        for n, direction, res in t["figs"]:
            attribution_map(res, "resid", out / f"attr_pair{n}_resid_{direction}.png")
        with open(out / "pairs.jsonl", "w") as fh:
            for p in pairs:
                fh.write(json.dumps(dict(p.record(), **prov)) + "\n")
        (out / SUMMARY_FILE).write_text(json.dumps(dict(
            **prov, dtype_name=dtype_name(model), quantization=model.quantization, summary=summ.__dict__,
            samples=[dict(sample=it.sample, controller=it.controller, answer_source=it.answer_source,
                          final_answer=it.final_answer, n_cells=len(it.cells), n_told=len(it.told)) for it in items],
            edits_without_equal_length=failed, config=cfg.model_dump(mode="json")), indent=1, default=str))


def controller_outputs(out_dir: str | Path) -> dict | None:
    """The job's summary json, for report and the viewer (None when the folder has none)."""
    p = Path(out_dir) / SUMMARY_FILE
    return json.loads(p.read_text()) if p.is_file() else None
