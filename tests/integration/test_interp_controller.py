"""The controller's side of interp on the tiny model (real transformers + nnsight): the conversation and its
told values as data, controller pairs, attribution vs exact patching, whole-cell patching, told-value
activations, per-turn faithfulness, and the CLI with its bad inputs."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from controller_run import make_controller_run

from test_interp_attribution import SIGN_FLOOR, SPEARMAN_FLOOR  # the worker's floors hold for the controller too


@pytest.fixture(scope="module")
def tiny():
    from rlm_rig.interp.model import ReplayModel

    return ReplayModel("tiny", dtype="float32")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_controller_run(tmp_path_factory.mktemp("ctl") / "run", n_samples=4, n_chunks=4)


@pytest.fixture(scope="module")
def items(run):
    from rlm_rig.interp.data.controller_turns import collect_controller_items

    return collect_controller_items(run)


@pytest.fixture(scope="module")
def pairs(tiny, items):
    from rlm_rig.interp.methods.controller import build_pairs

    ps, _ = build_pairs(tiny, items, n_pairs=4, corruptions=["chunk_value", "total"], seed=0)
    assert {p.corruption for p in ps} == {"chunk_value", "total"}
    return ps


def test_told_values_are_the_sub_call_replies_where_they_were_printed(items):
    from rlm_rig.interp.methods.controller import answer_prefix

    assert len(items) == 4
    for it in items:
        assert it.answer_source == "final_var" and it.answer.rstrip().endswith(f"FINAL({it.final_answer})")
        assert answer_prefix(it).endswith("FINAL(\\boxed{")
        co = it.cells[-1]
        content = it.messages[co.message]["content"]
        assert [v.value for v in co.values] == [int(c) for c in content[co.start:co.end].split("[")[1].split("]")[0]
                                                .split(",")]
        assert sum(v.value for v in co.values) == it.final_value
        assert all(content[v.start:v.end] == str(v.value) for v in co.values)
        assert co.total is not None and content[co.total.start:co.total.end] == str(it.final_value)
        assert not it.cells[0].values  # the first cell made no sub_call


def test_pairs_edit_one_told_number_inside_its_cell_output(tiny, pairs):
    for p in pairs:
        edit = p.positions["edit"]
        cell = next(k for k in p.positions if k.startswith("cell") and set(edit) <= set(p.positions[k]))
        assert cell and p.seq_len == len(p.corrupt_ids)
        assert int(p.corrupt_target) - int(p.clean_target) in (1, -1)
        group = f"value{p.sub_call}" if p.corruption == "chunk_value" else cell.replace("cell", "total")
        assert set(edit) <= set(p.positions[group])


def test_prefix_exact_patching_equals_the_nnsight_path(tiny, pairs):
    """The patcher that computes the shared prefix once gives the nnsight patcher's values site by site."""
    from rlm_rig.interp.methods.attribution import exact_sites, first_difference
    from rlm_rig.interp.methods.prefix_exact import exact_sites_prefix

    p = pairs[0]
    lo = first_difference(p)
    toks = [*range(lo - 2, min(lo + 16, p.seq_len)), *range(p.seq_len - 3, p.seq_len)]
    sites = [(c, li, t) for c in ("resid", "mlp") for li in (0, tiny.n_layers - 1) for t in sorted(set(toks))]
    a = exact_sites_prefix(tiny, p, sites, batch_size=64)
    b = exact_sites(tiny, p, sites, batch_size=64)
    assert max(abs(a[s] - b[s]) for s in sites) < 1e-4 and max(abs(b[s]) for s in sites) > 1e-3


def test_controller_attribution_matches_exact_patching(tiny, pairs):
    from rlm_rig.interp.methods.attribution import attribute_pair, compare
    from rlm_rig.interp.methods.prefix_exact import exact_sites_prefix

    for pair in pairs:
        res = attribute_pair(tiny, pair, direction="denoise")
        every = [(c, 0, t) for c in ("resid", "attn", "mlp") for t in range(pair.seq_len)]
        exact = exact_sites_prefix(tiny, pair, every, batch_size=64)
        rows = pd.DataFrame(compare(res, exact, k=10))
        print(rows.to_string())
        assert (rows["spearman_after_edit"] >= SPEARMAN_FLOOR).all(), rows
        assert (rows["sign_agreement_top_k"] >= SIGN_FLOOR).all(), rows


def test_whole_cell_patches_obey_causality(tiny, pairs):
    """A cell output before the edit is the same in both runs (its patch does nothing at any layer), and at the
    last layer only the answer position reaches the logits, which no cell output holds: both patches are 0, and
    so is the attribution summed over a cell there."""
    from rlm_rig.interp.methods.attribution import attribute_pair
    from rlm_rig.interp.methods.controller import cell_exact_rows, cell_rows

    pair = pairs[0]
    res = attribute_pair(tiny, pair, direction="denoise", components=["resid"])
    last = tiny.n_layers - 1
    rows = pd.DataFrame(cell_exact_rows(tiny, res, [0, last], batch_size=8))
    edited = [k for k in pair.positions if k.startswith("cell") and set(pair.positions["edit"]) <= set(pair.positions[k])]
    assert len(edited) == 1 and set(rows["group"]) == {"cell0", "cell1"}
    assert (rows[rows["layer"] == last]["exact"].abs() < 1e-5).all(), rows
    assert (rows[rows["group"] != edited[0]]["exact"].abs() < 1e-5).all(), rows
    moved = rows[(rows["group"] == edited[0]) & (rows["layer"] == 0)]["exact"]
    assert abs(float(moved.iloc[0])) > 1e-4  # the edited cell's patch at layer 0 does move the answer
    cells = pd.DataFrame(cell_rows(res))
    top = cells[(cells["layer"] == last) & cells["group"].str.startswith("cell")]
    assert (top["attr_sum"] == 0).all() and cells["abs_share"].max() <= 1 + 1e-9


def test_told_value_activations_are_the_residual_stream_at_those_tokens(tiny, items):
    from rlm_rig.interp.methods.controller import told_value_activations

    it = items[0]
    acts, rows = told_value_activations(tiny, it, [0])
    assert len(rows) == 2 * len(it.told) and acts[0].shape == (len(rows), tiny.d_model)
    ids = torch.tensor([tiny.render(it.messages).ids])
    with torch.no_grad():
        hs = tiny.hf(input_ids=ids, output_hidden_states=True).hidden_states[1][0]  # layer 0's output
    want = hs[[r["token"] for r in rows]]
    assert torch.allclose(acts[0], want, atol=1e-5)
    assert {r["position"] for r in rows} == {"value", "next"}


def test_turn_faithfulness_of_a_replay_controller(tiny, items):
    from rlm_rig.interp.methods.controller import turn_faithfulness

    rows = turn_faithfulness(tiny, items[0], max_dlogprob=0.5)
    assert [r["turn"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert r["replayed"] and r["prompt_match"] is None and 0.0 <= r["argmax_agreement"] <= 1.0
        assert r["mean_logprob"] < 0 and r["faithful"] == (r["first_argmax_divergence"] is None)


def _profile(tmp_path):
    cfg = tmp_path / "profile.yaml"
    cfg.write_text("worker:\n  model: tiny\n  dtype: float32\ninterp:\n  device: cpu\n  n_pairs: 2\n"
                   "  directions: [denoise]\n  attr_components: [resid]\n  attr_top_k: 3\n")
    return cfg


def test_cli_controller_writes_its_tables_shown_in_report_and_viewer(run, tmp_path):
    from rlm_rig.experiments.cli.interp import interp_app
    from rlm_rig.experiments.view.interp_data import load_interp

    cfg = str(_profile(tmp_path))
    r = CliRunner().invoke(interp_app, ["controller", str(run), "--config", cfg, "--model", "tiny",
                                        "--validate-max-tokens", "5000", "--validate-layers", "0"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    out = run / "interp" / "controller"  # the default folder, where report and the viewer look
    summary = json.loads((out / "controller.json").read_text())
    assert summary["summary"]["n_pairs"] == 2 and summary["summary"]["faithfulness"]["n"] == 12
    cmp = pd.read_parquet(out / "attribution_vs_exact.parquet")
    assert set(cmp["scope"]) == {"top_k", "all_sites"}
    cells = pd.read_parquet(out / "attribution_by_cell.parquet")
    assert {"cell", "value", "total", "outside_cells"} <= set(cells["kind"])
    assert not pd.read_parquet(out / "probes.parquet").empty
    assert len(pd.read_parquet(out / "faithfulness.parquet")) == 12
    rep = CliRunner().invoke(interp_app, ["report", str(run), "--config", cfg, "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    assert "## The controller's side" in (tmp_path / "rep" / "README.md").read_text()
    assert (tmp_path / "rep" / "controller_attribution_vs_exact.csv").is_file()
    tables = load_interp(run).summary_tables
    assert "controller: attribution vs exact patching (medians)" in tables
    assert len(tables["controller: faithfulness of each teacher-forced turn"]) == 12


@pytest.mark.parametrize("case,needle", [
    ("no_turns", "no controller turns to replay"),
    ("mismatch", "tokenizer does not match the run's controller"),
    ("replay_no_model", "give --model"),
])
def test_cli_controller_bad_input_is_one_line_exit_2(tmp_path, case, needle):
    from rlm_rig.experiments.cli.interp import interp_app

    kw = dict(no_turns=dict(turns=False), mismatch=dict(controller="Qwen/Qwen2.5-Coder-14B-Instruct", prompt_tokens=3),
              replay_no_model={})[case]
    run = make_controller_run(tmp_path / "run", n_samples=2, n_chunks=2, **kw)
    args = ["controller", str(run), "--config", str(_profile(tmp_path)), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(interp_app, args + ([] if case == "replay_no_model" else ["--model", "tiny"]))
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.output.split()) and r.output.strip().count("error:") == 1
    assert not (tmp_path / "o" / "controller.json").exists()
